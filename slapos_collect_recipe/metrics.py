"""Prometheus exposition of the store, built when scraped (``/<secret>/metrics``).

A custom collector reads the latest run from ``collector.db`` on every scrape
and keeps nothing between scrapes: Prometheus sees exactly what the store holds.
System figures use node_exporter's names (so existing dashboards and alerts
apply); partitions get ``slapos_partition_*`` families labelled by partition:
gauges from the latest ``partition_usage`` run, counters from the store's
running sums of it (``partition_counters``), which only go up: both read by
``latest``, which the dashboard's ``/api/partitions`` serves too.
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

from .datafiles import BENCH_STATUS
from .latest import COUNTER_KEYS, current_partitions, latest_usage, open_store, partition_counters
from .latest import number as _number
from .store import Store

log = logging.getLogger("slapos_collect")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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


# store.COUNTERS column -> (metric family, help) of the running sums since the store began,
# which only go up (the values: latest.partition_counters, by latest.COUNTER_KEYS).
COUNTER_FAMILIES = {
    "cpu_time": ("slapos_partition_cpu_seconds",
                 "CPU time (user + system) of the partition's processes, ended ones included"),
    "io_rw_counter": ("slapos_partition_io_bytes",
                      "Bytes read and written by the partition's processes, ended ones included"),
    "io_cycles_counter": ("slapos_partition_io_ops",
                          "Read and write operations of the partition's processes, ended ones included"),
    "ended": ("slapos_partition_ended_processes", "Processes of the partition known to have ended"),
    "net_in_bytes": ("slapos_partition_network_receive_bytes", "IP bytes (headers included) received by the partition"),
    "net_out_bytes": ("slapos_partition_network_transmit_bytes", "IP bytes (headers included) sent by the partition"),
    "net_in_packets": ("slapos_partition_network_receive_packets", "IP packets received by the partition"),
    "net_out_packets": ("slapos_partition_network_transmit_packets", "IP packets sent by the partition"),
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
        counters = partition_counters(store, usage.rows)
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
        for column, (name, help_text) in COUNTER_FAMILIES.items():
            key = COUNTER_KEYS[column]
            yield from _labelled(CounterMetricFamily(name, help_text, labels=["partition"]),
                                 ((part, figures.get(key)) for part, figures in sorted(counters.items())))

    def _benchmarks(self, store: Store) -> Iterator[Metric]:
        runs = sorted(store.benchmark_latest_runs().items())
        if not runs:
            return
        family = GaugeMetricFamily("slapos_benchmark_value", "Latest result of each machine benchmark",
                                   labels=["name", "unit"])
        spread = GaugeMetricFamily("slapos_benchmark_spread_percent",
                                   "Spread of the latest result's repeats (median absolute deviation over the median)",
                                   labels=["name"])
        for name, run in runs:
            number = _number(run.value)
            if number is None:
                continue
            name = str(name)
            if name.endswith("_spread"):
                spread.add_metric([name.removesuffix("_spread")], number)
            else:
                family.add_metric([name, str(run.unit or "")], number)
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
        for row in rows:
            number = _number(row.temperature)
            if number is None:
                continue
            chip, _, sensor = str(row.sensor_id).partition("/")
            family.add_metric([chip, sensor], number)
            alarm.add_metric([chip, sensor], 1.0 if row.alarm else 0.0)
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
