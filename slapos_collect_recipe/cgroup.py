"""Reading a partition's cgroup (v2 or v1): never creating, moving or changing one.

A cgroup given with ``--cgroup LABEL=PATH`` (or the ``cgroups`` key) is a
directory of a cgroup filesystem: cgroup v2 (``cpu.stat`` with
``usage_usec``, present in every cgroup even with no controller enabled;
``io.stat`` where the io controller is on) or cgroup v1 (``cpuacct.usage``
in nanoseconds, and the blkio controller's throttle counters in the same
directory or in the blkio hierarchy beside it). Other samplers (memory) use
``check_cgroup`` and ``read_cgroup_file`` too.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

V1_ROOT = "/sys/fs/cgroup"


class CgroupError(Exception):
    """A cgroup path that is not a cgroup, or a file of it that cannot be read: one clear line."""


def read_cgroup_file(directory: str, name: str) -> str:
    """The text of one file of a cgroup directory; CgroupError when unreadable."""
    try:
        with open(os.path.join(directory, name), encoding="ascii", errors="replace") as handle:
            return handle.read()
    except OSError as exc:
        raise CgroupError(f"cgroup {directory}: cannot read {name}: {exc.strerror or exc}") from None


CGROUP_FILESYSTEMS = ("cgroup2", "cgroup")
_OCTAL = re.compile(r"\\([0-7]{3})")  # mountinfo's escapes of space, tab, newline, backslash


def filesystem(directory: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The type of the filesystem ``directory`` lies on (its longest mount point
    in ``mountinfo``), or None when that cannot be read."""
    real = os.path.realpath(directory)
    best, kind = "", None
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.split()
                if " - " not in line or len(fields) < 5:
                    continue
                # Mount point (field 5), octal escapes for spaces and the like; type after " - ".
                point = _OCTAL.sub(lambda match: chr(int(match.group(1), 8)), fields[4])
                inside = real == point or real.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, kind = point, line.split(" - ", 1)[1].split()[0]
    except OSError:
        return None
    return kind


def check_cgroup(directory: str) -> str:
    """``cgroup-v2`` or ``cgroup-v1`` for a cgroup directory; CgroupError for
    anything else (missing, not a directory, not on a cgroup filesystem, not a
    cgroup, unreadable)."""
    if not os.path.isdir(directory):
        raise CgroupError(f"cgroup {directory}: no such directory")
    kind = filesystem(directory)
    if kind is not None and kind not in CGROUP_FILESYSTEMS:
        raise CgroupError(f"{directory} is not a cgroup (its filesystem is {kind})")
    if os.path.exists(os.path.join(directory, "cgroup.controllers")):
        if "usage_usec" not in parse_keyed(read_cgroup_file(directory, "cpu.stat")):
            raise CgroupError(f"cgroup {directory}: cpu.stat has no usage_usec")
        return "cgroup-v2"
    if os.path.exists(os.path.join(directory, "cpuacct.usage")):
        read_cgroup_file(directory, "cpuacct.usage")
        return "cgroup-v1"
    raise CgroupError(f"{directory} is not a cgroup (no cgroup.controllers nor cpuacct.usage)")


def parse_keyed(text: str) -> dict[str, int]:
    """``key value`` lines (``cpu.stat``, ``memory.stat``) as a dict of integers."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            values[key] = int(value)
        except ValueError:
            continue
    return values


@dataclass
class Reading:
    kind: str  # cgroup-v2 | cgroup-v1
    cpu_usec: int  # user + system, since the cgroup was created
    io_rw_counter: int | None  # read + written, None where the IO controller's counters are missing
    io_cycles_counter: int | None


def _v2_io(directory: str) -> tuple[int | None, int | None]:
    if not os.path.exists(os.path.join(directory, "io.stat")):
        return None, None
    total_bytes = total_ops = 0
    for line in read_cgroup_file(directory, "io.stat").splitlines():
        for item in line.split()[1:]:
            key, _, value = item.partition("=")
            if key in ("rbytes", "wbytes"):
                total_bytes += int(value)
            elif key in ("rios", "wios"):
                total_ops += int(value)
    return total_bytes, total_ops


# The v1 blkio counters of a cgroup and its descendants (cpuacct.usage and v2's counters are
# hierarchical already).
_BLKIO_BYTES = "blkio.throttle.io_service_bytes_recursive"
_BLKIO_OPS = "blkio.throttle.io_serviced_recursive"


def _v1_blkio_dir(directory: str) -> str | None:
    """The blkio directory of a v1 cgroup: the same one, or the same path in the blkio hierarchy."""
    name = _BLKIO_BYTES
    if os.path.exists(os.path.join(directory, name)):
        return directory
    real = os.path.realpath(directory)
    parts = os.path.relpath(real, V1_ROOT).split(os.sep)
    if parts[0] in ("..", "."):
        return None
    sibling = os.path.join(V1_ROOT, "blkio", *parts[1:])
    return sibling if os.path.exists(os.path.join(sibling, name)) else None


def _v1_sum(directory: str, name: str) -> int:
    """Sum of the Read and Write lines of a blkio throttle file (``MAJ:MIN Read N``)."""
    total = 0
    for line in read_cgroup_file(directory, name).splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] in ("Read", "Write"):
            total += int(fields[2])
    return total


def read_usage(directory: str) -> Reading:
    """CPU and IO counters of a cgroup; CgroupError when it is not one or unreadable."""
    kind = check_cgroup(directory)
    try:
        if kind == "cgroup-v2":
            cpu = parse_keyed(read_cgroup_file(directory, "cpu.stat"))["usage_usec"]
            io_bytes, io_ops = _v2_io(directory)
        else:
            cpu = int(read_cgroup_file(directory, "cpuacct.usage").strip()) // 1000
            blkio = _v1_blkio_dir(directory)
            io_bytes = io_ops = None
            if blkio is not None:
                io_bytes = _v1_sum(blkio, _BLKIO_BYTES)
                io_ops = _v1_sum(blkio, _BLKIO_OPS)
    except (KeyError, ValueError) as exc:
        raise CgroupError(f"cgroup {directory}: unexpected counter ({exc})") from None
    return Reading(kind, cpu, io_bytes, io_ops)
