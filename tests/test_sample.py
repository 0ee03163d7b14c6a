"""Temperature sensors: psutil's readings into the ``temperature`` table, CSVs and /metrics.

This machine (a VM) has no sensor, so the kernel's sysfs is the edge that
cannot exist here: the end-to-end test runs the real collector in a private
mount namespace whose /sys/class is a tmpfs laid out as the kernel lays out
hwmon chips and thermal zones (psutil reads exactly those files).
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
    assert "temperature" not in log.read_text().lower() and "sensor" not in log.read_text().lower()
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


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root for a mount namespace")
def test_every_sensor_is_stored_charted_and_exported(data_dir: Path) -> None:
    _collect_with_fake_sysfs(data_dir, HWMON)
    with sqlite3.connect(data_dir / "collector.db") as conn:
        rows = conn.execute("SELECT sensor_id, temperature, alarm FROM temperature ORDER BY sensor_id").fetchall()
    conn.close()
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
    with sqlite3.connect(data_dir / "collector.db") as conn:
        rows = conn.execute("SELECT sensor_id, temperature FROM temperature ORDER BY temperature").fetchall()
    conn.close()
    assert rows == [("nvme/Composite", 41.0), ("nvme/Composite#2", 57.0)]
    assert (data_dir / "temperature_nvme_Composite.csv").read_text().splitlines()[1].endswith(",41")
    assert (data_dir / "temperature_nvme_Composite_2.csv").read_text().splitlines()[1].endswith(",57")
    exposed = metrics.render(metrics.build_registry(data_dir)).decode()
    assert 'node_hwmon_temp_celsius{chip="nvme",sensor="Composite"} 41.0' in exposed
    assert 'node_hwmon_temp_celsius{chip="nvme",sensor="Composite#2"} 57.0' in exposed
