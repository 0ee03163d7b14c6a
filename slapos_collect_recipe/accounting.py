"""Per-partition usage since the previous run (``partition_usage``), processes that ended in between included.

The live loop of ``sample`` gives, per process, its own CPU time, its
children's times (cutime + cstime: the kernel adds a child's whole total,
grandchildren included, to its parent when the parent reaps it), its parent
and its IO counters (which already hold its reaped children's IO). What the
previous run saw of each process (one entry per pid + creation time) is kept
in ``collect_state`` under ``usage``. Per partition the CPU of the interval is:

- ``children``: growth of each live process's own time, plus growth of its
  children's times, minus what the last run had seen of the processes that
  ended and were reaped inside the partition (their last own + children
  times), so a child seen by a run and reaped later is never counted twice.
  A process reaped outside the partition (a daemon re-parented to init, a
  service reaped by the node's supervisord) is missed after its last run.
- ``acct``: growth of each live process's own time, plus each kernel
  accounting record of the partition's user appended since the previous run:
  the ended process's total minus what the last run had seen of it.
- ``cgroup-v2`` / ``cgroup-v1``: the growth of the cgroup's CPU counter.
- ``live``: growth of each live process's own time only (no children's
  times where /proc is missing).

IO (bytes and operations) is the growth of the live processes' counters minus
what the last run had seen of ended processes reaped inside the partition,
except where a cgroup's IO counters are read; unknown (None) when no live
process's counters are readable (another user's processes, not root).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from .config import Partition
from .snapshot import PartitionUsage, ProcessSample

log = logging.getLogger("slapos_collect")

STATE_KEY = "usage"
# A process first seen at this run counts in full when it started after the
# previous run (creation times are rounded to clock ticks and whole seconds).
_START_SLACK = 1.0
# Longer than this between two runs is worth a log line (the figures cover the gap).
_LONG_GAP = 3600.0

# Indexes of an entry of ``state["procs"]``: what a run saw of one process.
_LABEL, _PID, _PPID, _CPU, _CHILD, _IO_B, _IO_OPS = range(7)


@dataclass
class Ended:
    """A kernel accounting record of an ended process (``acct``)."""

    uid: int
    pid: int
    btime: float  # start, epoch seconds (whole seconds)
    cpu: float  # user + system seconds of the whole process
    elapsed: float  # seconds


@dataclass
class Override:
    """A partition's figures read from its cgroup for the interval (None: not read)."""

    source: str
    cpu: float | None
    io_bytes: int | None = None
    io_ops: int | None = None


def _reaped_inside(entry: list, label: str, prev: dict[str, list], by_pid: dict[int, str],
                   current: dict) -> bool:
    """Whether an ended process was reaped by a process of its partition: its
    parent at the last run, or that parent's parent when the parent ended too,
    is alive now (same identity) in the same partition."""
    ppid = entry[_PPID]
    for _ in range(64):
        key = by_pid.get(ppid)
        if key is None:
            return False
        parent = prev[key]
        if parent[_LABEL] != label:
            return False
        if key in current:
            return True
        ppid = parent[_PPID]
    return False


def compute(
    partitions: Iterable[Partition],
    samples: list[ProcessSample],
    kin: list[tuple[int, float | None]],
    previous: dict | None,
    now: float,
    boot_time: float,
    ncpu: int,
    *,
    ended_records: list[Ended] | None = None,
    uids: dict[str, int] | None = None,
    overrides: dict[str, Override] | None = None,
) -> tuple[list[PartitionUsage], dict]:
    """Each partition's usage since the previous run, and the state the next run needs.

    ``kin[i]`` is ``(ppid, children's CPU seconds or None)`` of ``samples[i]``.
    ``ended_records``, when given, are the accounting records appended since
    the previous run; the partitions named in ``uids`` (label -> uid) take
    their ended processes' CPU from them. ``overrides`` hold what cgroups gave."""
    labels = [p.label for p in partitions]
    overrides = overrides or {}
    uids = uids or {}
    prev_procs: dict[str, list] = {}
    prev_epoch = None
    if previous:
        prev_epoch = previous.get("epoch")
        if previous.get("boot_time") != boot_time:
            log.info("the machine rebooted since the previous run: processes of the previous boot counted as ended")
        prev_procs = previous.get("procs") or {}
    reboot = bool(previous) and previous.get("boot_time") != boot_time
    interval = now - prev_epoch if prev_epoch else 0.0
    if interval < 0:
        log.warning("the clock went back %.0f s since the previous run: this run counts no CPU", -interval)
        interval = 0.0
    elif interval > _LONG_GAP:
        log.info("%.0f s since the previous run: the figures cover the whole gap", interval)

    own = dict.fromkeys(labels, 0.0)
    children = dict.fromkeys(labels, 0.0)
    io_b = dict.fromkeys(labels, 0)
    io_ops = dict.fromkeys(labels, 0)
    io_known: set[str] = set()
    count = dict.fromkeys(labels, 0)
    rss = dict.fromkeys(labels, 0)
    ended = dict.fromkeys(labels, 0)
    no_children: set[str] = set()
    went_down = 0

    current: dict[str, list] = {}
    started_after = (prev_epoch - _START_SLACK) if prev_epoch and interval > 0 else None
    for sample, (ppid, child) in zip(samples, kin, strict=True):
        label = sample.partition
        key = sample.process
        current[key] = entry = [label, sample.pid, ppid, sample.cpu_time, child, sample.io_rw_bytes, sample.io_ops]
        count[label] += 1
        rss[label] += sample.memory_rss
        if sample.io_rw_bytes is not None:
            io_known.add(label)
        if child is None:
            no_children.add(label)
        if started_after is None:
            continue
        before = None if reboot else prev_procs.get(key)
        if before is not None:
            d_cpu = sample.cpu_time - before[_CPU]
            d_child = (child - before[_CHILD]) if child is not None and before[_CHILD] is not None else 0.0
            if d_cpu < 0 or d_child < 0:
                went_down += 1
            own[label] += max(d_cpu, 0.0)
            children[label] += max(d_child, 0.0)
            if sample.io_rw_bytes is not None and before[_IO_B] is not None:
                io_b[label] += max(sample.io_rw_bytes - before[_IO_B], 0)
                io_ops[label] += max(sample.io_ops - before[_IO_OPS], 0)
        elif sample.create_time >= started_after:
            # Started since the previous run: all of it is in the interval.
            own[label] += sample.cpu_time
            children[label] += child or 0.0
            if sample.io_rw_bytes is not None:
                io_b[label] += sample.io_rw_bytes
                io_ops[label] += sample.io_ops or 0
        # else: running before the previous run but not seen by it (first
        # sight): counted from now on, never its past in one spike.
    if went_down:
        log.info("%d processes' CPU counters went down since the previous run: counted from their new value",
                 went_down)

    # Processes of the previous run that are gone.
    gone = [key for key in prev_procs if key not in current]
    last_own: dict[tuple[str, int], list[tuple[float, float]]] = {}
    if gone and not reboot:
        by_pid = {entry[_PID]: key for key, entry in prev_procs.items()}
        for key in gone:
            entry = prev_procs[key]
            label = entry[_LABEL]
            if label not in ended:
                continue  # a partition no longer configured
            ended[label] += 1
            # The creation time is the identity's second half ("pid-create").
            last_own.setdefault((label, entry[_PID]), []).append(
                (float(key.rpartition("-")[2]), entry[_CPU]))
            if _reaped_inside(entry, label, prev_procs, by_pid, current):
                children[label] -= entry[_CPU] + (entry[_CHILD] or 0.0)
                if entry[_IO_B] is not None:
                    io_b[label] -= entry[_IO_B]
                    io_ops[label] -= entry[_IO_OPS] or 0
    elif gone:
        for key in gone:
            label = prev_procs[key][_LABEL]
            if label in ended:
                ended[label] += 1

    from_acct: dict[str, float] = {}
    if ended_records is not None and interval > 0:
        from_acct = _ended_cpu(ended_records, uids, last_own, ended, prev_epoch, interval)

    usage: list[PartitionUsage] = []
    max_cpu = ncpu * interval
    for label in labels:
        override = overrides.get(label)
        if override is not None and override.cpu is not None:
            cpu, source = override.cpu, override.source
        elif label in from_acct:
            cpu, source = own[label] + from_acct[label], "acct"
        elif label in no_children:
            cpu, source = own[label], "live"
        else:
            cpu, source = own[label] + max(children[label], 0.0), "children"
        if interval <= 0:
            cpu = 0.0
        elif cpu > max_cpu:
            log.info("partition %s: %.1f CPU s over %.0f s is above %d cores: capped", label, cpu, interval, ncpu)
            cpu = max_cpu
        cpu = max(cpu, 0.0)
        if override is not None and override.io_bytes is not None:
            rw, ops = override.io_bytes, override.io_ops
        elif count[label] and label not in io_known:
            rw = ops = None  # no live process's IO counters readable (another user's, not root)
        else:
            rw, ops = max(io_b[label], 0), max(io_ops[label], 0)
        if interval <= 0 and rw is not None:
            rw = ops = 0
        usage.append(PartitionUsage(
            partition=label,
            cpu_time=round(cpu, 6),
            cpu_percent=round(min(cpu * 100.0 / interval, 100.0 * ncpu), 2) if interval > 0 else 0.0,
            processes=count[label], ended=ended[label], memory_rss=rss[label],
            io_rw_counter=rw, io_cycles_counter=ops, source=source,
        ))
    state = {"epoch": now, "boot_time": boot_time, "procs": current}
    return usage, state


def _ended_cpu(records: list[Ended], uids: dict[str, int], last_own: dict[tuple[str, int], list[tuple[float, float]]],
               ended: dict[str, int], prev_epoch: float, interval: float) -> dict[str, float]:
    """CPU seconds of the accounting records per partition (those in ``uids``):
    each ended process's total minus what the last run saw of its own time."""
    by_uid = {uid: label for label, uid in uids.items()}
    cpu = dict.fromkeys(uids, 0.0)
    for record in records:
        label = by_uid.get(record.uid)
        if label is None:
            continue
        seen = None
        for i, (create, cpu_seen) in enumerate(last_own.get((label, record.pid), ())):
            if abs(create - record.btime) <= 2.0:
                seen = cpu_seen
                del last_own[(label, record.pid)][i]
                break
        if seen is not None:
            cpu[label] += max(record.cpu - seen, 0.0)
        else:
            ended[label] += 1  # started and ended between the two runs
            if record.btime >= prev_epoch - 2.0 or record.elapsed <= 0:
                cpu[label] += record.cpu
            else:
                # Never seen alive, yet older than the previous run (its user
                # changed since): only the interval's share of its total.
                cpu[label] += record.cpu * min(1.0, interval / record.elapsed)
    return cpu
