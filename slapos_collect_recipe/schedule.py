"""When a partition's periodic jobs run: the rule the recipe uses to place the
benchmark cron entry (documented in the README, so that a fleet's operators can
tell when a machine measures). Imports nothing heavy: buildout loads it."""

from __future__ import annotations

import hashlib


def bench_minute(computer_id: str, partition: str = "") -> int:
    """The minute (0..59) of the hour at which a machine runs its benchmarks.

    The first 8 bytes, big-endian, of SHA-256 of ``"<computer_id>/<partition>"``
    (UTF-8) modulo 60: stable across runs and Python versions, and evenly
    spread over a fleet, so that its machines do not all measure at once."""
    digest = hashlib.sha256(f"{computer_id}/{partition}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 60
