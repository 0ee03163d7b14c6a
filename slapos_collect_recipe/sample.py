"""Sampling: psutil readings turned into the dataclasses of ``snapshot``.

Nothing here blocks to measure CPU: a process's CPU % is the CPU time it used
since the previous run over the wall time since then (100 = one full core),
for the same identity (pid + creation time); the system's likewise from the
kernel's counters. The previous run's figures come from the caller.

The direct reads of ``/proc`` take its root as ``proc_root`` (as psutil's
``PROCFS_PATH`` does), so that they can be tried on the tree of another kernel.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import psutil

from . import accounting
from . import memory as partition_memory
from .config import DEFAULT_MEMORY_CYCLE, CollectSettings, Partition
from .snapshot import (
    ComputerSample,
    DiskIOSample,
    DiskSample,
    ProcessSample,
    RunSnapshot,
    SystemSample,
    TemperatureSample,
)

log = logging.getLogger("slapos_collect")

# Fields of psutil.cpu_times() that count as not busy (psutil counts iowait
# as idle too); guest time is already inside user/nice on Linux.
_IDLE = ("idle", "iowait")
_NOT_IN_TOTAL = ("guest", "guest_nice")
PROC_ROOT = "/proc"


def _proc_owner_and_dirs(pid: int, want_dirs: bool, proc_root: str = PROC_ROOT) -> tuple[int, str | None, str | None]:
    """uid of a process, and when asked its cwd and executable (None if unreadable)."""
    uid = os.stat(f"{proc_root}/{pid}").st_uid
    if not want_dirs:
        return uid, None, None
    cwd = exe = None
    try:
        cwd = os.readlink(f"{proc_root}/{pid}/cwd")
    except OSError:
        pass
    try:
        exe = os.readlink(f"{proc_root}/{pid}/exe")
    except OSError:
        pass
    return uid, cwd, exe


def _pids(proc_root: str) -> list[int]:
    """Every pid, in order: the numeric entries of ``proc_root`` (psutil's where there is no Linux /proc)."""
    if not _HAVE_PROC and proc_root == PROC_ROOT:
        return psutil.pids()
    return sorted(int(name) for name in os.listdir(proc_root) if name.isdigit())


def _under(path: str | None, roots: list[tuple[str, str]]) -> str | None:
    """The label of the first directory partition that contains ``path``."""
    if not path:
        return None
    for root, label in roots:
        if path == root or path.startswith(root + "/"):
            return label
    return None


def find_processes(partitions: Iterable[Partition], proc_root: str = PROC_ROOT) -> list[tuple[int, str]]:
    """``(pid, partition label)`` of every process that belongs to a partition.

    A partition with a uid owns the processes running as that user; one
    without owns those whose working directory or executable lies under its
    path (longest path first, so nested partitions are told apart)."""
    by_uid = {p.uid: p.label for p in partitions if p.uid is not None}
    roots = sorted(
        ((os.path.realpath(p.path).rstrip("/"), p.label) for p in partitions if p.uid is None and p.path),
        key=lambda item: len(item[0]),
        reverse=True,
    )
    me = os.getpid()
    found: list[tuple[int, str]] = []
    for pid in _pids(proc_root):
        if pid == me:
            continue
        try:
            uid, cwd, exe = _proc_owner_and_dirs(pid, bool(roots), proc_root)
        except OSError:
            continue  # vanished
        label = by_uid.get(uid)
        if label is None and roots:
            label = _under(cwd, roots) or _under(exe, roots)
        if label is not None:
            found.append((pid, label))
    return found


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_HAVE_PROC = os.path.exists(f"{PROC_ROOT}/self/stat")
# A process's IO counters that no one can read: a kernel without IO accounting
# (CONFIG_TASK_IO_ACCOUNTING off: no /proc/<pid>/io). Stored as NULL, as unknown.
_NO_IO: tuple[None, None] = (None, None)
if TYPE_CHECKING:  # what a reader gives: create_time, cpu_time, threads, rss, io, ppid, children's CPU
    _Reading = tuple[float, float, int, int, tuple[int, int] | tuple[None, None] | None, int, float | None]


def _read_linux(pid: int, boot_time: float, proc_root: str = PROC_ROOT) -> _Reading:
    """create_time, cpu_time, threads, rss, io, ppid and children's CPU time
    (reaped children's cutime + cstime) of a process; ``io`` is ``(bytes read
    and written, read and write operations)``, None when another user's
    counters may not be read (not root), ``_NO_IO`` when the kernel keeps none.

    Linux only: two reads (``/proc/<pid>/stat`` and ``/proc/<pid>/io``) where
    psutil's ``oneshot()`` makes four, with psutil's own formulas, so the
    figures and the identity are the same as psutil's. This loop runs every
    minute for thousands of processes. Raises ``FileNotFoundError`` or
    ``ProcessLookupError`` when the process is gone."""
    with open(f"{proc_root}/{pid}/stat", "rb") as handle:
        data = handle.read()
    # The command name (field 2) may hold spaces and parentheses: skip past the last ')'.
    fields = data[data.rfind(b")") + 2:].split()
    cpu_time = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    create_time = int(fields[19]) / _CLOCK_TICKS + boot_time
    threads = int(fields[17])
    rss = int(fields[21]) * _PAGE_SIZE
    io: tuple[int, int] | tuple[None, None] | None
    try:
        with open(f"{proc_root}/{pid}/io", "rb") as handle:
            counters = dict(line.split(b": ", 1) for line in handle.read().splitlines() if b": " in line)
        io = (int(counters[b"read_bytes"]) + int(counters[b"write_bytes"]),
              int(counters[b"syscr"]) + int(counters[b"syscw"]))
    except PermissionError:
        io = None
    except FileNotFoundError:
        # As psutil tells them apart: the process is gone when its stat went
        # too; else it lives on a kernel without IO accounting.
        if not os.path.exists(f"{proc_root}/{pid}/stat"):
            raise
        io = _NO_IO
    except (KeyError, ValueError):  # a file without the counters (psutil raises): unknown, the process kept
        io = _NO_IO
    return (create_time, cpu_time, threads, rss, io, int(fields[1]),
            (int(fields[13]) + int(fields[14])) / _CLOCK_TICKS)


def _read_psutil(pid: int, boot_time: float, proc_root: str = PROC_ROOT) -> _Reading:
    """The same figures through psutil, where there is no Linux /proc."""
    proc = psutil.Process(pid)
    with proc.oneshot():
        times = proc.cpu_times()
        io: tuple[int, int] | tuple[None, None] | None
        try:
            counters = proc.io_counters()
            io = (counters.read_bytes + counters.write_bytes, counters.read_count + counters.write_count)
        except psutil.AccessDenied:
            io = None
        except AttributeError:  # psutil has no io_counters on this system
            io = _NO_IO
        children = getattr(times, "children_user", None)
        if children is not None:
            children += getattr(times, "children_system", 0.0)
        return (proc.create_time(), times.user + times.system, proc.num_threads(), proc.memory_info().rss,
                io, proc.ppid(), children)


def sample_processes(
    members: list[tuple[int, str]],
    now: float,
    previous: dict[str, float],
    previous_epoch: float | None,
    memory_total: int,
    max_percent: float,
    boot_time: float | None = None,
    kin: list[tuple[int, float | None]] | None = None,
    proc_root: str = PROC_ROOT,
) -> tuple[list[ProcessSample], int, int]:
    """Sample each process; returns (samples, vanished count, not-fully-readable count).

    ``kin``, when given, gets ``(ppid, children's CPU seconds)`` of each sample, in order.
    A process whose IO the kernel does not count (no ``/proc/<pid>/io``) is
    sampled with its IO unknown (None), neither vanished nor denied."""
    read = _read_linux if _HAVE_PROC or proc_root != PROC_ROOT else _read_psutil
    if boot_time is None:
        boot_time = psutil.boot_time()
    samples: list[ProcessSample] = []
    vanished = denied = no_io = 0
    interval = now - previous_epoch if previous_epoch else 0.0
    for pid, label in members:
        try:
            create_time, cpu_time, threads, rss, io, ppid, children = read(pid, boot_time, proc_root)
        except (FileNotFoundError, ProcessLookupError, psutil.NoSuchProcess):
            vanished += 1
            continue
        except (PermissionError, psutil.AccessDenied):
            denied += 1
            continue
        if io is None:
            denied += 1  # sampled as far as allowed: another user's IO counters
            io = _NO_IO
        elif io is _NO_IO:
            no_io += 1
        sample = ProcessSample(
            partition=label, pid=pid, create_time=create_time, cpu_percent=0.0, cpu_time=cpu_time,
            cpu_num_threads=threads, memory_percent=rss * 100.0 / memory_total if memory_total else 0.0,
            memory_rss=rss, io_rw_counter=io[0], io_cycles_counter=io[1],
        )
        before = previous.get(sample.process)
        if before is not None and interval > 0 and cpu_time >= before:
            percent = (cpu_time - before) * 100.0 / interval
        else:
            # First seen (or pid reused, or counter went back): since it started.
            lifetime = now - create_time
            percent = cpu_time * 100.0 / lifetime if lifetime > 0 else 0.0
        sample.cpu_percent = round(min(max(percent, 0.0), max_percent), 2)
        samples.append(sample)
        if kin is not None:
            kin.append((ppid, children))
    if no_io:
        log.debug("%d processes without IO counters (a kernel without IO accounting?): their IO is unknown", no_io)
    return samples, vanished, denied


def system_cpu_percent(times: dict[str, float], previous: dict | None, boot_time: float) -> float:
    """Busy % of all CPUs since the previous run's counters, or since boot when
    those are missing, from another boot, or went down."""

    def busy_total(t: dict[str, float]) -> tuple[float, float]:
        total = sum(v for k, v in t.items() if k not in _NOT_IN_TOTAL)
        return total - sum(t.get(k, 0.0) for k in _IDLE), total

    busy, total = busy_total(times)
    if previous and previous.get("boot_time") == boot_time and previous.get("cpu_times"):
        prev_busy, prev_total = busy_total(previous["cpu_times"])
        if total > prev_total and busy >= prev_busy:
            busy, total = busy - prev_busy, total - prev_total
    if total <= 0:
        return 0.0
    return round(min(max(busy * 100.0 / total, 0.0), 100.0), 2)


def _cpu_model(proc_root: str = PROC_ROOT) -> str:
    try:
        with open(f"{proc_root}/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Processor", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return ""


def sample_disks() -> tuple[list[DiskSample], list[DiskIOSample]]:
    """Every real mounted filesystem once (with all its mount points), and the
    IO counters of the block devices behind them."""
    mounts: dict[str, list[str]] = {}
    for part in psutil.disk_partitions(all=False):
        mounts.setdefault(part.device, []).append(part.mountpoint)
    disks: list[DiskSample] = []
    for device, points in mounts.items():
        points.sort(key=len)
        try:
            usage = psutil.disk_usage(points[0])
        except OSError:
            continue
        disks.append(DiskSample(device, usage.used, usage.free, usage.total, points))
    io_samples: list[DiskIOSample] = []
    try:
        counters = psutil.disk_io_counters(perdisk=True) or {}
    except (OSError, RuntimeError):
        counters = {}
    seen: set[str] = set()
    for disk in disks:
        name = os.path.basename(os.path.realpath(disk.partition))
        io = counters.get(name)
        if io is None or name in seen:
            continue
        seen.add(name)
        io_samples.append(DiskIOSample(
            name, io.read_bytes, io.write_bytes, io.read_count, io.write_count, getattr(io, "busy_time", 0),
        ))
    return disks, io_samples


def temperature_samples(readings: dict[str, list]) -> list[TemperatureSample]:
    """psutil's ``sensors_temperatures()`` (chip -> ``shwtemp(label, current,
    high, critical)``) as samples. A mark of None or at most 0 °C is no mark
    (drivers report 0 for "none"); psutil copies high to critical and back
    when only one is known. psutil merges chips of one name (two NVMe drives,
    two sockets' coretemp): a label met again is told apart as ``label#2``,
    ``label#3``, in psutil's order (the hwmon numbering)."""
    samples = []
    seen: dict[tuple[str, str], int] = {}
    for chip, entries in readings.items():
        for index, entry in enumerate(entries, 1):
            label, current, high, critical = entry[:4]
            if current is None:
                continue
            chip = chip or "unknown"
            sensor = label or f"temp{index}"
            seen[chip, sensor] = times = seen.get((chip, sensor), 0) + 1
            if times > 1:
                sensor = f"{sensor}#{times}"
            marks = [mark for mark in (high, critical) if mark is not None and mark > 0]
            samples.append(TemperatureSample(
                chip=chip, sensor=sensor, temperature=round(float(current), 3),
                high=high, critical=critical, alarm=any(current > mark for mark in marks),
            ))
    return samples


def sample_temperatures() -> list[TemperatureSample]:
    """Every temperature sensor the kernel exposes (psutil reads
    /sys/class/hwmon, or the thermal zones when there is no hwmon sensor);
    none at all on a machine without sensors (a VM): nothing, and no log."""
    reader = getattr(psutil, "sensors_temperatures", None)
    if reader is None:
        return []
    try:
        return temperature_samples(reader())
    except (OSError, ValueError):
        return []


def _usage(partitions: list[Partition], processes: list[ProcessSample], kin: list[tuple[int, float | None]],
           previous: dict | None, now: float, uptime: float, boot_time: float, ncpu: int,
           settings: CollectSettings | None) -> tuple[list, dict, list[str]]:
    """``partition_usage`` rows with the most exact mechanism each partition has
    (cgroup, process accounting, children's times), the state to keep, and the
    bad input met."""
    problems: list[str] = []
    previous = previous or {}
    reboot = bool(previous) and accounting.rebooted(previous, boot_time, uptime)
    overrides: dict = {}
    cgroup_state: dict = {}
    cgroups = getattr(settings, "cgroups", None) or {}
    if cgroups:
        overrides, cgroup_state = accounting.cgroup_overrides(cgroups, previous.get("cgroups"), reboot, problems)
    records = acct_state = None
    uids: dict[str, int] = {}
    if settings is not None and _HAVE_PROC:
        from . import pacct

        records, acct_state = pacct.read_ended(settings.data_dir, settings.process_accounting,
                                               previous.get("acct"), problems,
                                               {p.uid for p in partitions if p.uid is not None})
        if records is not None:
            uids = {p.label: p.uid for p in partitions if p.uid is not None}
    raw = _raw_cpu(partitions, processes, kin, previous) if acct_state is not None else None
    usage, state = accounting.compute(partitions, processes, kin, previous or None, now, boot_time, ncpu,
                                      ended_records=records, uids=uids, overrides=overrides, uptime=uptime,
                                      raw=raw)
    if cgroup_state:
        state["cgroups"] = cgroup_state
    if acct_state:
        state["acct"] = acct_state
    return usage, state, problems


def _raw_cpu(partitions: list[Partition], processes: list[ProcessSample], kin: list[tuple[int, float | None]],
             previous: dict) -> dict[str, float] | None:
    """Raw tick-sampled CPU (``taskstats``) of the processes that may end outside
    their partition, where accounting records count those ends."""
    wanted = accounting.raw_wanted(processes, kin, previous, [p.label for p in partitions if p.uid is not None])
    if not wanted:
        return None
    from . import taskstats

    reader = taskstats.open_taskstats()
    if reader is None:
        return None
    raw = {}
    try:
        for index in wanted:
            value = reader.raw_cpu(processes[index].pid)
            if value is not None:
                raw[processes[index].process] = value
    finally:
        reader.close()
    return raw


def take(partitions: list[Partition], previous_state: dict | None, previous_cpu: dict[str, float],
         previous_usage: dict | None = None, settings: CollectSettings | None = None,
         previous_memory: dict | None = None) -> RunSnapshot:
    """One run's snapshot of every partition's processes and usage since the
    previous run, the system, the computer and the disks, under one UTC stamp.

    ``previous_usage`` is what the previous run kept for ``accounting``
    (``collect_state`` key ``usage``), ``previous_memory`` what it kept for
    ``memory`` (key ``memory``); ``settings`` name cgroups, process accounting
    and the memory cycle."""
    now = time.time()
    uptime = time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else 0.0
    stamp = time.gmtime(now)
    boot_time = psutil.boot_time()
    memory = psutil.virtual_memory()
    ncpu = psutil.cpu_count() or 1

    members = find_processes(partitions)
    prev_epoch = previous_state.get("epoch") if previous_state else None
    kin: list[tuple[int, float | None]] = []
    processes, vanished, denied = sample_processes(
        members, now, previous_cpu, prev_epoch, memory.total, 100.0 * ncpu, boot_time, kin
    )
    usage, usage_state, problems = _usage(partitions, processes, kin, previous_usage, now, uptime, boot_time,
                                          ncpu, settings)
    memory_state = partition_memory.fill(usage, processes, settings.cgroups if settings else {}, previous_memory,
                                         now, settings.memory_cycle if settings else DEFAULT_MEMORY_CYCLE)

    cpu_times = psutil.cpu_times()._asdict()
    net = psutil.net_io_counters()
    system = SystemSample(
        loadavg=round(os.getloadavg()[0], 2),
        cpu_percent=system_cpu_percent(cpu_times, previous_state, boot_time),
        memory_used=memory.total - memory.available,
        memory_free=memory.available,
        net_in_bytes=net.bytes_recv, net_in_errors=net.errin, net_in_dropped=net.dropin,
        net_out_bytes=net.bytes_sent, net_out_errors=net.errout, net_out_dropped=net.dropout,
    )
    disks, disk_io = sample_disks()
    try:
        freq = psutil.cpu_freq()
    except (OSError, NotImplementedError):
        freq = None
    computer = ComputerSample(
        cpu_num_core=ncpu,
        cpu_frequency=round(freq.current, 1) if freq and freq.current else None,
        cpu_type=_cpu_model(),
        memory_size=memory.total,
        memory_type="",
        partition_list=";".join(f"{d.partition}={d.total}" for d in disks),
    )
    return RunSnapshot(
        date=time.strftime("%Y-%m-%d", stamp), time=time.strftime("%H:%M:%S", stamp), epoch=now,
        processes=processes, system=system, computer=computer, disks=disks, disk_io=disk_io, usage=usage,
        temperatures=sample_temperatures(),
        cpu_state={"boot_time": boot_time, "cpu_times": cpu_times},
        state={accounting.STATE_KEY: usage_state, partition_memory.STATE_KEY: memory_state},
        problems=problems, vanished=vanished, denied=denied,
    )
