"""The store: partition_usage rows and the running counters behind /metrics."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from slapos_collect_recipe import store as store_mod
from slapos_collect_recipe.snapshot import PartitionUsage
from slapos_collect_recipe.store import Store


def usage(label: str, cpu: float, io: int | None, ended: int = 0, net_in: int | None = None) -> PartitionUsage:
    return PartitionUsage(partition=label, cpu_time=cpu, cpu_percent=cpu * 100 / 60, processes=3, ended=ended,
                          memory_rss=1 << 20, io_rw_counter=io, io_cycles_counter=io and io // 100,
                          source="children", net_in_bytes=net_in)


def test_usage_row_matches_the_table() -> None:
    names = [name for name, _ in store_mod.TABLES["partition_usage"]]
    assert names == [f.name for f in dataclasses.fields(PartitionUsage)]
    assert len(usage("a", 1.0, 10).row()) == len(names)


def test_counters_only_add_and_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "collector.db"
    with Store(path) as db, db.transaction():
        db.insert_usage([usage("a", 1.5, 1000, ended=2).row(), usage("b", 0.5, None).row()], "2026-01-01", "00:00:00")
    with Store(path) as db:
        with db.transaction():
            db.insert_usage([usage("a", 2.0, 500, net_in=40).row()], "2026-01-01", "00:01:00")
        counters = db.partition_counters()
        rows = db.db.execute("SELECT count(*) FROM partition_usage").fetchone()[0]
    assert rows == 3
    assert counters["a"]["cpu_time"] == 3.5
    assert counters["a"]["io_rw_counter"] == 1500
    assert counters["a"]["ended"] == 2
    assert counters["a"]["net_in_bytes"] == 40
    # Not measured (NULL) adds nothing; the partition still has its counters.
    assert counters["b"]["io_rw_counter"] == 0 and counters["b"]["cpu_time"] == 0.5


def test_counters_are_not_garbage_collected(tmp_path: Path) -> None:
    with Store(tmp_path / "collector.db") as db:
        with db.transaction():
            db.insert_usage([usage("a", 4.0, 10).row()], "2026-01-01", "00:00:00")
            db.mark_reported("2026-01-01", db.unreported_limits("2026-01-01"))
        assert db.delete_reported_before("2026-02-01") == 1
        assert db.partition_counters()["a"]["cpu_time"] == 4.0


def test_query_results_are_named_by_their_columns(tmp_path: Path) -> None:
    """What the store returns carries the columns' names (one name per figure), never a bare tuple."""
    from slapos_collect_recipe import tables
    from slapos_collect_recipe.snapshot import ProcessSample, SystemSample, TemperatureSample

    user = set(tables.columns("user"))
    assert set(tables.ProcessRow._fields) <= user
    assert set(tables.PartitionTotals._fields) - {"processes"} <= user
    assert set(tables.UsageDaySums._fields) - {"memory_used_rows"} <= set(tables.columns("partition_usage"))
    day = "2026-01-01"
    procs = [ProcessSample("a", 11, 100.0, 30.0, 240.0, 3, 2.0, 4096, 500, 5),
             ProcessSample("a", 12, 100.0, 10.0, 60.0, 1, 1.0, 1024, None, None)]
    with Store(tmp_path / "collector.db") as db:
        with db.transaction():
            db.insert("user", [p.row() for p in procs], day, "00:01:00")
            db.insert("system", [SystemSample(0.5, 40.0, 1000, 2000, 1, 0, 0, 1, 0, 0).row()], day, "00:01:00")
            db.insert("temperature", [TemperatureSample("c", "s", 41.5, None, None, True).row()], day, "00:01:00")
            db.insert("benchmark", [("cpu", 2.5, "s")], day, "00:01:00")
            db.insert_usage([usage("a", 1.5, 1000).row()], day, "00:01:00")
        stamp = db.latest_stamp("user")
        assert (stamp.date, stamp.time) == (day, "00:01:00")
        busiest, other = db.run_processes("a", *stamp)
        assert (busiest.pid, busiest.process, busiest.cpu_num_threads, busiest.io_rw_counter) == (11, "11-100.00", 3, 500)
        assert (other.io_rw_counter, other.io_cycles_counter) == (None, None)
        (totals,) = db.partition_totals(*stamp)
        assert (totals.partition, totals.processes, totals.cpu_num_threads, totals.memory_rss,
                totals.io_rw_counter) == ("a", 2, 4, 5120, 500)
        (sensor,) = db.latest_temperatures()
        assert (sensor.sensor_id, sensor.temperature, sensor.alarm) == ("c/s", 41.5, 1)
        run = db.benchmark_latest_runs()["cpu"]
        assert (run.value, run.unit, run.date, run.time) == (2.5, "s", day, "00:01:00")
        system = db.day_system_averages(day)
        assert (system.runs, system.cpu_percent, system.memory_used) == (1, 40.0, 1000)
        assert db.day_partition_sums(day)["a"] == (40.0, 5120)
        assert db.day_partition_sums(day)["a"].memory_rss == 5120
        used = db.day_usage_sums(day)
        assert used.runs == 1 and used.partitions["a"].memory_used == 1 << 20
        assert db.unreported_rowid_range("user", day) == (1, 2)
