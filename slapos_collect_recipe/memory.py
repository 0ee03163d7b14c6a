"""A partition's memory with nothing counted twice (``partition_usage.memory_used``).

Summing RSS counts a page once per process that maps it: a prefork server
(a parent that touched 200 MB, then forked 8 workers) sums to 1.8 GB. Here:

- a partition with a cgroup that has a memory controller: the cgroup's own
  figure, its *working set*: ``memory.current`` (v2) or
  ``memory.usage_in_bytes`` (v1) minus the inactive file cache
  (``inactive_file`` / ``total_inactive_file`` of ``memory.stat``). Inactive
  file pages are cache the kernel reclaims first, without writing anything,
  as soon as memory is needed: they measure what was read lately, not what
  the partition needs. Active file cache, anonymous memory, shared memory and
  kernel memory charged to the cgroup (page tables, sockets, slab) count.
- otherwise the sum of its live processes' PSS (``/proc/<pid>/smaps_rollup``:
  each page divided by the number of processes mapping it). A process whose
  ``smaps_rollup`` cannot be read (another user's when not root; none before
  Linux 4.14) counts with its RSS, and the figure is ``pss-partial``.

Reading ``smaps_rollup`` walks the process's page tables, so a partition
whose walk is dear (many processes or a large RSS sum: ``walk_cost``) is
re-read at most every ``memory-cycle`` seconds, or at once when its process
count or RSS sum changed; between reads its last figure is carried, marked
with the time it was taken (``pss@HH:MM:SS``). README.md ("Partition memory")
has the figures.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from . import cgroup
from .snapshot import PartitionUsage, ProcessSample

log = logging.getLogger("slapos_collect")

STATE_KEY = "memory"  # collect_state key of what the next run needs

# What a partition's PSS walk costs is about its processes' RSS sum plus a
# fixed part per process (each read of smaps_rollup costs about what walking
# 2 MiB of RSS does: 30 us against 15 ms per GiB, measured here). A partition
# whose walk costs at most CHEAP_WALK (about 4 ms) is read every run; a
# dearer one at most every memory-cycle seconds.
PROCESS_WALK = 2 << 20
CHEAP_WALK = 256 << 20
# A carried figure is dropped early when the partition's RSS sum moved by more
# than this fraction, or its process count changed, since it was taken.
RSS_DRIFT = 0.10


@dataclass
class Figure:
    """One partition's memory and how it was found."""

    used: int
    source: str  # cgroup-v2, cgroup-v1, pss, pss-partial
    unreadable: int = 0  # processes whose RSS stood in for their PSS


def _memory_dir(path: str) -> str | None:
    """Where the memory files of the cgroup at ``path`` are: that directory, or in the hybrid layout
    (memory a v1 controller beside the unified hierarchy) the same path in the v1 memory hierarchy."""
    if os.path.exists(os.path.join(path, "memory.current")) or os.path.exists(
            os.path.join(path, "memory.usage_in_bytes")):
        return path
    parts = os.path.relpath(os.path.realpath(path), cgroup.V1_ROOT).split(os.sep)
    if parts[0] in ("..", ".") or len(parts) < 2:
        return None
    sibling = os.path.join(cgroup.V1_ROOT, "memory", *parts[1:])
    return sibling if os.path.exists(os.path.join(sibling, "memory.usage_in_bytes")) else None


def _in_v1_memory_cgroup(directory: str, pids: Iterable[int], proc_root: str = "/proc") -> bool:
    """Whether one of ``pids`` lives in the v1 memory cgroup ``directory`` (or below it),
    by its ``/proc/<pid>/cgroup`` line of the memory controller."""
    relative = "/" + os.path.relpath(os.path.realpath(directory),
                                     os.path.realpath(os.path.join(cgroup.V1_ROOT, "memory")))
    for pid in pids:
        try:
            with open(f"{proc_root}/{pid}/cgroup", encoding="utf-8", errors="replace") as handle:
                lines = handle.read().splitlines()
        except OSError:
            continue  # gone, or unreadable: ask the next one
        for line in lines:
            fields = line.split(":", 2)  # hierarchy-ID:controllers:path
            if len(fields) == 3 and "memory" in fields[1].split(","):
                return fields[2] == relative or fields[2].startswith(relative.rstrip("/") + "/")
    return False


def _on_cgroup_fs(path: str) -> bool:
    kind = cgroup.filesystem(path)
    return kind is None or kind in cgroup.CGROUP_FILESYSTEMS


def cgroup_memory(path: str, pids: Iterable[int] | None = None, proc_root: str = "/proc") -> Figure | None:
    """The working set of the cgroup at ``path``, or None when it has no
    memory controller (or cannot be read: the CPU sampler reports that).

    In the hybrid layout (``path`` in the unified hierarchy, memory a v1
    controller) the v1 cgroup of the same path is read only when one of the
    partition's processes ``pids`` is in it: a cgroup that merely has the same
    name holds some other processes' memory."""
    directory = _memory_dir(path)
    if directory is None:
        return None
    if directory != path and not _in_v1_memory_cgroup(directory, pids or (), proc_root):
        log.debug("cgroup %s: %s holds none of the partition's processes: not its memory", path, directory)
        return None
    v2 = os.path.exists(os.path.join(directory, "memory.current"))
    try:
        usage = int(cgroup.read_cgroup_file(directory, "memory.current" if v2 else "memory.usage_in_bytes"))
        stat = cgroup.parse_keyed(cgroup.read_cgroup_file(directory, "memory.stat"))
    except (cgroup.CgroupError, ValueError):
        return None
    # v1's total_ counts the descendants too, as usage_in_bytes and v2's files do.
    inactive = stat.get("inactive_file", 0) if v2 else stat.get("total_inactive_file", stat.get("inactive_file", 0))
    return Figure(max(usage - inactive, 0), "cgroup-v2" if v2 else "cgroup-v1")


def process_pss(pid: int, proc_root: str = "/proc") -> int | None:
    """PSS of one process in bytes; 0 when it is gone (its memory went with it);
    None when its ``smaps_rollup`` cannot be read while it lives."""
    try:
        fd = os.open(f"{proc_root}/{pid}/smaps_rollup", os.O_RDONLY)
        try:
            data = os.read(fd, 4096)  # the Pss line is the third: one read is enough
        finally:
            os.close(fd)
    except (FileNotFoundError, ProcessLookupError):
        # Gone; or no smaps_rollup while it lives (a kernel before 4.14), or no /proc at all.
        gone = os.path.isdir(proc_root) and not os.path.exists(f"{proc_root}/{pid}")
        return 0 if gone else None
    except PermissionError:
        return None
    start = data.find(b"\nPss:")
    if start < 0:
        return 0  # a zombie or a kernel thread: no memory of its own
    end = data.find(b"\n", start + 5)
    return int(data[start + 5:end].split()[0]) * 1024


def pss_sum(processes: Iterable[ProcessSample], proc_root: str = "/proc") -> Figure:
    """Sum of the PSS of ``processes``; each unreadable one counts with its RSS."""
    used = unreadable = 0
    for proc in processes:
        pss = process_pss(proc.pid, proc_root)
        if pss is None:
            unreadable += 1
            pss = proc.memory_rss
        used += pss
    return Figure(used, "pss-partial" if unreadable else "pss", unreadable)


def walk_cost(rss: int, count: int) -> int:
    """What walking the page tables of ``count`` processes of ``rss`` bytes costs, in bytes of RSS."""
    return rss + count * PROCESS_WALK


def _carry(kept: dict | None, rss: int, count: int, epoch: float, cycle: int) -> bool:
    """Whether the figure ``kept`` from an earlier run may stand for this run's."""
    if not isinstance(kept, dict) or cycle <= 0 or walk_cost(rss, count) <= CHEAP_WALK:
        return False
    try:
        # One second of slack: runs started by cron each minute drift by a fraction.
        if not 0 <= epoch - kept["epoch"] < cycle - 1 or kept["processes"] != count:
            return False
        moved = abs(rss - kept["rss"]) > RSS_DRIFT * max(kept["rss"], 1)
        well_formed = isinstance(kept["used"], int) and isinstance(kept["source"], str) and isinstance(
            kept["time"], str)
        return not moved and well_formed
    except (KeyError, TypeError):
        return False  # a state from another version: read again


def fill(
    usage: list[PartitionUsage],
    processes: list[ProcessSample],
    cgroups: Mapping[str, str],
    previous: dict | None,
    epoch: float,
    cycle: int,
    proc_root: str = "/proc",
) -> dict:
    """Fill ``memory_used`` and ``memory_source`` of every entry of ``usage``.

    ``processes`` are this run's samples (their RSS stands in where PSS cannot
    be read); ``cgroups`` maps a partition label to its cgroup directory;
    ``previous`` is what the last run returned (the ``memory`` state). Returns
    the state to keep for the next run."""
    by_label: dict[str, list[ProcessSample]] = {}
    for proc in processes:
        by_label.setdefault(proc.partition, []).append(proc)
    kept_all = previous.get("partitions") if isinstance(previous, dict) else None
    if not isinstance(kept_all, dict):
        kept_all = {}
    state: dict[str, dict] = {}
    unreadable = carried = 0
    partial: list[str] = []
    started = time.monotonic()
    for entry in usage:
        members = by_label.get(entry.partition, [])
        path = cgroups.get(entry.partition)
        figure = cgroup_memory(path, [p.pid for p in members], proc_root) if path and _on_cgroup_fs(path) else None
        if figure is not None:
            entry.memory_used, entry.memory_source = figure.used, figure.source
            continue
        rss = sum(p.memory_rss for p in members)
        kept = kept_all.get(entry.partition)
        if _carry(kept, rss, len(members), epoch, cycle):
            entry.memory_used, entry.memory_source = kept["used"], f"{kept['source']}@{kept['time']}"
            state[entry.partition] = kept
            carried += 1
            continue
        figure = pss_sum(members, proc_root)
        if figure.unreadable:
            unreadable += figure.unreadable
            partial.append(entry.partition)
        entry.memory_used, entry.memory_source = figure.used, figure.source
        state[entry.partition] = {
            "used": figure.used, "source": figure.source, "epoch": epoch,
            "time": time.strftime("%H:%M:%S", time.gmtime(epoch)), "rss": rss, "processes": len(members),
        }
    if unreadable:
        log.info("%d processes' smaps_rollup unreadable (another user's, not root? kernel before 4.14?): "
                 "their RSS stands in for their PSS (memory_source pss-partial: %s)", unreadable,
                 ", ".join(partial[:5]) + (f" and {len(partial) - 5} more" if len(partial) > 5 else ""))
    log.debug("partition memory in %.3f s (%d partitions carried from an earlier run)",
              time.monotonic() - started, carried)
    return {"partitions": state}
