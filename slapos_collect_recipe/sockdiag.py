"""Every TCP socket of the host's network namespace, read from the kernel's socket diagnostics.

One netlink ``sock_diag`` dump (``NETLINK_SOCK_DIAG``) of IPv4 and IPv6 sockets
at once: each socket's uid, inode, cookie, local address and its ``tcp_info``
byte and segment counters. Any user may ask; no privilege, no effect on the
traffic. Linux only.

The request is ``TCPDIAG_GETSOCK`` with an ``inet_diag_req`` asking for
``INET_DIAG_INFO``: the kernel answers it for every address family in one walk
of its TCP tables, where ``SOCK_DIAG_BY_FAMILY`` would take one dump (and one
walk of the same tables) per family.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

from .address import V4_MAPPED

NETLINK_SOCK_DIAG = 4
TCPDIAG_GETSOCK = 18
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
INET_DIAG_INFO = 2
ALL_STATES = 0xFFFFFFFF

_NLMSG = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
# inet_diag_req: family, src_len, dst_len, ext, then inet_diag_sockid (sport, dport big-endian, src[16],
# dst[16], if, cookie[2]), states, dbs.
_REQ = struct.Struct("=BBBB" "HH16s16sI8s" "II")
# inet_diag_msg: family, state, timer, retrans, sockid, expires, rqueue, wqueue, uid, inode.
_MSG = struct.Struct("=BBBB" "HH16s16sIQ" "IIIII")
_RTA = struct.Struct("=HH")
# Offsets in struct tcp_info (include/uapi/linux/tcp.h).
_TCPI_OPTIONS = 5
_TCPI_BYTES_ACKED = 120  # u64, then bytes_received u64, segs_out u32, segs_in u32
_TCPI_BYTES_SENT = 200  # u64, kernel 4.19 and later (counts retransmissions)
TCPI_OPT_TIMESTAMPS = 1


@dataclass(frozen=True)
class TcpSocket:
    cookie: int
    family: int
    uid: int
    inode: int
    local: str  # the local address, as text
    bytes_sent: int  # payload bytes sent (retransmissions included where the kernel says)
    bytes_received: int  # payload bytes received
    segs_out: int
    segs_in: int
    header: int  # IP + TCP header bytes of one segment of this socket


def _align(n: int) -> int:
    return (n + 3) & ~3


def _parse_info(info: bytes) -> tuple[int, int, int, int, int] | None:
    """(bytes sent, bytes received, segs out, segs in, tcp options) or None if too short."""
    if len(info) < _TCPI_BYTES_ACKED + 24:
        return None
    acked, received, segs_out, segs_in = struct.unpack_from("=QQII", info, _TCPI_BYTES_ACKED)
    sent = acked  # older kernels: what the peer acknowledged (the SYN and FIN count one each)
    if len(info) >= _TCPI_BYTES_SENT + 8:
        sent = struct.unpack_from("=Q", info, _TCPI_BYTES_SENT)[0]
    return sent, received, segs_out, segs_in, info[_TCPI_OPTIONS]


def _parse(data: bytes, out: list[TcpSocket]) -> bool:
    """Append the sockets of one netlink read; True once the dump is done."""
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size:
            return True
        body = offset + _NLMSG.size
        end = offset + length
        offset += _align(length)
        if kind == NLMSG_DONE:
            return True
        if kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", data, body)[0]
            if code:
                raise OSError(code, f"sock_diag: {os.strerror(code)}")
            continue
        if kind != TCPDIAG_GETSOCK or end - body < _MSG.size:
            continue
        (fam, _state, _timer, _retrans, _sport, _dport, src, _dst, _ifindex, cookie,
         _expires, _rq, _wq, uid, inode) = _MSG.unpack_from(data, body)
        info = None
        attr = body + _MSG.size
        while attr + _RTA.size <= end:
            rta_len, rta_type = _RTA.unpack_from(data, attr)
            if rta_len < _RTA.size:
                break
            if rta_type == INET_DIAG_INFO:
                info = _parse_info(data[attr + _RTA.size:attr + rta_len])
            attr += _align(rta_len)
        if info is None:
            continue  # listening, time-wait or request sockets: no byte counters
        sent, received, segs_out, segs_in, options = info
        if fam == socket.AF_INET:
            local = socket.inet_ntop(socket.AF_INET, src[:4])
            header = 20 + 20
        else:
            mapped = src[:12] == V4_MAPPED
            local = socket.inet_ntop(socket.AF_INET, src[12:]) if mapped else socket.inet_ntop(socket.AF_INET6, src)
            header = 40 + 20
        if options & TCPI_OPT_TIMESTAMPS:
            header += 12
        out.append(TcpSocket(cookie, fam, uid, inode, local, sent, received, segs_out, segs_in, header))
    return False


def tcp_sockets() -> list[TcpSocket]:
    """Every TCP socket with byte counters (established, closing...), IPv4 and IPv6, in one dump.

    Raises OSError when the kernel refuses (no ``sock_diag``, a seccomp filter...)."""
    found: list[TcpSocket] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
        nl.bind((0, 0))
        # The kernel dumps every address family for this request (it does not read the family field).
        request = _REQ.pack(0, 0, 0, 1 << (INET_DIAG_INFO - 1), 0, 0, b"", b"", 0, b"\xff" * 8, ALL_STATES, 0)
        nl.send(_NLMSG.pack(_NLMSG.size + len(request), TCPDIAG_GETSOCK, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
                + request)
        while not _parse(nl.recv(1 << 20), found):
            pass
    return found
