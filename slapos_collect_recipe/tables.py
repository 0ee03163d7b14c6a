"""The tables of ``collector.db`` and the named rows the store's queries return.

Data only, importing nothing of the package: ``store`` builds its schema and
its SQL from ``TABLES`` (it alone speaks SQL); ``snapshot`` builds each
sample's row from the same column names, so a sample, its column and what a
query returns carry one name per figure. The tables ``user``, ``computer``,
``system`` and ``disk`` are a contract (the original design note's columns,
in that order; the SlapOS clients read them); the others are ours.
"""

from __future__ import annotations

from typing import NamedTuple

# table -> its own columns (name, type), in order; STAMP columns follow.
TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "user": (
        ("partition", "text"),
        ("pid", "real"),
        ("process", "text"),
        ("cpu_percent", "real"),
        ("cpu_time", "real"),
        ("cpu_num_threads", "real"),
        ("memory_percent", "real"),
        ("memory_rss", "real"),
        ("io_rw_counter", "real"),
        ("io_cycles_counter", "real"),
    ),
    "folder": (
        ("partition", "text"),
        ("disk_used", "real"),
    ),
    "computer": (
        ("cpu_num_core", "real"),
        ("cpu_frequency", "real"),
        ("cpu_type", "text"),
        ("memory_size", "real"),
        ("memory_type", "text"),
        ("partition_list", "text"),
    ),
    "system": (
        ("loadavg", "real"),
        ("cpu_percent", "real"),
        ("memory_used", "real"),
        ("memory_free", "real"),
        ("net_in_bytes", "real"),
        ("net_in_errors", "real"),
        ("net_in_dropped", "real"),
        ("net_out_bytes", "real"),
        ("net_out_errors", "real"),
        ("net_out_dropped", "real"),
    ),
    "disk": (
        ("partition", "text"),
        ("used", "text"),
        ("free", "text"),
        ("mountpoint", "text"),
    ),
    # Per-disk IO counters (cumulative since boot), which the original drops.
    "disk_io": (
        ("device", "text"),
        ("read_bytes", "real"),
        ("write_bytes", "real"),
        ("read_count", "real"),
        ("write_count", "real"),
        ("busy_time", "real"),
    ),
    # What each partition consumed since the previous run (snapshot.PartitionUsage),
    # processes that ended in between included; ``source`` names the mechanism.
    "partition_usage": (
        ("partition", "text"),
        ("cpu_time", "real"),
        ("cpu_percent", "real"),
        ("processes", "integer"),
        ("ended", "integer"),
        ("memory_rss", "real"),
        ("io_rw_counter", "real"),
        ("io_cycles_counter", "real"),
        ("source", "text"),
        ("memory_used", "real"),
        ("memory_source", "text"),
        ("net_in_bytes", "real"),
        ("net_out_bytes", "real"),
        ("net_in_packets", "real"),
        ("net_out_packets", "real"),
        ("net_source", "text"),
    ),
    # Machine degradation benchmarks (one row per figure).
    "benchmark": (
        ("name", "text"),
        ("value", "real"),
        ("unit", "text"),
    ),
    # The original's sensor tables, which its readers query (the journal reads
    # heating.zero_emission_ratio): one row per temperature sensor per run
    # (alarm 1 when above the sensor's high or critical mark); heating stays
    # empty (the original's heating test is a separate experiment).
    "temperature": (
        ("sensor_id", "text"),
        ("temperature", "real"),
        ("alarm", "integer"),
    ),
    "heating": (
        ("model_id", "text"),
        ("sensor_id", "text"),
        ("initial_temperature", "real"),
        ("final_temperature", "real"),
        ("delta_time", "real"),
        ("zero_emission_ratio", "real"),
    ),
}
STAMP = (("date", "text"), ("time", "text"), ("reported", "integer default 0"))
# The running sums of partition_usage behind the /metrics counters: kept in
# their own table (never dumped nor garbage-collected), so they only go up.
COUNTERS = ("cpu_time", "io_rw_counter", "io_cycles_counter", "ended",
            "net_in_bytes", "net_out_bytes", "net_in_packets", "net_out_packets")


def columns(table: str) -> list[str]:
    """Every column of ``table``, in order, stamp columns included."""
    return [name for name, _ in TABLES[table] + STAMP]


# -- what the store's queries return (one named row per query) ---------------

class Stamp(NamedTuple):
    """One run's UTC stamp, as every row carries it."""

    date: str
    time: str


class RowidRange(NamedTuple):
    """Lowest and highest rowid of a day's unreported rows in one table."""

    low: int
    high: int


class BenchmarkRun(NamedTuple):
    """A benchmark figure's latest row."""

    value: float
    unit: str
    date: str
    time: str


class Temperature(NamedTuple):
    """One sensor's row of a run (``temperature``)."""

    sensor_id: str
    temperature: float
    alarm: int


class PartitionTotals(NamedTuple):
    """Sums over one partition's ``user`` rows of one run (``processes``: how many rows)."""

    partition: str
    processes: int
    cpu_num_threads: float
    cpu_percent: float
    cpu_time: float
    memory_percent: float
    memory_rss: float
    io_rw_counter: float
    io_cycles_counter: float


class ProcessRow(NamedTuple):
    """One process of one run (``user``), without its partition and stamp."""

    pid: float
    process: str
    cpu_percent: float
    cpu_time: float
    cpu_num_threads: float
    memory_percent: float
    memory_rss: float
    io_rw_counter: float | None
    io_cycles_counter: float | None


class SystemDay(NamedTuple):
    """A day's ``system`` rows: how many, and their averages (None without rows)."""

    runs: int
    cpu_percent: float | None
    memory_used: float | None


class PartitionDay(NamedTuple):
    """Sums over one partition's rows of a day."""

    cpu_percent: float
    memory_rss: float


class UsageDaySums(NamedTuple):
    """One partition's sums over a day's ``partition_usage`` rows (see ``UsageDay``)."""

    partition: str
    cpu_percent: float
    memory_used: float
    memory_used_rows: int


class UsageDay(NamedTuple):
    """A day in ``partition_usage``: its runs (distinct stamps) and, by partition, the sums
    of ``cpu_percent`` and ``memory_used`` (its ``memory_rss`` where NULL;
    ``memory_used_rows``: the rows that had either)."""

    runs: int
    partitions: dict[str, UsageDaySums]
