"""What one collection run saw: plain dataclasses, free of psutil and SQL.

Each ``row()`` gives the values in the order of the table's own columns in
``store.TABLES`` (the stamp columns are added by the store).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ProcessSample:
    partition: str
    pid: int
    create_time: float
    cpu_percent: float
    cpu_time: float
    num_threads: int
    memory_percent: float
    memory_rss: int
    io_rw_bytes: int | None
    io_ops: int | None

    @property
    def process(self) -> str:
        """The identity stored in ``user.process``: pid and creation time, never a name."""
        return f"{self.pid}-{self.create_time:.2f}"

    def row(self) -> tuple:
        return (
            self.partition, self.pid, self.process, self.cpu_percent, self.cpu_time, self.num_threads,
            self.memory_percent, self.memory_rss, self.io_rw_bytes, self.io_ops,
        )


@dataclass
class SystemSample:
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

    def row(self) -> tuple:
        return (
            self.loadavg, self.cpu_percent, self.memory_used, self.memory_free,
            self.net_in_bytes, self.net_in_errors, self.net_in_dropped,
            self.net_out_bytes, self.net_out_errors, self.net_out_dropped,
        )


@dataclass
class ComputerSample:
    cpu_num_core: int
    cpu_frequency: float | None
    cpu_type: str
    memory_size: int
    memory_type: str
    partition_list: str

    def row(self) -> tuple:
        return (
            self.cpu_num_core, self.cpu_frequency, self.cpu_type,
            self.memory_size, self.memory_type, self.partition_list,
        )


@dataclass
class DiskSample:
    device: str
    used: int
    free: int
    total: int
    mountpoints: list[str]

    def row(self) -> tuple:
        # The contract's columns are text: store the byte counts as decimal text.
        return (self.device, str(self.used), str(self.free), ";".join(self.mountpoints))


@dataclass
class DiskIOSample:
    device: str
    read_bytes: int
    write_bytes: int
    read_count: int
    write_count: int
    busy_time: int

    def row(self) -> tuple:
        return (self.device, self.read_bytes, self.write_bytes, self.read_count, self.write_count, self.busy_time)


@dataclass
class PartitionUsage:
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

    def row(self) -> tuple:
        return (
            self.partition, self.cpu_time, self.cpu_percent, self.processes, self.ended, self.memory_rss,
            self.io_rw_counter, self.io_cycles_counter, self.source, self.memory_used, self.memory_source,
            self.net_in_bytes, self.net_out_bytes, self.net_in_packets, self.net_out_packets, self.net_source,
        )


@dataclass
class TemperatureSample:
    """One temperature sensor the kernel exposes (hwmon, or a thermal zone).

    ``sensor_id`` is ``<chip>/<sensor>``: the chip's hwmon name (or the
    thermal zone's type) and the sensor's label, ``temp<N>`` when it has none,
    ``#2``, ``#3`` after a label met again on a chip of the same name.
    ``alarm`` when the reading is above the sensor's high or critical mark."""

    chip: str
    sensor: str
    temperature: float
    high: float | None
    critical: float | None
    alarm: bool

    @property
    def sensor_id(self) -> str:
        return f"{self.chip}/{self.sensor}"

    def row(self) -> tuple:
        return (self.sensor_id, self.temperature, int(self.alarm))


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
