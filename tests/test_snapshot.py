"""The samples' rows: every column of a table is the attribute of that name of its sample."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from slapos_collect_recipe import snapshot
from slapos_collect_recipe.store import Store
from slapos_collect_recipe.tables import TABLES

SAMPLES = {
    snapshot.ProcessSample: snapshot.ProcessSample("p", 12, 1700000000.5, 1.5, 2.25, 3, 0.5, 4096, 100, 7),
    snapshot.SystemSample: snapshot.SystemSample(0.5, 12.5, 1000, 2000, 10, 1, 2, 20, 3, 4),
    snapshot.ComputerSample: snapshot.ComputerSample(2, 2400.0, "Fixture CPU", 1 << 30, "", "/dev/vda1=100"),
    snapshot.DiskSample: snapshot.DiskSample("/dev/vda1", 60, 40, 100, ["/", "/srv"]),
    snapshot.DiskIOSample: snapshot.DiskIOSample("vda", 1, 2, 3, 4, 5),
    snapshot.FolderSample: snapshot.FolderSample("p", 2048),
    snapshot.PartitionUsage: snapshot.PartitionUsage("p", 1.0, 1.7, 2, 1, 4096, None, None, "children",
                                                     memory_used=2048, memory_source="pss"),
    snapshot.TemperatureSample: snapshot.TemperatureSample("coretemp", "Core 0", 45.0, 80.0, 100.0, False),
}
# The fields a sample keeps without storing them (derived columns are properties of these).
NOT_STORED = {
    snapshot.ProcessSample: {"create_time"},  # in ``process``
    snapshot.DiskSample: {"total", "mountpoints"},  # total in computer.partition_list; mountpoints in ``mountpoint``
    snapshot.TemperatureSample: {"chip", "sensor", "high", "critical"},  # chip and sensor in ``sensor_id``
}


def _columns(table: str) -> list[str]:
    return [name for name, _ in TABLES[table]]


def test_every_table_of_a_sample_has_its_sample_attributes() -> None:
    # Every table a run or the folder walk writes (benchmark: bench.py's rows; heating: always empty).
    assert {cls.TABLE for cls in SAMPLES} == set(TABLES) - {"benchmark", "heating"}
    for cls in SAMPLES:
        fields = [f.name for f in dataclasses.fields(cls)]
        derived = {name for name in dir(cls) if isinstance(getattr(cls, name), property)}
        columns = _columns(cls.TABLE)
        assert set(columns) <= set(fields) | derived, cls
        # A field is a column, or listed here as kept without being stored: nothing drifts unseen.
        assert set(fields) - set(columns) == NOT_STORED.get(cls, set()), cls
        # Columns that are fields come in the table's order.
        assert [name for name in fields if name in columns] == [name for name in columns if name in fields], cls


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda cls: cls.__name__)
def test_a_row_is_stored_and_read_back_by_its_names(tmp_path: Path, cls: type) -> None:
    sample = SAMPLES[cls]
    with Store(tmp_path / "collector.db") as store, store.transaction():
        store.insert(cls.TABLE, [sample.row()], "2026-12-01", "00:00:00")
    db = sqlite3.connect(tmp_path / "collector.db")
    db.row_factory = sqlite3.Row
    (row,) = db.execute(f'SELECT * FROM "{cls.TABLE}"').fetchall()
    db.close()
    for name in _columns(cls.TABLE):
        value = getattr(sample, name)
        if cls is snapshot.DiskSample and name in ("used", "free"):
            value = str(value)  # the contract's columns are text, as the original stores them
        assert row[name] == value, name
    assert (row["date"], row["time"], row["reported"]) == ("2026-12-01", "00:00:00", 0)


def test_the_derived_columns() -> None:
    assert SAMPLES[snapshot.ProcessSample].process == "12-1700000000.50"
    assert SAMPLES[snapshot.DiskSample].row() == ("/dev/vda1", 60, 40, "/;/srv")
    assert SAMPLES[snapshot.TemperatureSample].row() == ("coretemp/Core 0", 45.0, 0)
