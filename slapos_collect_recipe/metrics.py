"""Prometheus exposition of the store, built when scraped (``/<secret>/metrics``).

A custom collector reads the latest run from ``collector.db`` on every scrape
and keeps nothing between scrapes: Prometheus sees exactly what the store holds.
System figures use node_exporter's names (so existing dashboards and alerts
apply); partitions get ``slapos_partition_*`` families labelled by partition:
gauges from the latest ``partition_usage`` run, counters from the store's
running sums of it (``partition_counters``), which only go up.
Base units throughout (bytes, seconds); no pid labels (unbounded cardinality).
"""

from __future__ import annotations

import calendar
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .datafiles import BENCH_STATUS, DB_NAME
from .report import measured_totals
from .store import Store

log = logging.getLogger("slapos_collect")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _number(value: Any) -> float | None:
    """A finite float from a store value (disk sizes are stored as text)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and number not in (float("inf"), float("-inf")) else None


def _labelled(family: Metric, values: Iterable[tuple[str, Any]]) -> Iterator[Metric]:
    """``family`` with one sample per ``(partition, value)`` that has a value; nothing
    when none has (an unmeasured figure is left out, never a 0)."""
    for label, value in values:
        number = _number(value)
        if number is not None:
            family.add_metric([label], number)
    if family.samples:
        yield family


def _stamp_seconds(date: str, time_: str) -> float | None:
    try:
        return float(calendar.timegm(time.strptime(f"{date} {time_}", "%Y-%m-%d %H:%M:%S")))
    except (TypeError, ValueError):
        return None


def open_store(data_dir: Path) -> Store | None:
    """A read-only connection to the data dir's store, or None when there is none yet."""
    path = Path(data_dir) / DB_NAME
    if not path.is_file():
        return None
    return Store(path, readonly=True, timeout=5.0)


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
# store.COUNTERS column -> (current_partitions key, metric family, help): the running sums
# since the store began, which only go up.
COUNTER_FAMILIES = {
    "cpu_time": ("cpu_seconds_total", "slapos_partition_cpu_seconds",
                 "CPU time (user + system) of the partition's processes, ended ones included"),
    "io_rw_counter": ("io_bytes_total", "slapos_partition_io_bytes",
                      "Bytes read and written by the partition's processes, ended ones included"),
    "io_cycles_counter": ("io_ops_total", "slapos_partition_io_ops",
                          "Read and write operations of the partition's processes, ended ones included"),
    "ended": ("ended_total", "slapos_partition_ended_processes",
              "Processes of the partition known to have ended"),
    "net_in_bytes": ("net_in_bytes_total", "slapos_partition_network_receive_bytes",
                     "IP bytes (headers included) received by the partition"),
    "net_out_bytes": ("net_out_bytes_total", "slapos_partition_network_transmit_bytes",
                      "IP bytes (headers included) sent by the partition"),
    "net_in_packets": ("net_in_packets_total", "slapos_partition_network_receive_packets",
                       "IP packets received by the partition"),
    "net_out_packets": ("net_out_packets_total", "slapos_partition_network_transmit_packets",
                        "IP packets sent by the partition"),
}


def partition_counters(store: Store, latest: dict[str, sqlite3.Row]) -> dict[str, dict[str, float]]:
    """``partition -> {counter key: running sum}`` (``COUNTER_FAMILIES``' keys) of every
    partition the store ever counted, a figure never measured left out."""
    return {part: {COUNTER_FAMILIES[column][0]: value for column, value in sums.items()}
            for part, sums in measured_totals(store, latest).items()}


def latest_usage(store: Store) -> tuple[tuple[str, str] | None, dict[str, sqlite3.Row]]:
    """The stamp of the latest run in ``partition_usage`` and its rows by partition
    (none in a store of an older version, not yet upgraded by the collector)."""
    stamp = store.latest_stamp("partition_usage") if store.has_table("partition_usage") else None
    return stamp, {row["partition"]: row for row in store.rows_at("partition_usage", *stamp)} if stamp else {}


def current_partitions(store: Store, usage: tuple[tuple[str, str] | None, dict[str, sqlite3.Row]] | None = None,
                       counters: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """The partitions' consumption in the latest run (``partition_usage``), with the
    running counters, threads (``user`` rows of that run), the share of the
    machine's memory and the folder size (dashboard table, metrics). ``usage``
    and ``counters``: what ``latest_usage`` and ``partition_counters`` gave, when
    the caller already read them."""
    stamp, latest = usage if usage is not None else latest_usage(store)
    if counters is None:
        counters = partition_counters(store, latest)
    threads = {row["partition"]: row["threads"] for row in store.partition_totals(*stamp)} if stamp else {}
    computers = store.latest_rows("computer")
    machine = _number(computers[0]["memory_size"]) if computers else None
    partitions: dict[str, dict[str, Any]] = {}
    for part, row in latest.items():
        figures = {key: row[column] for column, key in USAGE_KEYS.items()}
        figures["threads"] = threads.get(part, 0.0)
        used = _number(row["memory_used"] if row["memory_used"] is not None else row["memory_rss"])
        figures["memory_percent"] = 100.0 * used / machine if used is not None and machine else None
        partitions[part] = figures
    for part, totals in counters.items():
        if part in partitions:
            partitions[part].update(totals)
    for part, kib in store.latest_folder_sizes().items():
        size = _number(kib)
        if size is not None:
            partitions.setdefault(part, {})["folder_bytes"] = size * 1024
    return {
        "date": stamp[0] if stamp else None,
        "time": stamp[1] if stamp else None,
        "partitions": [{"partition": name, **figures} for name, figures in sorted(partitions.items())],
    }


def read_benchmark_status(data_dir: Path) -> dict[str, Any] | None:
    """``benchmark_status.json`` as written by ``bench``, or None when absent or unreadable."""
    path = Path(data_dir) / BENCH_STATUS
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None
    return status if isinstance(status, dict) else None


class StoreCollector:
    """prometheus_client custom collector: one read of the store per scrape."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)

    def collect(self) -> Iterator[Metric]:
        try:
            store = open_store(self.data_dir)
        except sqlite3.Error as exc:
            log.warning("metrics: cannot open the store: %s", exc)
            store = None
        if store is not None:
            try:
                yield from self._from_store(store)
            except sqlite3.Error as exc:
                log.warning("metrics: cannot read the store: %s", exc)
            finally:
                store.close()
        yield from self._from_status()

    # -- the store ---------------------------------------------------------

    def _from_store(self, store: Store) -> Iterator[Metric]:
        yield from self._system(store)
        yield from self._machine(store)
        yield from self._disks(store)
        yield from self._partitions(store)
        yield from self._benchmarks(store)
        yield from self._temperatures(store)

    def _system(self, store: Store) -> Iterator[Metric]:
        rows = store.latest_rows("system")
        if not rows:
            return
        row = rows[0]
        stamp = _stamp_seconds(row["date"], row["time"])
        if stamp is not None:
            yield GaugeMetricFamily(
                "slapos_collect_last_run_timestamp_seconds",
                "When the collector's latest run was stamped (Unix time, UTC)", value=stamp)
        Gauge, Counter = GaugeMetricFamily, CounterMetricFamily
        families = (
            (Gauge, "node_load1", "1m load average", "loadavg"),
            (Gauge, "node_cpu_busy_percent", "Machine CPU busy percentage (100 - idle) at the latest run",
             "cpu_percent"),
            (Gauge, "node_memory_used_bytes", "Memory used (total - available)", "memory_used"),
            (Gauge, "node_memory_MemAvailable_bytes", "Memory available", "memory_free"),
            (Counter, "node_network_receive_bytes", "Bytes received, all interfaces", "net_in_bytes"),
            (Counter, "node_network_transmit_bytes", "Bytes sent, all interfaces", "net_out_bytes"),
            (Counter, "node_network_receive_errs", "Receive errors, all interfaces", "net_in_errors"),
            (Counter, "node_network_transmit_errs", "Transmit errors, all interfaces", "net_out_errors"),
            (Counter, "node_network_receive_drop", "Received packets dropped, all interfaces", "net_in_dropped"),
            (Counter, "node_network_transmit_drop", "Outgoing packets dropped, all interfaces", "net_out_dropped"),
        )
        for family, name, help_text, column in families:
            value = _number(row[column])
            if value is not None:
                yield family(name, help_text, value=value)

    def _machine(self, store: Store) -> Iterator[Metric]:
        rows = store.latest_rows("computer")
        if not rows:
            return
        row = rows[0]
        total = _number(row["memory_size"])
        if total is not None:
            yield GaugeMetricFamily("node_memory_MemTotal_bytes", "Memory installed", value=total)
        cores = _number(row["cpu_num_core"])
        if cores is not None:
            yield GaugeMetricFamily("slapos_machine_cpu_cores", "CPU cores of the machine", value=cores)

    def _disks(self, store: Store) -> Iterator[Metric]:
        size = GaugeMetricFamily("node_filesystem_size_bytes", "Filesystem size (used + free)",
                                 labels=["device", "mountpoint"])
        avail = GaugeMetricFamily("node_filesystem_avail_bytes", "Filesystem space available",
                                  labels=["device", "mountpoint"])
        seen = False
        for row in store.latest_rows("disk"):
            used, free = _number(row["used"]), _number(row["free"])
            if used is None or free is None:
                continue
            labels = [str(row["partition"]), str(row["mountpoint"] or "")]
            size.add_metric(labels, used + free)
            avail.add_metric(labels, free)
            seen = True
        if seen:
            yield size
            yield avail
        io_rows = store.latest_rows("disk_io")
        if not io_rows:
            return
        families = (
            ("node_disk_read_bytes", "Bytes read", "read_bytes", 1.0),
            ("node_disk_written_bytes", "Bytes written", "write_bytes", 1.0),
            ("node_disk_reads_completed", "Reads completed", "read_count", 1.0),
            ("node_disk_writes_completed", "Writes completed", "write_count", 1.0),
            ("node_disk_io_time_seconds", "Time spent doing IO", "busy_time", 0.001),
        )
        for name, help_text, column, scale in families:
            family = CounterMetricFamily(name, help_text, labels=["device"])
            for row in io_rows:
                value = _number(row[column])
                if value is not None:
                    family.add_metric([str(row["device"])], value * scale)
            yield family

    def _partitions(self, store: Store) -> Iterator[Metric]:
        usage = latest_usage(store)
        counters = partition_counters(store, usage[1])
        current = current_partitions(store, usage, counters)["partitions"]
        specs = (
            ("slapos_partition_cpu_percent",
             "CPU percentage of the partition over the latest interval (100 = one core)", "cpu_percent"),
            ("slapos_partition_memory_bytes",
             "Memory of the partition, nothing counted twice (cgroup or PSS, see memory_source)",
             "memory_used_bytes"),
            ("slapos_partition_resident_bytes", "Resident memory of the partition's processes (RSS sum)",
             "resident_bytes"),
            ("slapos_partition_memory_percent", "Share of the machine's memory used by the partition",
             "memory_percent"),
            ("slapos_partition_processes", "Processes of the partition", "processes"),
            ("slapos_partition_threads", "Threads of the partition's processes", "threads"),
            ("slapos_partition_folder_bytes", "Disk space used by the partition's folder (latest measure)",
             "folder_bytes"),
        )
        for name, help_text, key in specs:
            yield from _labelled(GaugeMetricFamily(name, help_text, labels=["partition"]),
                                 ((part["partition"], part.get(key)) for part in current))
        for key, name, help_text in COUNTER_FAMILIES.values():
            yield from _labelled(CounterMetricFamily(name, help_text, labels=["partition"]),
                                 ((part, figures.get(key)) for part, figures in sorted(counters.items())))

    def _benchmarks(self, store: Store) -> Iterator[Metric]:
        rows = [(name, value, unit) for name, (value, unit, _, _) in sorted(store.benchmark_latest_runs().items())]
        if not rows:
            return
        family = GaugeMetricFamily("slapos_benchmark_value", "Latest result of each machine benchmark",
                                   labels=["name", "unit"])
        spread = GaugeMetricFamily("slapos_benchmark_spread_percent",
                                   "Spread of the latest result's repeats (median absolute deviation over the median)",
                                   labels=["name"])
        for name, value, unit in rows:
            number = _number(value)
            if number is None:
                continue
            name = str(name)
            if name.endswith("_spread"):
                spread.add_metric([name.removesuffix("_spread")], number)
            else:
                family.add_metric([name, str(unit or "")], number)
        yield family
        if spread.samples:
            yield spread

    def _temperatures(self, store: Store) -> Iterator[Metric]:
        """node_exporter's hwmon family, from the latest run with temperatures:
        ``chip`` is the hwmon name (or thermal zone type), ``sensor`` the label
        (``temp<N>`` without one). Nothing on a machine without sensors."""
        rows = store.latest_temperatures()
        if not rows:
            return
        family = GaugeMetricFamily("node_hwmon_temp_celsius", "Hardware monitor for temperature (input)",
                                   labels=["chip", "sensor"])
        alarm = GaugeMetricFamily("node_hwmon_temp_alarm", "1 when the temperature is above the sensor's "
                                  "high or critical mark", labels=["chip", "sensor"])
        for sensor_id, value, above in rows:
            number = _number(value)
            if number is None:
                continue
            chip, _, sensor = str(sensor_id).partition("/")
            family.add_metric([chip, sensor], number)
            alarm.add_metric([chip, sensor], 1.0 if above else 0.0)
        yield family
        yield alarm

    # -- benchmark_status.json -----------------------------------------------

    def _from_status(self) -> Iterator[Metric]:
        status = read_benchmark_status(self.data_dir)
        if status is None:
            return
        if "degraded" in status:
            yield GaugeMetricFamily("slapos_machine_degraded",
                                    "1 when a benchmark fell below its threshold of the baseline",
                                    value=1.0 if status.get("degraded") else 0.0)
        benchmarks = status.get("benchmarks")
        if not isinstance(benchmarks, dict) or not benchmarks:
            return
        degraded = GaugeMetricFamily("slapos_benchmark_degraded", "1 when this benchmark is degraded",
                                     labels=["name"])
        ratio = GaugeMetricFamily("slapos_benchmark_ratio",
                                  "Latest result relative to the baseline: 1 is as good, below 1 is worse "
                                  "(value over baseline; baseline over value for latencies)",
                                  labels=["name"])
        for name, entry in sorted(benchmarks.items()):
            if not isinstance(entry, dict):
                continue
            degraded.add_metric([str(name)], 1.0 if entry.get("degraded") else 0.0)
            value = _number(entry.get("ratio"))
            if value is not None:
                ratio.add_metric([str(name)], value)
        yield degraded
        yield ratio


class ConnectionsCollector:
    """The slapmonitor's own connections, read from the server's counters when scraped.

    ``figures`` returns ``{"connections", "max", "dropped": {reason: n}, "cap_hits",
    "shortages"}`` (see connections.Gate.figures); it is called from the scrape's thread."""

    def __init__(self, figures: Callable[[], dict[str, Any]]) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        figures = self.figures()
        yield GaugeMetricFamily("slapmonitor_connections", "Connections open now (any phase)",
                                value=figures["connections"])
        yield GaugeMetricFamily("slapmonitor_connections_max", "The cap on connections at once",
                                value=figures["max"])
        dropped = CounterMetricFamily(
            "slapmonitor_connections_dropped",
            "Connections the server closed before they completed a request, or refused, by reason "
            "(header_timeout, idle_timeout, handshake_timeout, send_timeout: too slow; full, per_address, "
            "descriptors: dropped to make room; refused: no room)",
            labels=["reason"])
        for reason, count in figures["dropped"].items():
            dropped.add_metric([reason], count)
        yield dropped
        yield CounterMetricFamily("slapmonitor_per_address_cap_hits",
                                  "New connections that found their address at its cap", value=figures["cap_hits"])
        yield CounterMetricFamily("slapmonitor_descriptor_shortages",
                                  "Accepts that failed for lack of descriptors (accepting then pauses)",
                                  value=figures["shortages"])


def build_registry(data_dir: Path) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(data_dir))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition (blocking: run it in a thread)."""
    return generate_latest(registry)
