"""What the master and the partition owners read: the daily XML consumption
journal and the per-partition status JSON of the SlapOS monitor.

Both keep the original collector's file names and layout (existing tools read
them); unlike it, every file is written whole and atomically, units are the
same everywhere (CPU in %, memory and disk in MiB) and the monitor histories
are bounded.
"""

from __future__ import annotations

import calendar
import json
import logging
import re
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from .atomic import TMP_SUFFIX, write_atomic

if TYPE_CHECKING:  # the journal's XML is imported only when a day is reported, not every minute
    import xml.etree.ElementTree as ET
from .config import Partition
from .datafiles import HANDED_SUFFIX, MONITOR_DIR, REPORT_DIR, UPLOADED_SUFFIX, handed_mark, journal_name
from .datafiles import MONITOR_IO_DATA as IO_DATA
from .datafiles import MONITOR_MEMORY_DATA as MEMORY_DATA
from .datafiles import MONITOR_NETWORK_DATA as NETWORK_DATA
from .datafiles import MONITOR_PROCESS_DATA as PROCESS_DATA
from .datafiles import MONITOR_PROCESS_STATUS as PROCESS_STATUS
from .datafiles import MONITOR_STATUS as STATUS
from .latest import measured_totals
from .store import Store
from .tables import PartitionTotals

log = logging.getLogger("slapos_collect")

MIB = 1024.0 * 1024.0
HISTORY_DAYS = 30

PROCESS_HEADER = "date, total process, CPU percent, CPU time, CPU threads"
MEMORY_HEADER = "date, memory used percent, memory used"
IO_HEADER = "date, io rw counter, io cycles counter, disk used"
# Ours (the original measures no partition network): totals since the store began.
NETWORK_HEADER = "date, net in bytes, net out bytes, net in packets, net out packets"
NET_KEYS = ("net_in_bytes", "net_out_bytes", "net_in_packets", "net_out_packets")


def _number(value: float | None) -> float:
    return round(float(value or 0.0), 2)


# -- the daily XML consumption journal ------------------------------------------

def _text(parent: ET.Element, tag: str, text: str) -> ET.Element:
    from xml.etree.ElementTree import SubElement

    element = SubElement(parent, tag)
    element.text = text
    return element


def _movement(transaction: ET.Element, resource: str, title: str, reference: str, quantity: float) -> None:
    from xml.etree.ElementTree import SubElement

    movement = SubElement(transaction, "movement")
    _text(movement, "resource", resource)
    _text(movement, "title", title)
    _text(movement, "reference", reference)
    _text(movement, "quantity", repr(float(quantity)))
    _text(movement, "price", "0.0")
    _text(movement, "VAT", "")
    _text(movement, "category", "")


def consumption_journal(store: Store, day: str, computer_id: str) -> bytes:
    """The journal of one day: computer and per-partition averages.

    Units are in each movement's title: CPU load in % (computer: 0-100 for the
    whole machine; partition: 100 = one core), memory and disk in MiB. A
    partition's CPU and memory come from ``partition_usage`` (processes that
    ended between two runs included; memory with nothing counted twice, its
    RSS sum where that was not measured), averaged over every run of the day
    (a run without the partition's row counts as 0); its disk over the day's
    folder measurements. A day stored before ``partition_usage`` existed uses
    the sums over the ``user`` rows, as before."""
    import xml.etree.ElementTree as ET

    root = ET.Element("journal")
    transaction = ET.SubElement(root, "transaction", {"type": "Sale Packing List"})
    _text(transaction, "title", f"Eco Information for {computer_id} ")
    _text(transaction, "start_date", f"{day} 00:00:00")
    _text(transaction, "stop_date", f"{day} 23:59:59")
    _text(transaction, "reference", f"{day}-global")
    for tag in ("currency", "payment_mode", "category"):
        _text(transaction, tag, "")
    ET.SubElement(transaction, "arrow", {"type": "Destination"})

    system = store.day_system_averages(day)
    if system.cpu_percent is not None:
        _movement(transaction, "service_module/cpu_load_percent", "CPU Load Percent Average (%)",
                  computer_id, system.cpu_percent)
    if system.memory_used is not None:
        _movement(transaction, "service_module/memory_used", "Used Memory (MiB)", computer_id,
                  system.memory_used / MIB)
    usage = store.day_usage_sums(day)
    if usage.runs:
        cpu_avg = {part: sums.cpu_percent / usage.runs for part, sums in usage.partitions.items()}
        memory_avg = {part: sums.memory_used / usage.runs for part, sums in usage.partitions.items()
                      if sums.memory_used_rows}
    else:
        by_part = store.day_partition_sums(day)
        runs = system.runs if system.runs or not by_part else store.day_user_runs(day)
        cpu_avg = {part: sums.cpu_percent / runs for part, sums in by_part.items()}
        memory_avg = {part: sums.memory_rss / runs for part, sums in by_part.items()}
    for part, value in cpu_avg.items():
        _movement(transaction, "service_module/cpu_load_percent",
                  f"CPU Load Percent Average for {part} (%)", part, value)
    for part, value in memory_avg.items():
        _movement(transaction, "service_module/memory_used",
                  f"Memory Used Average for {part} (MiB)", part, value / MIB)
    for part, disk_kib in store.day_folder_averages(day).items():
        if disk_kib is not None:
            _movement(transaction, "service_module/disk_used",
                      f"Partition Disk Used Average for {part} (MiB)", part, disk_kib / 1024.0)
    body = ET.tostring(root, encoding="unicode", short_empty_elements=False)
    return ("<?xml version='1.0' encoding='utf-8'?>" + body).encode("utf-8")


def journal_path(data_dir: Path, day: str) -> Path:
    return Path(data_dir) / REPORT_DIR / journal_name(day)


def report_path(data_dir: Path, day: str) -> Path | None:
    """Where the day's journal goes, or None when it (or its ``.uploaded``
    mark) is already there: a journal is never rebuilt."""
    path = journal_path(data_dir, day)
    if path.exists() or path.with_name(path.name + UPLOADED_SUFFIX).exists():
        return None
    return path


def journal_from(path: Path, day: str, computer_id: str) -> bytes:
    """The journal computed through its own read-only connection (so that it
    can run in a thread while the day is dumped)."""
    with Store(path, readonly=True) as reader:
        return consumption_journal(reader, day, computer_id)


def write_consumption_report(store: Store, data_dir: Path, day: str, computer_id: str,
                             journal: bytes | None = None) -> Path | None:
    """``<data-dir>/consumption-report/<day>.xml`` (atomic), unless it is
    already there. Returns the path written, or None."""
    path = report_path(data_dir, day)
    if path is None:
        return None
    path.parent.mkdir(mode=0o755, exist_ok=True)
    write_atomic(path, journal if journal is not None else consumption_journal(store, day, computer_id))
    return path


def hand_to_node_report(journal: Path, xml_report_dir: Path | None) -> Path | None:
    """Node mode: a journal just written goes where ``slapos node report``
    takes it (``<instance_root>/var/xml_report/<computer_id>/<day>.xml``; it
    validates, sends and deletes every file there), as the original copies
    each journal it builds. Only the journal of the day being rotated is handed
    over, and a journal is never rebuilt: a day is never sent twice. A
    hand-over made leaves its mark beside the journal until the rotation is
    complete, so that ``rotate.recover`` retries one that failed (a full
    disk) and never repeats one that was made. Atomic: the temp file lives
    in the parent folder, never among the files it sends; never over a file
    already there."""
    if xml_report_dir is None:
        return None
    # Kept until the day's rotation is complete (clean_report_leftovers).
    mark = journal.with_name(handed_mark(journal.name))
    if mark.exists():
        return None
    final = xml_report_dir / journal.name
    handed = write_atomic(final, journal.read_bytes(), replace=False, tmp_dir=xml_report_dir.parent)
    write_atomic(mark, b"")
    if not handed:
        return None
    log.info("journal %s handed to slapos node report in %s", journal.name, xml_report_dir)
    return final


def clean_report_leftovers(data_dir: Path, xml_report_dir: Path | None = None) -> None:
    """Temp files of killed runs, and the hand-over marks of completed rotations
    (called once no rotation is pending)."""
    folders = [Path(data_dir) / REPORT_DIR] + ([xml_report_dir.parent] if xml_report_dir else [])
    for folder in folders:
        if folder.is_dir():
            for pattern in (f".*{TMP_SUFFIX}", f".*{HANDED_SUFFIX}"):
                for leftover in folder.glob(pattern):
                    leftover.unlink(missing_ok=True)


# -- the SlapOS monitor's per-partition JSON -----------------------------------------

_FIRST_ROWS = re.compile(rb'"data":\s*\[\s*"[^"]*"\s*,\s*"([^"]*)"')


def append_history(path: Path, header: str, row: str, now: float | None = None) -> bool:
    """Append ``row`` to a ``{"date": epoch, "data": [header, row, ...]}`` file.

    Rows start with their UTC stamp; a row whose stamp is already the last one
    is not added twice. Rows more than HISTORY_DAYS older than the new row are
    dropped (checked on the first row only, so the file is parsed about once a
    day). The file is rewritten whole (atomic) but not parsed on the common
    path. ``now`` is the creation date of a new file."""
    now = time.time() if now is None else now
    try:
        raw = path.read_bytes().rstrip()
    except FileNotFoundError:
        raw = b""
    encoded = json.dumps(row).encode()
    if raw.endswith(b'"]}') and raw.startswith(b'{"date":'):
        body = raw[:-2]
        last = body[body.rfind(b'"', 0, len(body) - 1) + 1:-1]
        if last[:19] >= row[:19].encode() and last[:2].isdigit():
            return False
        new = body + b", " + encoded + b"]}"
        first = _FIRST_ROWS.search(new[:4096])
        newest = _epoch(row[:19])
        if first and newest is not None and first.group(1)[:19].decode(errors="replace") < _stamp(
                newest - (HISTORY_DAYS + 1) * 86400):
            new = _trimmed(new, newest, header)
    else:
        if raw:
            log.warning("%s: not a monitor history file, starting it over", path)
        new = json.dumps({"date": now, "data": [header, row]}).encode()
    write_atomic(path, new)
    return True


def _stamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


def _epoch(stamp: str) -> float | None:
    try:
        return calendar.timegm(time.strptime(stamp, "%Y-%m-%d %H:%M:%S"))
    except ValueError:
        return None


def _trimmed(raw: bytes, newest: float, header: str) -> bytes:
    now = time.time()
    try:
        content = json.loads(raw)
        rows = list(content["data"][1:])
        created = content.get("date", now)
    except (ValueError, KeyError, TypeError, IndexError):
        return json.dumps({"date": now, "data": [header]}).encode()
    keep_from = _stamp(newest - HISTORY_DAYS * 86400)
    rows = [r for r in rows if isinstance(r, str) and r[:19] >= keep_from]
    return json.dumps({"date": created, "data": [header, *rows]}).encode()


def _process_date(process: str) -> str | None:
    """The creation time, UTC, out of ``"<pid>-<create_time>"``."""
    try:
        created = float(str(process).rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None
    return _stamp(created)


class MonitorStatus(NamedTuple):
    """One partition's part of the SlapOS monitor files for one run: each dict is
    one ``*.data.json`` line and part of the status JSON (empty: not measured)."""

    process: dict
    memory: dict
    io: dict
    network: dict
    processes: list[dict]  # monitor_process_resource.status.json


def monitor_status(store: Store, partition: str, date: str, time_: str, usage: sqlite3.Row | None,
                   sums: PartitionTotals | None, totals: dict[str, float], disk_kib: float | None,
                   machine_memory: float | None) -> MonitorStatus:
    """The process, memory, IO and network dicts and the per-process list of one
    run. ``usage``: the partition's ``partition_usage`` row of the run; ``sums``:
    its sums of ``Store.partition_totals`` (threads, and memory % without the
    machine's size); ``totals``: its running sums (``measured_totals``). CPU time,
    IO and network are totals since the store began (they only go up); a
    figure not measured is absent."""
    stamp = f"{date} {time_}"
    count = usage["processes"] if usage else 0
    process = {"total_process": count, "cpu_percent": _number(usage["cpu_percent"] if usage else 0),
               "cpu_time": _number(totals.get("cpu_time", 0.0) / 60.0),
               "cpu_num_threads": _number(sums.cpu_num_threads if sums else 0), "date": stamp}
    rss = usage["memory_rss"] if usage else None
    used = usage["memory_used"] if usage and usage["memory_used"] is not None else rss
    if used is not None and machine_memory:
        percent = 100.0 * used / machine_memory
    else:
        percent = sums.memory_percent if sums else 0
    memory = {"memory_percent": _number(percent), "memory_used": _number((used or 0) / MIB),
              "memory_rss": _number((rss or 0) / MIB), "date": stamp}
    io = {"io_rw_counter": _number(totals["io_rw_counter"]), "io_cycles_counter": _number(
              totals.get("io_cycles_counter")), "disk_used": _number((disk_kib or 0) / 1024.0), "date": stamp
          } if "io_rw_counter" in totals else {}
    network = {key: _number(totals[key]) for key in NET_KEYS if key in totals}
    if network:
        network["date"] = stamp
    processes = []
    for proc in store.run_processes(partition, date, time_):
        entry = {"pid": int(proc.pid) if proc.pid is not None else None, "cpu_percent": _number(proc.cpu_percent),
                 "cpu_time": _number((proc.cpu_time or 0) / 60.0), "cpu_num_threads": _number(proc.cpu_num_threads),
                 "memory_percent": _number(proc.memory_percent), "memory_rss": _number((proc.memory_rss or 0) / MIB),
                 "io_rw_counter": _number(proc.io_rw_counter), "io_cycles_counter": _number(proc.io_cycles_counter)}
        created = _process_date(proc.process)
        if created:
            entry["date"] = created
        processes.append(entry)
    return MonitorStatus(process, memory, io, network, processes)


def publish_monitor(store: Store, partitions: Iterable[Partition], now: float | None = None) -> list[Path]:
    """Write the latest run's status into each partition's ``.slapgrid/monitor/``
    (only where that folder exists). Returns the folders written."""
    targets = []
    for part in partitions:
        if part.path:
            folder = Path(part.path).joinpath(*MONITOR_DIR)
            if folder.is_dir():
                targets.append((part.label, folder))
    if not targets:
        return []
    stamp = store.latest_stamp("system")
    if stamp is None:
        return []
    usage = {row["partition"]: row for row in store.rows_at("partition_usage", *stamp)}
    all_sums = {sums.partition: sums for sums in store.partition_totals(*stamp)}
    totals = measured_totals(store, usage)
    computers = store.rows_at("computer", *stamp)
    machine_memory = computers[0]["memory_size"] if computers else None
    folder_kib = store.latest_folder_sizes()
    written = []
    for label, folder in targets:
        row = usage.get(label)
        got = monitor_status(store, label, *stamp, row, all_sums.get(label), totals.get(label, {}),
                             folder_kib.get(label), machine_memory)
        status: dict = {}
        if row is not None and (row["processes"] or row["cpu_time"] or row["ended"]):
            append_history(folder / PROCESS_DATA, PROCESS_HEADER, ", ".join(str(got.process[k]) for k in (
                "date", "total_process", "cpu_percent", "cpu_time", "cpu_num_threads")), now)
            status.update(got.process)
        if got.memory["memory_used"]:
            append_history(folder / MEMORY_DATA, MEMORY_HEADER, ", ".join(str(got.memory[k]) for k in (
                "date", "memory_percent", "memory_used")), now)
            status.update(got.memory)
        if got.io:
            append_history(folder / IO_DATA, IO_HEADER, ", ".join(str(got.io[k]) for k in (
                "date", "io_rw_counter", "io_cycles_counter", "disk_used")), now)
            status.update(got.io)
        if got.network:
            append_history(folder / NETWORK_DATA, NETWORK_HEADER, ", ".join(
                str(got.network.get(k, "")) for k in ("date", *NET_KEYS)), now)
            status.update(got.network)
        write_atomic(folder / STATUS, json.dumps(status).encode())
        write_atomic(folder / PROCESS_STATUS, json.dumps(got.processes).encode())
        written.append(folder)
    return written
