"""IP addresses written one way: as nft prints them (``inet_ntop``'s form), and the IPv4-mapped prefix.

The settings' partition addresses (``traffic.py``) and the keys of the
collector's nftables maps (``nft.py``) are compared in this form.
"""

from __future__ import annotations

import socket

V4_MAPPED = b"\0" * 10 + b"\xff\xff"  # ::ffff:0:0/96, the prefix of IPv4-mapped IPv6 addresses


def normal_address(text: str) -> str | None:
    """An IP address in the form nft prints it (inet_ntop's), or None if it is not one.

    An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``) is written as its IPv4 address: its packets are
    IPv4 packets, and sockdiag gives that IPv4 address as a socket's local address."""
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        packed = socket.inet_pton(family, text)
    except (OSError, ValueError):
        return None
    if packed[:12] == V4_MAPPED:
        family, packed = socket.AF_INET, packed[12:]
    return socket.inet_ntop(family, packed)
