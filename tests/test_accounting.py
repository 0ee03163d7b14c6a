"""Per-partition usage between runs (``partition_usage``): every mechanism against
the workload's own CPU time, with real processes of real users."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from conftest import run_cli


def _usage(data_dir: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(data_dir / "collector.db")
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT * FROM partition_usage ORDER BY rowid").fetchall()
    finally:
        db.close()


def test_every_partition_has_a_row_first_run_zero(data_dir: Path) -> None:
    """One row per configured partition at every run, zeros (not missing) for one
    without processes; the first run of a store counts no CPU."""
    for _ in range(2):
        run_cli("collect", "--data-dir", str(data_dir), "--user", "root", "--partition",
                f"empty={data_dir}/nothing-runs-here", check=True)
    rows = _usage(data_dir)
    assert [r["partition"] for r in rows] == ["root", "empty", "root", "empty"]
    assert rows[0]["cpu_time"] == 0 and rows[0]["cpu_percent"] == 0 and rows[0]["processes"] > 0
    empty = rows[3]
    assert (empty["cpu_time"], empty["processes"], empty["ended"], empty["memory_rss"]) == (0, 0, 0, 0)
    assert empty["io_rw_counter"] == 0 and empty["source"] == "children"
