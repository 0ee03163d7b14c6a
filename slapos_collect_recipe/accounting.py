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
- ``acct``: as ``children``, plus each kernel accounting record of the
  partition's user appended since the previous run for a process reaped
  outside the partition (its parent at exit is not a live process of the
  partition, nor one reaped inside it): its total minus what the last run had
  seen of it (raw tick samples minus the raw samples that run read over
  taskstats, where it did: see ``_tail``). Children's times are finer than the
  records (whole 1/100 s per process, truncated), so they stay in use where
  they see.
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
# A record's tail is scaled by the real/raw ratio of its process from this much raw CPU (s);
# /proc's times are whole 1/100 s, rounded down.
_RATIO_FROM = 0.5
_PROC_TICK = 0.01

# Indexes of an entry of ``state["procs"]``: what a run saw of one process
# (``_RAW``: its raw tick-sampled CPU from ``taskstats``, None when not read;
# entries kept by older versions stop before it).
_LABEL, _PID, _PPID, _CPU, _CHILD, _IO_B, _IO_OPS, _THREADS, _RAW = range(9)


@dataclass
class Ended:
    """A kernel accounting record of an ended process (``acct``)."""

    uid: int
    pid: int
    ppid: int  # its parent when it ended: the process that reaps it
    btime: float  # start, epoch seconds (whole seconds)
    cpu: float  # user + system seconds of the whole process
    elapsed: float  # seconds


@dataclass
class Override:
    """A partition's figures read from its cgroup for the interval (None: not read)."""

    source: str
    cpu: float | None
    io_rw_counter: int | None = None
    io_cycles_counter: int | None = None


def rebooted(previous: dict, boot_time: float, uptime: float | None) -> bool:
    """Whether the machine rebooted since the run that kept ``previous``: the boot
    clock went back; else (no clock kept) the boot time moved by more than the
    second or so a stepped wall clock moves it."""
    if uptime is not None and previous.get("uptime") is not None:
        return uptime < previous["uptime"]
    return abs((previous.get("boot_time") or 0.0) - boot_time) > 2.0


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
    uptime: float | None = None,
    raw: dict[str, float] | None = None,
) -> tuple[list[PartitionUsage], dict]:
    """Each partition's usage since the previous run, and the state the next run needs.

    ``kin[i]`` is ``(ppid, children's CPU seconds or None)`` of ``samples[i]``.
    ``ended_records``, when given, are the accounting records appended since
    the previous run; the partitions named in ``uids`` (label -> uid) take
    their ended processes' CPU from them. ``overrides`` hold what cgroups gave.
    ``uptime`` is the boot clock at ``now`` (CLOCK_BOOTTIME), to place a record's end.
    ``raw`` (process key -> raw tick-sampled CPU seconds, see ``raw_wanted``)
    is kept for the processes that may end outside their partition."""
    labels = [p.label for p in partitions]
    overrides = overrides or {}
    uids = uids or {}
    prev_procs: dict[str, list] = {}
    prev_epoch = None
    reboot = False
    if previous:
        prev_epoch = previous.get("epoch")
        prev_procs = previous.get("procs") or {}
        reboot = rebooted(previous, boot_time, uptime)
        if reboot:
            log.info("the machine rebooted since the previous run: processes of the previous boot counted as ended")
    if previous and "partitions" in previous:
        known = set(previous["partitions"])
        for label in labels:
            if label not in known:
                log.info("partition %s is new: its processes count from this run", label)
        for label in sorted(known - set(labels)):
            log.info("partition %s is no longer collected", label)
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
        current[key] = [label, sample.pid, ppid, sample.cpu_time, child, sample.io_rw_counter,
                        sample.io_cycles_counter, sample.cpu_num_threads, (raw or {}).get(key)]
        count[label] += 1
        rss[label] += sample.memory_rss
        if sample.io_rw_counter is not None:
            io_known.add(label)
        if child is None:
            no_children.add(label)
        before = None if reboot or started_after is None else prev_procs.get(key)
        if (before is not None and current[key][_RAW] is None and len(before) > _RAW
                and before[_CPU] == sample.cpu_time):
            current[key][_RAW] = before[_RAW]  # not read again: it did not run since (see raw_wanted)
        if before is None:
            if started_after is None:
                continue
        else:
            d_cpu = sample.cpu_time - before[_CPU]
            d_child = (child - before[_CHILD]) if child is not None and before[_CHILD] is not None else 0.0
            if d_cpu < 0 or d_child < 0:
                went_down += 1
            own[label] += max(d_cpu, 0.0)
            children[label] += max(d_child, 0.0)
            if sample.io_rw_counter is not None and before[_IO_B] is not None:
                io_b[label] += max(sample.io_rw_counter - before[_IO_B], 0)
                io_ops[label] += max(sample.io_cycles_counter - before[_IO_OPS], 0)
        if before is None and sample.create_time >= started_after:
            # Started since the previous run: all of it is in the interval.
            own[label] += sample.cpu_time
            children[label] += child or 0.0
            if sample.io_rw_counter is not None:
                io_b[label] += sample.io_rw_counter
                io_ops[label] += sample.io_cycles_counter or 0
        # else: running before the previous run but not seen by it (first
        # sight): counted from now on, never its past in one spike.
    if went_down:
        log.info("%d processes' CPU counters went down since the previous run: counted from their new value",
                 went_down)

    # Processes of the previous run that are gone, and those the accounting
    # records say ended (started since, or gone).
    gone = [key for key in prev_procs if key not in current]
    records = ended_records if ended_records is not None and interval > 0 else None
    from_acct: dict[str, float] = {}
    if records is not None:
        from_acct = dict.fromkeys((label for label in uids if label in ended), 0.0)
    if reboot:
        for key in gone:
            label = prev_procs[key][_LABEL]
            if label in ended:
                ended[label] += 1
        if records:
            # The previous boot's records (after its last run) are of another boot's interval; this
            # boot's processes all started since the previous run: counted in full where reaped outside.
            records = [record for record in records if record.btime >= boot_time - _START_SLACK]
    if (gone and not reboot) or records:
        for label, sub_cpu, sub_io_b, sub_io_ops, acct_cpu, count_ended in _settle_ended(
                [] if reboot else gone, prev_procs, current, records, uids, set(labels), prev_epoch or now,
                interval, boot_time, previous.get("uptime") if previous else None):
            children[label] -= sub_cpu
            io_b[label] -= sub_io_b
            io_ops[label] -= sub_io_ops
            ended[label] += count_ended
            if label in from_acct:
                from_acct[label] += acct_cpu

    usage: list[PartitionUsage] = []
    max_cpu = ncpu * interval
    for label in labels:
        override = overrides.get(label)
        if override is not None and override.cpu is not None:
            cpu, source = override.cpu, override.source
        elif label in from_acct:
            cpu, source = own[label] + max(children[label], 0.0) + from_acct[label], "acct"
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
        if override is not None and override.io_rw_counter is not None:
            rw, ops = override.io_rw_counter, override.io_cycles_counter
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
    state = {"epoch": now, "boot_time": boot_time, "uptime": uptime, "partitions": labels, "procs": current}
    return usage, state


def raw_wanted(samples: list[ProcessSample], kin: list[tuple[int, float | None]], previous: dict | None,
               labels: Iterable[str]) -> list[int]:
    """Indexes of the ``samples`` whose raw tick-sampled CPU ``compute`` should
    keep (``raw``): the processes of the partitions in ``labels`` (those whose
    ended processes come from accounting records) whose parent is not one of
    the partition's live processes, so that may be reaped outside it (a
    daemon, a service of the node's supervisor), except those whose CPU did
    not move since the previous run read theirs (carried)."""
    wanted = set(labels)
    live = {(sample.partition, sample.pid) for sample in samples}
    prev_procs = (previous or {}).get("procs") or {}
    found = []
    for index, (sample, (ppid, _)) in enumerate(zip(samples, kin, strict=True)):
        if sample.partition not in wanted or (sample.partition, ppid) in live:
            continue
        before = prev_procs.get(sample.process)
        if before is not None and len(before) > _RAW and before[_RAW] is not None \
                and before[_CPU] == sample.cpu_time:
            continue
        found.append(index)
    return found


def _settle_ended(gone: list[str], prev: dict[str, list], current: dict[str, list], records: list[Ended] | None,
                  uids: dict[str, int], labels: set[str], prev_epoch: float, interval: float,
                  boot_time: float, prev_uptime: float | None):
    """Per partition: what to take off the children's times and IO growth (ended
    processes the partition reaped, as the last run saw them), the CPU the
    accounting records add (ended processes reaped outside the partition), and
    the count of ended processes. Yields one tuple per partition concerned.

    A process was reaped inside when its parent at exit (the record's, else
    the one the last run saw) is alive in the partition now, or ended too and
    was itself reaped inside."""
    by_uid = {uid: label for label, uid in uids.items()}
    # node: [label, ppid, entry or None, record or None]
    nodes: list[list] = []
    by_pid: dict[tuple[str, int], list[list]] = {}
    seen: dict[tuple[str, int], list[list]] = {}
    for key in gone:
        entry = prev[key]
        if entry[_LABEL] not in labels:
            continue  # a partition no longer configured
        node = [entry[_LABEL], entry[_PPID], entry, None, float(key.rpartition("-")[2])]
        nodes.append(node)
        seen.setdefault((entry[_LABEL], entry[_PID]), []).append(node)
    live: set[tuple[str, int]] = {(entry[_LABEL], entry[_PID]) for entry in current.values()}
    if records:
        alive: dict[tuple[str, int], list[float]] = {}
        for key, entry in current.items():
            if entry[_LABEL] in uids:
                alive.setdefault((entry[_LABEL], entry[_PID]), []).append(float(key.rpartition("-")[2]))
        for record in records:
            label = by_uid.get(record.uid)
            if label is None:
                continue
            where = (label, record.pid)
            if any(abs(create - record.btime) <= 2.0 for create in alive.get(where, ())):
                continue  # a zombie still listed: it ends for us when it is reaped
            for node in seen.get(where, ()):
                if node[3] is None and abs(node[4] - record.btime) <= 2.0:
                    node[3] = record
                    node[1] = record.ppid  # its parent at exit: the one that reaps it
                    break
            else:
                nodes.append([label, record.ppid, None, record, record.btime])
    for node in nodes:
        by_pid.setdefault((node[0], node[2][_PID] if node[2] else node[3].pid), []).append(node)

    inside: dict[int, bool] = {}

    def reaped_inside(node: list) -> bool:
        chain = []
        result = False
        while True:
            known = inside.get(id(node))
            if known is not None:
                result = known
                break
            if len(chain) > 64 or node in chain:
                break
            chain.append(node)
            where = (node[0], node[1])
            if where in live:
                result = True
                break
            parents = by_pid.get(where)
            if not parents:
                break
            node = parents[0]
        for link in chain:
            inside[id(link)] = result
        return result

    totals: dict[str, list] = {}
    for node in nodes:
        label, _, entry, record, start = node
        total = totals.setdefault(label, [0.0, 0, 0, 0.0, 0])
        total[4] += 1
        if reaped_inside(node):
            if entry is not None:
                total[0] += entry[_CPU] + (entry[_CHILD] or 0.0)
                if entry[_IO_B] is not None:
                    total[1] += entry[_IO_B]
                    total[2] += entry[_IO_OPS] or 0
        elif record is not None:
            if entry is not None:
                total[3] += _tail(record, entry, start - boot_time, prev_uptime)
            elif start >= prev_epoch - 2.0 or record.elapsed <= 0:
                total[3] += record.cpu
            else:
                # Never seen alive, yet older than the previous run (its user
                # changed since): only the interval's share of its total.
                total[3] += record.cpu * min(1.0, interval / record.elapsed)
    for label, (sub_cpu, sub_io_b, sub_io_ops, acct_cpu, count) in totals.items():
        yield label, sub_cpu, sub_io_b, sub_io_ops, acct_cpu, count


def _tail(record: Ended, entry: list, started: float, prev_uptime: float | None) -> float:
    """CPU of a process reaped outside the partition between the last run that
    saw it and its end.

    The record's times are the kernel's tick samples (where the kernel counts
    CPU time by ticks, CONFIG_TICK_CPU_ACCOUNTING), which on a busy machine
    stray from the process's real run time (what /proc shows) by several
    percent of its whole life, up to a quarter when short tasks share its
    core. Where the last run read the same raw samples (``taskstats``), the
    tail is raw minus raw (the ticks after that run only), taken at the ratio
    of real to raw time that run saw for this very process when it ran less
    than its ticks said (never scaled up; the /proc figure rounded up, so only
    the stray surely seen is removed; from half a second of raw time, where
    the rounding moves that ratio by under 2 %). Otherwise (record minus
    /proc's time) the whole life's stray lands in the tail. Either way it is
    never more than the time it still lived times its threads (``started``
    and the uptimes are on the boot clock)."""
    seen_raw = entry[_RAW] if len(entry) > _RAW else None
    if seen_raw is None:
        raw = max(record.cpu - entry[_CPU], 0.0)
    else:
        raw = max(record.cpu - seen_raw, 0.0)
        if seen_raw >= _RATIO_FROM:
            raw *= min((entry[_CPU] + _PROC_TICK) / seen_raw, 1.0)
    if prev_uptime is None or record.elapsed <= 0:
        return raw
    lived = max(started + record.elapsed - prev_uptime, 0.0)
    log.debug("pid %d ended outside its partition: %.2f s after the last run by its record, lived %.2f s more",
              record.pid, raw, lived)
    return min(raw, lived * max(entry[_THREADS] or 1, 1))


def cgroup_overrides(cgroups: dict[str, str], previous: dict | None, reboot: bool,
                     problems: list[str]) -> tuple[dict[str, Override], dict]:
    """Each configured cgroup's CPU and IO growth since the previous run, and
    the counters the next run needs. A cgroup seen for the first time (or
    under another path) gives no figure yet (``cpu`` None: the processes'
    mechanism is used for that interval); a counter that went down (cgroup
    recreated, reboot) counts from zero."""
    from .cgroup import CgroupError, read_usage

    previous = previous or {}
    overrides: dict[str, Override] = {}
    state: dict[str, dict] = {}
    for label, path in cgroups.items():
        try:
            reading = read_usage(path)
        except CgroupError as exc:
            problems.append(f"partition {label}: {exc}; its processes are counted instead")
            continue
        state[label] = {"path": path, "cpu": reading.cpu_usec, "io": [reading.io_rw_counter, reading.io_cycles_counter]}
        before = previous.get(label)
        if not before or before.get("path") != path:
            overrides[label] = Override(reading.kind, None)
            continue
        cpu = reading.cpu_usec - before["cpu"]
        if cpu < 0 or reboot:
            if not reboot:
                log.info("partition %s: cgroup %s CPU counter went down (recreated?): counted from zero",
                         label, path)
            cpu = reading.cpu_usec
        io_bytes = io_ops = None
        prev_io = before.get("io") or [None, None]
        if reading.io_rw_counter is not None and prev_io[0] is not None and not reboot:
            io_bytes, io_ops = reading.io_rw_counter - prev_io[0], reading.io_cycles_counter - prev_io[1]
            if io_bytes < 0 or io_ops < 0:
                io_bytes, io_ops = reading.io_rw_counter, reading.io_cycles_counter
        elif reading.io_rw_counter is not None and reboot:
            io_bytes, io_ops = reading.io_rw_counter, reading.io_cycles_counter
        overrides[label] = Override(reading.kind, cpu / 1e6, io_bytes, io_ops)
    return overrides, state
