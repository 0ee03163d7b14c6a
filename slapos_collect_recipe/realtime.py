"""Today's per-metric CSVs for dygraph, appended once per run.

Each file has the header ``time,entry`` and one line per run: the UTC stamp
``YYYY-MM-DD HH:MM:SS`` and the value. Memory, disk and network bytes are in
KiB; network counters are deltas since the previous run (a counter that went
down, after a reboot, starts a new baseline: the delta is 0, never negative).

A run appends only its own line, written whole by one ``os.write`` on an
``O_APPEND`` descriptor, so the cost does not grow through the day and a
reader never sees half a line. The first run of a day starts each file over:
the new file (header and first line) is written aside and renamed over the
old one, so a reader never finds a file missing. Before writing, the last
line of the file is read (a few hundred bytes from its end): a stamp that is
already there is not written twice.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from pathlib import Path

from .atomic import write_atomic
from .datafiles import (
    CSV_SUFFIX,
    DISK_PREFIX,
    PARTITION_PREFIX,
    TEMPERATURE_PREFIX,
    csv_name,
    disk_file_stem,
    partition_stem,
)
from .store import Store

log = logging.getLogger("slapos_collect")

HEADER = b"time,entry\n"
KIB = 1024.0

# file stem -> (system column, divisor, is a cumulative counter)
SYSTEM_SERIES: dict[str, tuple[str, float, bool]] = {
    "system_loadavg": ("loadavg", 1.0, False),
    "system_cpu_percent": ("cpu_percent", 1.0, False),
    "system_memory_used": ("memory_used", KIB, False),
    "system_memory_free": ("memory_free", KIB, False),
    "system_net_in_bytes": ("net_in_bytes", KIB, True),
    "system_net_in_errors": ("net_in_errors", 1.0, True),
    "system_net_in_dropped": ("net_in_dropped", 1.0, True),
    "system_net_out_bytes": ("net_out_bytes", KIB, True),
    "system_net_out_errors": ("net_out_errors", 1.0, True),
    "system_net_out_dropped": ("net_out_dropped", 1.0, True),
}
# Per partition (partition_usage): figure -> (columns, the first not NULL taken; divisor).
# Every figure is already per interval (since the previous run).
PARTITION_SERIES: dict[str, tuple[tuple[str, ...], float]] = {
    "cpu_percent": (("cpu_percent",), 1.0),
    "memory_used": (("memory_used", "memory_rss"), KIB),
    "io_bytes": (("io_rw_counter",), KIB),
    "net_in_bytes": (("net_in_bytes",), KIB),
    "net_out_bytes": (("net_out_bytes",), KIB),
}
# A file name has at most 255 bytes: a longer encoded label is cut and marked.
LABEL_BYTES = 180


def label_part(label: str) -> str:
    """``label`` percent-encoded as a file name part: reversible (``urllib.parse.unquote``,
    or ``decodeURIComponent`` in a browser), so two labels never share a name, and
    free of ``/``, spaces and anything else unsafe (only ``A-Z a-z 0-9 _ . -`` and
    ``%XX`` escapes remain). An encoding beyond LABEL_BYTES keeps its first whole
    characters and ends with ``~`` and 16 hex digits of the label's SHA-256 (``~``
    is escaped in the reversible form, so such a name never meets one)."""
    from urllib.parse import quote

    def encode(text: str) -> str:
        return quote(text, safe="", errors="surrogatepass").replace("~", "%7E")

    encoded = encode(label)
    if len(encoded) <= LABEL_BYTES:
        return encoded
    import hashlib

    cut, size = [], 0
    for char in label:
        piece = encode(char)
        if size + len(piece) > LABEL_BYTES:
            break
        cut.append(piece)
        size += len(piece)
    return "".join(cut) + "~" + hashlib.sha256(label.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def partition_file_stem(figure: str, label: str) -> str:
    """``partition_<figure>_<label_part(label)>``, e.g. ``partition_cpu_percent_slappart0``."""
    return partition_stem(figure, label_part(label))


def temperature_file_stem(sensor_id: str) -> str:
    """``temperature_<sensor id>``, every character but letters, digits, ``.``
    and ``-`` as ``_`` (``coretemp/Core 0`` gives ``temperature_coretemp_Core_0``)."""
    return TEMPERATURE_PREFIX + re.sub(r"[^A-Za-z0-9.-]", "_", sensor_id)


def format_value(value: float | None) -> str:
    if value is None:
        return ""
    value = round(float(value), 2)
    return str(int(value)) if value.is_integer() else repr(value)


def counter_delta(current: float | None, previous: float | None) -> float | None:
    """Per-interval delta of a cumulative counter; a reset gives 0, never < 0."""
    if current is None:
        return None
    if previous is None or current < previous:
        return 0.0
    return float(current) - float(previous)


def series(store: Store) -> tuple[str, dict[str, str]] | None:
    """The latest run's stamp and ``file stem -> value`` for every published file."""
    stamp = store.latest_stamp("system")
    if stamp is None:
        return None
    rows = store.rows_at("system", *stamp)
    if not rows:
        return None
    current = rows[0]
    before = store.previous_stamp("system", *stamp)
    previous_rows = store.rows_at("system", *before) if before else []
    previous = previous_rows[0] if previous_rows else None
    values: dict[str, str] = {}
    for stem, (column, divisor, counter) in SYSTEM_SERIES.items():
        value = current[column]
        if counter:
            value = counter_delta(value, previous[column] if previous is not None else None)
        values[stem] = format_value(None if value is None else value / divisor)
    for disk in store.rows_at("disk", *stamp):
        device = disk["partition"] or ""
        if not device.strip("/"):
            continue
        for kind in ("used", "free"):
            try:
                value = float(disk[kind]) / KIB
            except (TypeError, ValueError):
                continue
            values[disk_file_stem(kind, device)] = format_value(value)
    for usage in store.rows_at("partition_usage", *stamp):
        label = label_part(usage["partition"])
        for figure, (names, divisor) in PARTITION_SERIES.items():
            value = next((usage[name] for name in names if usage[name] is not None), None)
            if value is not None:  # not measured: no line (a gap in the chart), never a 0
                values[partition_stem(figure, label)] = format_value(value / divisor)
    for row in store.rows_at("temperature", *stamp):  # none on a machine without sensors
        values[temperature_file_stem(row["sensor_id"] or "")] = format_value(row["temperature"])
    return f"{stamp.date} {stamp.time}", values


def _last_line(path: Path) -> bytes | None:
    """The last complete line of ``path`` (None when the file is missing)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        chunk = os.pread(fd, min(size, 512), max(0, size - 512))
    finally:
        os.close(fd)
    lines = chunk.rstrip(b"\n").rsplit(b"\n", 1)
    return lines[-1]


def _append(path: Path, line: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    try:
        written = os.write(fd, line)
    finally:
        os.close(fd)
    if written != len(line):  # pragma: no cover - regular files write small buffers whole
        raise OSError(f"{path}: short write")


def publish_line(path: Path, stamp: str, value: str, daily: bool = True) -> str | None:
    """Add the run's line to one CSV.

    Returns ``"new"`` when the file was started (or, when ``daily``, started
    over on the first run of a day), ``"appended"``, or None when the stamp
    was already there."""
    line = f"{stamp},{value}\n".encode()
    last = _last_line(path)
    if last == HEADER.rstrip():
        _append(path, line)
        return "appended"
    if last is None or (daily and last[:10] != stamp[:10].encode()):
        write_atomic(path, HEADER + line)
        return "new"
    if last[:19] >= stamp.encode():
        return None  # this run (or a later one) is already there
    _append(path, line)
    return "appended"


def publish(store: Store, data_dir: Path) -> None:
    """Append the latest run's values to today's CSVs in ``data_dir``."""
    found = series(store)
    if found is None:
        return
    stamp, values = found
    data_dir = Path(data_dir)
    started_over = False
    for stem, value in values.items():
        if publish_line(data_dir / csv_name(stem), stamp, value) == "new":
            started_over = True
    if started_over:
        _drop_stale(data_dir, stamp[:10], values)


def _drop_stale(data_dir: Path, day: str, current: dict[str, str]) -> None:
    """At the day change, remove the CSVs of disks, partitions and temperature
    sensors that are gone (yesterday's data), and a partition's figure no longer measured."""
    names = [name for prefix in (DISK_PREFIX, PARTITION_PREFIX, TEMPERATURE_PREFIX)
             for name in glob.glob(glob.escape(str(data_dir)) + f"/{prefix}*{CSV_SUFFIX}")]
    for name in names:
        path = Path(name)
        if path.stem in current:
            continue
        last = _last_line(path)
        if last is None or last[:10].decode(errors="replace") < day:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
