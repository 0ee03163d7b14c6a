"""The latest figures per partition, read from the store: what the dashboard
(``/<secret>/api/partitions``), ``/metrics`` and the monitor JSON all show.

Gauges come from the latest ``partition_usage`` run (one interval's figures,
None where not measured); counters from the store's running sums of it
(``partition_counters``), which only go up. Nothing is kept between calls.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, NamedTuple

from .datafiles import DB_NAME
from .store import Store
from .tables import COUNTERS, Stamp

# partition_usage column -> key of current_partitions (one run's figures, for the interval
# since the previous run; None where not measured).
USAGE_KEYS = {
    "processes": "processes", "ended": "ended", "cpu_percent": "cpu_percent", "cpu_time": "cpu_seconds",
    "memory_used": "memory_used_bytes", "memory_rss": "resident_bytes",
    "io_rw_counter": "io_bytes", "io_cycles_counter": "io_ops",
    "net_in_bytes": "net_in_bytes", "net_out_bytes": "net_out_bytes",
    "net_in_packets": "net_in_packets", "net_out_packets": "net_out_packets",
    "source": "source", "memory_source": "memory_source", "net_source": "net_source",
}
# store.COUNTERS column -> key of current_partitions: the running sums since the store began.
COUNTER_KEYS = {
    "cpu_time": "cpu_seconds_total", "io_rw_counter": "io_bytes_total", "io_cycles_counter": "io_ops_total",
    "ended": "ended_total", "net_in_bytes": "net_in_bytes_total", "net_out_bytes": "net_out_bytes_total",
    "net_in_packets": "net_in_packets_total", "net_out_packets": "net_out_packets_total",
}


class LatestUsage(NamedTuple):
    """The latest run in ``partition_usage``: its stamp and its rows by partition."""

    stamp: Stamp | None
    rows: dict[str, sqlite3.Row]


def number(value: Any) -> float | None:
    """A finite float from a store value (disk sizes are stored as text)."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if result == result and result not in (float("inf"), float("-inf")) else None


def open_store(data_dir: Path) -> Store | None:
    """A read-only connection to the data dir's store, or None when there is none yet."""
    path = Path(data_dir) / DB_NAME
    if not path.is_file():
        return None
    return Store(path, readonly=True, timeout=5.0)


def measured_totals(store: Store, latest: dict[str, sqlite3.Row]) -> dict[str, dict[str, float]]:
    """``partition -> {column: running sum}`` of ``store.COUNTERS`` since the store
    began (they only go up), for every partition ever counted. A figure is left
    out when its sum never grew and the latest run (``latest``: its
    ``partition_usage`` rows by partition) did not measure it: a sum of NULLs
    is "not measured", not a 0."""
    totals: dict[str, dict[str, float]] = {}
    for part, row in store.partition_counters().items():
        last = latest.get(part)
        figures = {column: float(row[column]) for column in COUNTERS
                   if row[column] > 0 or (last is not None and last[column] is not None)}
        if figures:
            totals[part] = figures
    return totals


def partition_counters(store: Store, latest: dict[str, sqlite3.Row]) -> dict[str, dict[str, float]]:
    """``partition -> {counter key: running sum}`` (``COUNTER_KEYS``' keys) of every
    partition the store ever counted, a figure never measured left out."""
    return {part: {COUNTER_KEYS[column]: value for column, value in sums.items()}
            for part, sums in measured_totals(store, latest).items()}


def latest_usage(store: Store) -> LatestUsage:
    """The latest run in ``partition_usage`` (none in a store of an older version,
    not yet upgraded by the collector)."""
    stamp = store.latest_stamp("partition_usage") if store.has_table("partition_usage") else None
    return LatestUsage(stamp, {row["partition"]: row for row in store.rows_at("partition_usage", *stamp)}
                       if stamp else {})


def current_partitions(store: Store, usage: LatestUsage | None = None,
                       counters: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """The partitions' consumption in the latest run (``partition_usage``), with the
    running counters, threads (``user`` rows of that run), the share of the
    machine's memory and the folder size (dashboard table, metrics). ``usage``
    and ``counters``: what ``latest_usage`` and ``partition_counters`` gave, when
    the caller already read them."""
    stamp, latest = usage if usage is not None else latest_usage(store)
    if counters is None:
        counters = partition_counters(store, latest)
    threads = {sums.partition: sums.cpu_num_threads for sums in store.partition_totals(*stamp)} if stamp else {}
    computers = store.latest_rows("computer")
    machine = number(computers[0]["memory_size"]) if computers else None
    partitions: dict[str, dict[str, Any]] = {}
    for part, row in latest.items():
        figures = {key: row[column] for column, key in USAGE_KEYS.items()}
        figures["threads"] = threads.get(part, 0.0)
        used = number(row["memory_used"] if row["memory_used"] is not None else row["memory_rss"])
        figures["memory_percent"] = 100.0 * used / machine if used is not None and machine else None
        partitions[part] = figures
    for part, totals in counters.items():
        if part in partitions:
            partitions[part].update(totals)
    for part, kib in store.latest_folder_sizes().items():
        size = number(kib)
        if size is not None:
            partitions.setdefault(part, {})["folder_bytes"] = size * 1024
    return {
        "date": stamp.date if stamp else None,
        "time": stamp.time if stamp else None,
        "partitions": [{"partition": name, **figures} for name, figures in sorted(partitions.items())],
    }
