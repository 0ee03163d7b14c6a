"""What one collection run saw: plain dataclasses, free of psutil and SQL.

Each sample stored as a row of a table names its figures as the table's
columns (``tables.TABLES``): a field, or a property for a column derived from
fields (``ProcessSample.process``). ``row()`` gives the values of the table's
own columns in order (the stamp columns are added by the store), read by
those names: a column added to ``TABLES`` without its attribute fails at once
(``tests/test_snapshot.py`` checks every pair).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import attrgetter
from typing import ClassVar

from .tables import TABLES


class Row:
    """A sample stored as one row of ``TABLE`` (given as ``class X(Row, table=...)``)."""

    TABLE: ClassVar[str]
    _values: ClassVar[attrgetter]

    def __init_subclass__(cls, table: str, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.TABLE = table
        cls._values = attrgetter(*(name for name, _ in TABLES[table]))  # every table has several columns

    def row(self) -> tuple:
        """The values of the table's own columns, in order."""
        return self._values(self)


@dataclass
class ProcessSample(Row, table="user"):
    partition: str
    pid: int
    create_time: float
    cpu_percent: float
    cpu_time: float
    cpu_num_threads: int
    memory_percent: float
    memory_rss: int
    io_rw_counter: int | None  # bytes read + written; None where unknown (another user's, no IO accounting)
    io_cycles_counter: int | None  # read + write operations

    @property
    def process(self) -> str:
        """The identity stored in ``user.process``: pid and creation time, never a name."""
        return f"{self.pid}-{self.create_time:.2f}"


@dataclass
class SystemSample(Row, table="system"):
    loadavg: float
    cpu_percent: float
    memory_used: int
    memory_free: int
    net_in_bytes: int
    net_in_errors: int
    net_in_dropped: int
    net_out_bytes: int
    net_out_errors: int
    net_out_dropped: int


@dataclass
class ComputerSample(Row, table="computer"):
    cpu_num_core: int
    cpu_frequency: float | None
    cpu_type: str
    memory_size: int
    memory_type: str
    partition_list: str


@dataclass
class DiskSample(Row, table="disk"):
    """One mounted filesystem. The contract's ``used`` and ``free`` columns are
    text: SQLite's text affinity stores the byte counts as their decimal text."""

    partition: str  # the device (the contract's name for it)
    used: int
    free: int
    total: int
    mountpoints: list[str]

    @property
    def mountpoint(self) -> str:
        """Every mount point of the filesystem, ``;``-separated (column ``mountpoint``)."""
        return ";".join(self.mountpoints)


@dataclass
class DiskIOSample(Row, table="disk_io"):
    device: str
    read_bytes: int
    write_bytes: int
    read_count: int
    write_count: int
    busy_time: int


@dataclass
class PartitionUsage(Row, table="partition_usage"):
    """What one partition consumed since the previous run (``partition_usage``).

    ``cpu_time`` and the IO figures count processes that started and/or ended
    between the two runs too, as far as ``source`` (the mechanism) sees them.
    The memory and network figures are filled by their own samplers; None
    where not measured (a NULL in the table, never a false 0)."""

    partition: str
    cpu_time: float
    cpu_percent: float
    processes: int
    ended: int
    memory_rss: int
    io_rw_counter: int | None
    io_cycles_counter: int | None
    source: str
    memory_used: int | None = None
    memory_source: str | None = None
    net_in_bytes: int | None = None
    net_out_bytes: int | None = None
    net_in_packets: int | None = None
    net_out_packets: int | None = None
    net_source: str | None = None


@dataclass
class FolderSample(Row, table="folder"):
    """A partition folder's size, measured in the background (``folder``)."""

    partition: str
    disk_used: int  # KiB, like ``du -s``


@dataclass
class TemperatureSample(Row, table="temperature"):
    """One temperature sensor the kernel exposes (hwmon, or a thermal zone).

    ``sensor_id`` is ``<chip>/<sensor>``: the chip's hwmon name (or the
    thermal zone's type) and the sensor's label, ``temp<N>`` when it has none,
    ``#2``, ``#3`` after a label met again on a chip of the same name.
    ``alarm`` when the reading is above the sensor's high or critical mark
    (stored as 1 or 0: a bool is an int to SQLite)."""

    chip: str
    sensor: str
    temperature: float
    high: float | None
    critical: float | None
    alarm: bool

    @property
    def sensor_id(self) -> str:
        return f"{self.chip}/{self.sensor}"


@dataclass
class RunSnapshot:
    """Everything one run stores, under one UTC stamp."""

    date: str
    time: str
    epoch: float
    processes: list[ProcessSample]
    system: SystemSample
    computer: ComputerSample
    disks: list[DiskSample]
    disk_io: list[DiskIOSample]
    usage: list[PartitionUsage] = field(default_factory=list)
    temperatures: list[TemperatureSample] = field(default_factory=list)
    # What the next run needs to compute CPU % over the interval.
    cpu_state: dict = field(default_factory=dict)
    vanished: int = 0
    denied: int = 0
    # What each sampler keeps for the next run: collect_state key -> value, stored in the run's transaction.
    state: dict = field(default_factory=dict)
    # Bad input met while sampling (one line each): the run is stored, then the command fails with them.
    problems: list[str] = field(default_factory=list)
