"""Temperature sensors: psutil's readings into the ``temperature`` table, CSVs and /metrics;
and the process readings on a /proc of another kernel.

This machine (a VM) has no sensor, so the kernel's sysfs is the edge that
cannot exist here: the end-to-end test runs the real collector in a private
mount namespace whose /sys/class is a tmpfs laid out as the kernel lays out
hwmon chips and thermal zones (psutil reads exactly those files). Likewise a
kernel without IO accounting: a /proc tree written in tmp_path, given as
``proc_root``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from conftest import SCRIPTS, run_cli
from psutil._ntuples import shwtemp

from slapos_collect_recipe import metrics
from slapos_collect_recipe.sample import temperature_samples


def test_readings_become_samples_with_their_alarm() -> None:
    samples = temperature_samples({
        "coretemp": [shwtemp("Package id 0", 45.0, 80.0, 100.0), shwtemp("", 81.5, 80.0, 100.0)],
        "acpitz": [shwtemp("", 101.0, None, 100.0)],
        "nvme": [shwtemp("Composite", 40.0, 0.0, 0.0)],  # drivers say 0 for "no mark"
    })
    assert [(s.sensor_id, s.temperature, s.alarm) for s in samples] == [
        ("coretemp/Package id 0", 45.0, False),
        ("coretemp/temp2", 81.5, True),  # above high
        ("acpitz/temp1", 101.0, True),  # above critical
        ("nvme/Composite", 40.0, False),
    ]
    assert samples[1].row() == ("coretemp/temp2", 81.5, 1)


def test_a_machine_without_sensors_writes_and_logs_nothing(data_dir: Path) -> None:
    if psutil.sensors_temperatures():
        pytest.skip("this machine has temperature sensors")
    log = data_dir.parent / "collect.log"
    proc = run_cli("collect", "--data-dir", str(data_dir), "-v", "--log-file", str(log), check=True)
    assert proc.stderr == ""
    with sqlite3.connect(data_dir / "collector.db") as conn:
        assert conn.execute("SELECT count(*) FROM temperature").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM heating").fetchone()[0] == 0
    conn.close()
    # (without the test's own folder names, which hold this test's name: "..._without_sensors0/...")
    logged = log.read_text().replace(str(data_dir.parent), "").lower()
    assert "temperature" not in logged and "sensor" not in logged
    assert not list(data_dir.glob("temperature_*.csv"))
    assert b"node_hwmon" not in metrics.render(metrics.build_registry(data_dir))


# What the kernel lays out (millidegrees), relative to /sys/class.
HWMON = {
    "hwmon/hwmon0/name": "coretemp", "hwmon/hwmon0/temp1_input": "45000",
    "hwmon/hwmon0/temp1_label": "Package id 0", "hwmon/hwmon0/temp1_max": "80000",
    "hwmon/hwmon0/temp1_crit": "100000", "hwmon/hwmon0/temp2_input": "52500",
    "hwmon/hwmon1/name": "nvme", "hwmon/hwmon1/temp1_input": "90500", "hwmon/hwmon1/temp1_crit": "84850",
}
THERMAL = {
    "thermal/thermal_zone0/type": "x86_pkg_temp", "thermal/thermal_zone0/temp": "38000",
    "thermal/thermal_zone0/trip_point_0_type": "critical", "thermal/thermal_zone0/trip_point_0_temp": "105000",
}


# Two NVMe drives: two hwmon chips of one name, each with the label "Composite"
# (psutil merges chips of one name into one list).
TWO_DRIVES = {
    "hwmon/hwmon0/name": "nvme", "hwmon/hwmon0/temp1_input": "41000", "hwmon/hwmon0/temp1_label": "Composite",
    "hwmon/hwmon1/name": "nvme", "hwmon/hwmon1/temp1_input": "57000", "hwmon/hwmon1/temp1_label": "Composite",
}


def _collect_with_fake_sysfs(data_dir: Path, files: dict[str, str]) -> None:
    """One real collect run in a private mount namespace whose /sys/class holds ``files``."""
    layout = [f"mkdir -p {shlex.quote(str(Path('/sys/class', name).parent))} && "
              f"printf '%s\\n' {shlex.quote(text)} > {shlex.quote('/sys/class/' + name)}"
              for name, text in files.items()]
    script = "\n".join(["set -e", "mount -t tmpfs slapos-collect-test /sys/class", *layout,
                        f"exec {SCRIPTS / 'slapos-collect'} collect --data-dir {data_dir}"])
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def _stored(data_dir: Path, query: str) -> list[tuple]:
    with sqlite3.connect(data_dir / "collector.db") as conn:
        rows = conn.execute(query).fetchall()
    conn.close()
    return rows


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root for a mount namespace")
def test_every_sensor_is_stored_charted_and_exported(data_dir: Path) -> None:
    _collect_with_fake_sysfs(data_dir, HWMON)
    rows = _stored(data_dir, "SELECT sensor_id, temperature, alarm FROM temperature ORDER BY sensor_id")
    assert rows == [("coretemp/Package id 0", 45.0, 0), ("coretemp/temp2", 52.5, 0), ("nvme/temp1", 90.5, 1)]
    csv = (data_dir / "temperature_coretemp_Package_id_0.csv").read_text().splitlines()
    assert csv[0] == "time,entry" and csv[1].endswith(",45")
    assert (data_dir / "temperature_nvme_temp1.csv").read_text().splitlines()[1].endswith(",90.5")
    exposed = metrics.render(metrics.build_registry(data_dir)).decode()
    assert 'node_hwmon_temp_celsius{chip="coretemp",sensor="Package id 0"} 45.0' in exposed
    assert 'node_hwmon_temp_celsius{chip="nvme",sensor="temp1"} 90.5' in exposed
    assert 'node_hwmon_temp_alarm{chip="nvme",sensor="temp1"} 1.0' in exposed

    # No hwmon chip: the thermal zones (psutil reads them only then).
    time.sleep(1.1)  # a run of its own stamp (a run's stamp has whole seconds)
    _collect_with_fake_sysfs(data_dir, THERMAL)
    exposed = metrics.render(metrics.build_registry(data_dir)).decode()
    assert 'node_hwmon_temp_celsius{chip="x86_pkg_temp",sensor="temp1"} 38.0' in exposed
    assert 'node_hwmon_temp_alarm{chip="x86_pkg_temp",sensor="temp1"} 0.0' in exposed
    assert "coretemp" not in exposed  # only the latest run's sensors


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root for a mount namespace")
def test_sensors_of_one_name_and_label_are_kept_apart(data_dir: Path) -> None:
    _collect_with_fake_sysfs(data_dir, TWO_DRIVES)
    rows = _stored(data_dir, "SELECT sensor_id, temperature FROM temperature ORDER BY temperature")
    assert rows == [("nvme/Composite", 41.0), ("nvme/Composite#2", 57.0)]
    assert (data_dir / "temperature_nvme_Composite.csv").read_text().splitlines()[1].endswith(",41")
    assert (data_dir / "temperature_nvme_Composite_2.csv").read_text().splitlines()[1].endswith(",57")
    exposed = metrics.render(metrics.build_registry(data_dir)).decode()
    assert 'node_hwmon_temp_celsius{chip="nvme",sensor="Composite"} 41.0' in exposed
    assert 'node_hwmon_temp_celsius{chip="nvme",sensor="Composite#2"} 57.0' in exposed


# -- /proc of another kernel: a fixture tree given as proc_root -------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
# Above the kernel's largest pid (pid_max is at most 2**22): never this test's own pid.
PIDS = [7000001, 7000002, 7000003, 7000004]
IO = "rchar: 900\nwchar: 100\nsyscr: 12\nsyscw: 3\nread_bytes: 4096\nwrite_bytes: 8192\ncancelled_write_bytes: 0\n"


def _stat(pid: int, name: str, ppid: int, utime: int, stime: int, cutime: int, cstime: int, threads: int,
          start: int, rss_pages: int) -> str:
    """A ``/proc/<pid>/stat`` line as the kernel writes it (52 fields; times in clock ticks)."""
    fields = ["S", ppid, pid, pid, 0, -1, 4194304, 0, 0, 0, 0, utime, stime, cutime, cstime, 20, 0, threads, 0,
              start, 1 << 24, rss_pages] + [0] * 30
    return f"{pid} ({name}) " + " ".join(str(field) for field in fields) + "\n"


def _proc_tree(root: Path, partition: Path, with_io: dict[int, bool]) -> None:
    """pids of ``with_io`` under ``root`` (their cwd in ``partition``), each with or without its ``io`` file."""
    root.mkdir()
    (root / "self").symlink_to(str(PIDS[0]))
    (root / "cpuinfo").write_text("processor\t: 0\nmodel name\t: Fixture CPU @ 2.00GHz\n")
    for index, (pid, io) in enumerate(with_io.items()):
        folder = root / str(pid)
        folder.mkdir()
        # A command name with a space and a parenthesis: the fields are read after the last ')'.
        (folder / "stat").write_text(_stat(pid, "web) worker", 1, 300 + index, 100, 50, 25, 4, 1000 + index, 256))
        (folder / "cwd").symlink_to(partition)
        if io:
            (folder / "io").write_text(IO)


def test_a_process_without_io_counters_is_kept_with_its_other_figures(tmp_path: Path) -> None:
    """A kernel without IO accounting (no /proc/<pid>/io, CONFIG_TASK_IO_ACCOUNTING off): the
    process is sampled, its IO unknown (NULL), never counted vanished; a pid whose
    directory is gone is."""
    from slapos_collect_recipe import sample
    from slapos_collect_recipe.config import Partition
    from slapos_collect_recipe.store import Store

    root, partition, elsewhere = tmp_path / "proc", tmp_path / "part", tmp_path / "other"
    partition.mkdir()
    elsewhere.mkdir()
    _proc_tree(root, partition, {PIDS[0]: True, PIDS[1]: False, PIDS[2]: True})
    (root / str(PIDS[2]) / "cwd").unlink()
    (root / str(PIDS[2]) / "cwd").symlink_to(elsewhere)  # not the partition's
    members = sample.find_processes([Partition("web", path=str(partition))], proc_root=str(root))
    assert members == [(PIDS[0], "web"), (PIDS[1], "web")]

    boot = 1_700_000_000.0
    now = boot + 3600
    kin: list = []
    samples, vanished, denied = sample.sample_processes(
        members + [(PIDS[3], "web")], now, {}, None, 1 << 30, 200.0, boot_time=boot, kin=kin, proc_root=str(root))
    assert (vanished, denied) == (1, 0)  # only the pid without a directory
    with_io, without_io = samples
    assert without_io.pid == PIDS[1]
    assert (without_io.io_rw_counter, without_io.io_cycles_counter) == (None, None)
    assert (with_io.io_rw_counter, with_io.io_cycles_counter) == (4096 + 8192, 12 + 3)
    # Its other figures, from the stat line written above (clock ticks, pages).
    assert without_io.cpu_time == pytest.approx((301 + 100) / CLK_TCK)
    assert without_io.create_time == pytest.approx(boot + 1001 / CLK_TCK)
    assert (without_io.cpu_num_threads, without_io.memory_rss) == (4, 256 * PAGE)
    assert kin[1] == (1, pytest.approx((50 + 25) / CLK_TCK))
    assert sample._cpu_model(str(root)) == "Fixture CPU @ 2.00GHz"

    # Stored: the IO columns NULL (unknown), never 0; the partition's IO unknown too.
    from slapos_collect_recipe import accounting

    usage, _ = accounting.compute([Partition("web", path=str(partition))], [without_io], [kin[1]], None, now,
                                  boot, 2)
    assert (usage[0].processes, usage[0].io_rw_counter, usage[0].io_cycles_counter) == (1, None, None)
    with Store(tmp_path / "collector.db") as store, store.transaction():
        store.insert("user", [s.row() for s in samples], "2026-12-01", "00:00:00")
    rows = sqlite3.connect(tmp_path / "collector.db").execute(
        'SELECT pid, cpu_num_threads, io_rw_counter, io_cycles_counter FROM "user" ORDER BY pid').fetchall()
    assert rows == [(PIDS[0], 4, 12288, 15), (PIDS[1], 4, None, None)]


def test_a_process_gone_between_its_stat_and_its_io_is_vanished(tmp_path: Path) -> None:
    """As psutil tells them apart: no io file and no stat file any more is a process that
    ended. Its stat is a FIFO whose writer removes it before the reader sees the end of
    the line: the process ends between the two reads, every time."""
    import threading

    from slapos_collect_recipe import sample

    root = tmp_path / "proc"
    _proc_tree(root, tmp_path, {PIDS[0]: False})
    stat = root / str(PIDS[0]) / "stat"
    line = stat.read_bytes()
    stat.unlink()
    os.mkfifo(stat)

    def end_after_stat() -> None:
        with open(stat, "wb") as writer:  # blocks until the sampler opens it
            writer.write(line)
            stat.unlink()

    ender = threading.Thread(target=end_after_stat)
    ender.start()
    try:
        samples, vanished, denied = sample.sample_processes([(PIDS[0], "web")], 0.0, {}, None, 1 << 30, 200.0,
                                                            boot_time=0.0, proc_root=str(root))
    finally:
        ender.join(timeout=10)
        if ender.is_alive():  # the sampler never opened it: let the writer go
            open(stat, "rb").close()
            ender.join()
    assert (samples, vanished, denied) == ([], 1, 0)
