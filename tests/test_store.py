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
