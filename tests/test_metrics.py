"""The Prometheus exposition built from a real collector.db when scraped."""

from __future__ import annotations

import json
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from slapos_collect_recipe import latest, metrics
from slapos_collect_recipe.snapshot import PartitionUsage
from slapos_collect_recipe.store import DB_NAME, Store

DAY = "2026-11-29"
MIB = 2**20


def usage(partition: str, cpu_time: float, interval: float = 60.0, **figures) -> tuple:
    """A partition_usage row as a sampler writes it (memory and network not measured unless given)."""
    defaults = dict(processes=1, ended=0, memory_rss=10 * MIB, io_rw_counter=None, io_cycles_counter=None,
                    source="children")
    defaults.update(figures)
    return PartitionUsage(partition=partition, cpu_time=cpu_time, cpu_percent=100.0 * cpu_time / interval,
                          **defaults).row()


def scrape(data_dir) -> dict[str, dict[tuple, float]]:
    """name -> {sorted label items: value}, from the text exposition."""
    text = metrics.render(metrics.build_registry(data_dir)).decode()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def one_run(store: Store, time_: str, users: list[tuple], system: tuple, usages: list[tuple] = ()) -> None:
    with store.transaction():
        store.insert("user", users, DAY, time_)
        store.insert("system", [system], DAY, time_)
        store.insert_usage(usages, DAY, time_)


def test_system_and_partitions_from_the_latest_run(data_dir):
    store = Store(data_dir / "collector.db")
    one_run(store, "09:00:00", [("slappart0", 1, "1-1", 50.0, 100.0, 9, 9.0, 9e9, 9, 9)],
            (9.0, 90.0, 9, 9, 9, 9, 9, 9, 9, 9),
            [usage("slappart0", 30.0, processes=1, ended=4, io_rw_counter=1000, io_cycles_counter=10),
             usage("slappart1", 0.0)])
    one_run(store, "09:01:00", [
        ("slappart0", 1, "1-1", 2.5, 10.0, 3, 1.0, 1e6, 1000, 10),
        ("slappart0", 2, "2-1", 1.5, 5.0, 1, 0.5, 2e6, 500, 5),
        ("slappart1", 3, "3-1", 0.5, 1.0, 1, 0.1, 3e6, 10, 1),
    ], (0.5, 12.0, 1e9, 2e9, 100, 1, 2, 200, 3, 4),
            [usage("slappart0", 3.0, processes=2, ended=1, memory_rss=3e6, memory_used=2e6, memory_source="pss",
                   io_rw_counter=500, io_cycles_counter=5, net_in_bytes=7000, net_out_bytes=3000,
                   net_in_packets=70, net_out_packets=30, net_source="nftables"),
             usage("slappart1", 0.3, memory_rss=3e6)])
    with store.transaction():
        store.insert("disk", [("/dev/sda1", "1000", "3000", "/"), ("/dev/sdb1", "10", "20", "/srv")], DAY, "09:01:00")
        store.insert("disk_io", [("sda", 10, 20, 1, 2, 1500)], DAY, "09:01:00")
        store.insert("computer", [(2, 2.4e9, "x86", 4e9, "ram", "")], DAY, "09:01:00")
        store.insert("folder", [("slappart0", 2048)], DAY, "08:00:00")
        store.insert("folder", [("slappart0", 4096)], DAY, "09:00:00")
    store.close()

    s = scrape(data_dir)
    assert s["node_load1"] == {(): 0.5}
    assert s["node_cpu_busy_percent"] == {(): 12.0}
    assert s["node_memory_used_bytes"] == {(): 1e9}
    assert s["node_memory_MemAvailable_bytes"] == {(): 2e9}
    assert s["node_memory_MemTotal_bytes"] == {(): 4e9}
    assert s["node_network_receive_bytes_total"] == {(): 100}
    assert s["node_network_transmit_bytes_total"] == {(): 200}
    assert s["node_network_receive_errs_total"] == {(): 1}
    assert s["node_network_receive_drop_total"] == {(): 2}
    assert s["node_network_transmit_errs_total"] == {(): 3}
    assert s["node_network_transmit_drop_total"] == {(): 4}
    assert s["node_filesystem_size_bytes"] == {
        (("device", "/dev/sda1"), ("mountpoint", "/")): 4000,
        (("device", "/dev/sdb1"), ("mountpoint", "/srv")): 30,
    }
    assert s["node_filesystem_avail_bytes"][(("device", "/dev/sda1"), ("mountpoint", "/"))] == 3000
    assert s["node_disk_io_time_seconds_total"] == {(("device", "sda"),): 1.5}
    assert s["slapos_collect_last_run_timestamp_seconds"] == {(): 1795942860.0}

    p0, p1 = (("partition", "slappart0"),), (("partition", "slappart1"),)
    # Counters: the running sums of partition_usage (both runs), not the live processes' times.
    assert s["slapos_partition_cpu_seconds_total"] == pytest.approx({p0: 33.0, p1: 0.3})
    assert s["slapos_partition_ended_processes_total"] == {p0: 5, p1: 0}
    # IO and network never measured for slappart1: left out, never a 0.
    assert s["slapos_partition_io_bytes_total"] == {p0: 1500}
    assert s["slapos_partition_io_ops_total"] == {p0: 15}
    assert s["slapos_partition_network_receive_bytes_total"] == {p0: 7000}
    assert s["slapos_partition_network_transmit_bytes_total"] == {p0: 3000}
    assert s["slapos_partition_network_receive_packets_total"] == {p0: 70}
    assert s["slapos_partition_network_transmit_packets_total"] == {p0: 30}
    # Gauges: the latest run.
    assert s["slapos_partition_cpu_percent"] == pytest.approx({p0: 5.0, p1: 0.5})
    assert s["slapos_partition_memory_bytes"] == {p0: 2e6}  # not measured for slappart1
    assert s["slapos_partition_resident_bytes"] == {p0: 3e6, p1: 3e6}
    assert s["slapos_partition_processes"] == {p0: 2, p1: 1}
    assert s["slapos_partition_threads"] == {p0: 4, p1: 1}
    assert s["slapos_partition_memory_percent"] == pytest.approx({p0: 0.05, p1: 0.075})  # of 4e9
    assert s["slapos_partition_folder_bytes"] == {p0: 4096 * 1024}  # the latest measure, in bytes
    # never a pid label
    assert all("pid" not in dict(labels) for family in s.values() for labels in family)


def test_counters_never_go_down_when_processes_end_or_the_collector_restarts(data_dir):
    """The old figure (sum over the live processes) dropped when a process ended; the
    counters are the store's running sums, so they only go up, across new connections."""
    path = data_dir / "collector.db"
    system = (0.5, 12.0, 1e9, 2e9, 0, 0, 0, 0, 0, 0)
    seen = []
    # A busy child (20 s of CPU per run) ends after the third run; the parent stays.
    runs = [([("p", 1, "1-1", 1, 1, 1, 1, 1, 1, 1), ("p", 2, "2-1", 33, 20 * n, 1, 1, 1, 1, 1)],
             usage("p", 20.5, processes=2, io_rw_counter=4096, io_cycles_counter=2)) for n in range(1, 4)]
    runs.append(([("p", 1, "1-1", 1, 1.5, 1, 1, 1, 1, 1)],
                 usage("p", 12.0, processes=1, ended=1, io_rw_counter=8192, io_cycles_counter=4)))
    runs.append(([("p", 1, "1-1", 1, 1.6, 1, 1, 1, 1, 1)], usage("p", 0.1, processes=1, io_rw_counter=0,
                                                                   io_cycles_counter=0)))
    for minute, (users, row) in enumerate(runs):
        with Store(path) as store:  # each run is a new process: a new connection
            one_run(store, f"12:{minute:02d}:00", users, system, [row])
        seen.append(scrape(data_dir))
    key = (("partition", "p"),)
    cpu = [s["slapos_partition_cpu_seconds_total"][key] for s in seen]
    assert cpu == pytest.approx([20.5, 41.0, 61.5, 73.5, 73.6])
    assert cpu == sorted(cpu)
    assert [s["slapos_partition_io_bytes_total"][key] for s in seen] == [4096, 8192, 12288, 20480, 20480]
    assert [s["slapos_partition_ended_processes_total"][key] for s in seen] == [0, 0, 0, 1, 1]
    assert [s["slapos_partition_processes"][key] for s in seen] == [2, 2, 2, 1, 1]


def test_a_new_store_starts_at_zero(data_dir):
    with Store(data_dir / "collector.db") as store:
        one_run(store, "12:00:00", [], (0.5, 12.0, 1e9, 2e9, 0, 0, 0, 0, 0, 0),
                [usage("p", 0.0, io_rw_counter=0, io_cycles_counter=0)])
    s = scrape(data_dir)
    key = (("partition", "p"),)
    assert s["slapos_partition_cpu_seconds_total"] == {key: 0.0}
    assert s["slapos_partition_io_bytes_total"] == {key: 0.0}  # measured: a true 0
    assert "slapos_partition_network_receive_bytes_total" not in s  # not measured


def test_read_when_scraped_not_kept(data_dir):
    store = Store(data_dir / "collector.db")
    registry = metrics.build_registry(data_dir)
    assert b"node_load1" not in metrics.render(registry)
    one_run(store, "10:00:00", [("p", 1, "1-1", 1, 1, 1, 1, 1, 1, 1)], (1.0, 1, 1, 1, 1, 1, 1, 1, 1, 1))
    assert b"node_load1 1.0" in metrics.render(registry)
    one_run(store, "10:01:00", [("p", 1, "1-1", 1, 1, 1, 1, 1, 1, 1)], (2.0, 1, 1, 1, 1, 1, 1, 1, 1, 1))
    assert b"node_load1 2.0" in metrics.render(registry)
    store.close()


def test_benchmarks_and_degradation(data_dir):
    store = Store(data_dir / "collector.db")
    with store.transaction():
        store.insert("benchmark", [("cpu", 1.0, "Mpystones/s"), ("sqlite", 9000, "ops/s")], DAY, "01:00:00")
        store.insert("benchmark", [("cpu", 1.5, "Mpystones/s"), ("cpu_spread", 2.5, "%")], DAY, "02:00:00")
    store.close()
    (data_dir / "benchmark_status.json").write_text(json.dumps({
        "degraded": True, "threshold": 0.7,
        "benchmarks": {
            "cpu": {"value": 1.5, "baseline": 1.6, "ratio": 0.94, "unit": "Mpystones/s", "degraded": False},
            "sqlite": {"value": 9000, "baseline": 20000, "ratio": 0.45, "unit": "ops/s", "degraded": True},
        },
    }))
    s = scrape(data_dir)
    assert s["slapos_benchmark_value"] == {
        (("name", "cpu"), ("unit", "Mpystones/s")): 1.5,
        (("name", "sqlite"), ("unit", "ops/s")): 9000,
    }
    # A figure's spread is its own family, not a figure.
    assert s["slapos_benchmark_spread_percent"] == {(("name", "cpu"),): 2.5}
    assert s["slapos_machine_degraded"] == {(): 1.0}
    assert s["slapos_benchmark_degraded"] == {(("name", "cpu"),): 0.0, (("name", "sqlite"),): 1.0}
    assert s["slapos_benchmark_ratio"][(("name", "sqlite"),)] == 0.45


def test_no_store_and_broken_status(data_dir):
    assert scrape(data_dir) == {}
    assert not (data_dir / "collector.db").exists()  # scraping never creates the store
    (data_dir / "benchmark_status.json").write_text("{not json")
    assert scrape(data_dir) == {}
    (data_dir / "benchmark_status.json").write_text(json.dumps({"degraded": False}))
    assert scrape(data_dir) == {"slapos_machine_degraded": {(): 0.0}}


def test_current_partitions_for_the_dashboard(data_dir):
    store = Store(data_dir / "collector.db")
    one_run(store, "10:59:00", [], (1.0, 1, 1, 1, 1, 1, 1, 1, 1, 1), [usage("b", 1.0, io_rw_counter=100,
                                                                             io_cycles_counter=1)])
    one_run(store, "11:00:00", [("b", 1, "1-1", 1, 2, 3, 4, 5, 6, 7), ("a", 2, "2-1", 1, 1, 1, 1, 1, 1, 1)],
            (1.0, 1, 1, 1, 1, 1, 1, 1, 1, 1),
            [usage("b", 3.0, processes=1, ended=2, memory_rss=5 * MIB, memory_used=4 * MIB, memory_source="pss",
                   io_rw_counter=600, io_cycles_counter=6, net_in_bytes=10, net_out_bytes=20, net_in_packets=1,
                   net_out_packets=2, net_source="sockets", source="acct"),
             usage("a", 0.6, processes=1, memory_rss=MIB)])
    with store.transaction():
        store.insert("computer", [(2, 2.4e9, "x86", 400 * MIB, "", "")], DAY, "11:00:00")
    report = latest.current_partitions(store)
    store.close()
    assert (report["date"], report["time"]) == (DAY, "11:00:00")
    assert [p["partition"] for p in report["partitions"]] == ["a", "b"]
    assert report["partitions"][1] == pytest.approx({
        "partition": "b", "processes": 1, "ended": 2, "threads": 3, "cpu_percent": 5.0, "cpu_seconds": 3.0,
        "cpu_seconds_total": 4.0, "ended_total": 2, "memory_used_bytes": 4 * MIB, "resident_bytes": 5 * MIB,
        "memory_percent": 1.0, "io_bytes": 600, "io_ops": 6, "io_bytes_total": 700, "io_ops_total": 7,
        "net_in_bytes": 10, "net_out_bytes": 20, "net_in_packets": 1, "net_out_packets": 2,
        "net_in_bytes_total": 10, "net_out_bytes_total": 20, "net_in_packets_total": 1, "net_out_packets_total": 2,
        "source": "acct", "memory_source": "pss", "net_source": "sockets"})
    # Not measured: None (the dashboard shows n/a), never 0; memory % from RSS where memory_used is NULL.
    a = report["partitions"][0]
    assert a["memory_used_bytes"] is None and a["io_bytes"] is None and a["net_in_bytes"] is None
    assert "io_bytes_total" not in a and "net_in_bytes_total" not in a
    assert a["memory_percent"] == pytest.approx(0.25)


def test_real_collect_runs_scraped(data_dir, tmp_path):
    """The real console script, three times: every counter scraped is the running sum of
    the partition's partition_usage rows, and never went down, whatever sampler filled them."""
    import subprocess
    import sys

    from conftest import run_cli

    folder = tmp_path / "part"
    folder.mkdir()
    seen = []
    busy = subprocess.Popen([sys.executable, "-c", "while True:\n    pass\n"], cwd=folder)
    try:
        for _ in range(3):
            time.sleep(1.1)  # runs are stamped to the second: one stamp per run, as cron's minutes give
            run_cli("collect", "--data-dir", str(data_dir), "--partition", f"web={folder}", check=True)
            seen.append(scrape(data_dir))
    finally:
        busy.kill()
        busy.wait()
    with Store(data_dir / "collector.db", readonly=True) as store:
        stamp = store.latest_stamp("partition_usage")
        latest = store.rows_at("partition_usage", *stamp) if stamp else []
        counters = store.partition_counters()
    name = "slapos_partition_cpu_seconds_total"
    assert (name in seen[-1]) == bool(counters)
    for part, sums in counters.items():
        key = (("partition", part),)
        cpu = [s[name][key] for s in seen if key in s.get(name, {})]
        assert cpu == sorted(cpu) and cpu[-1] == pytest.approx(sums["cpu_time"])
        assert seen[-1]["slapos_partition_ended_processes_total"][key] == sums["ended"]
    for row in latest:
        key = (("partition", row["partition"]),)
        assert seen[-1]["slapos_partition_cpu_percent"][key] == pytest.approx(row["cpu_percent"])
        assert seen[-1]["slapos_partition_processes"][key] == row["processes"]
    assert "node_load1" in seen[-1]


def test_slapmonitor_connections_read_when_scraped():
    from prometheus_client import CollectorRegistry

    figures = {"connections": 3, "max": 896, "dropped": {"header_timeout": 5, "full": 0, "refused": 2},
               "cap_hits": 7, "shortages": 1}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics.ConnectionsCollector(lambda: figures))
    first = metrics.render(registry).decode()
    figures["connections"] = 4
    figures["dropped"]["full"] = 9
    samples = {}
    for family in text_string_to_metric_families(metrics.render(registry).decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert "slapmonitor_connections 3.0" in first
    assert samples[("slapmonitor_connections", ())] == 4  # read again at each scrape
    assert samples[("slapmonitor_connections_max", ())] == 896
    assert samples[("slapmonitor_connections_dropped_total", (("reason", "header_timeout"),))] == 5
    assert samples[("slapmonitor_connections_dropped_total", (("reason", "full"),))] == 9
    assert samples[("slapmonitor_per_address_cap_hits_total", ())] == 7
    assert samples[("slapmonitor_descriptor_shortages_total", ())] == 1


def test_a_store_of_before_partition_usage_still_scraped(data_dir):
    """The server opens the store read-only and may do so before the collector
    upgraded it: without partition_usage, partition_counters and temperature, the
    scrape still has the benchmarks and the dashboard's table is empty (not a 503)."""
    import sqlite3

    with Store(data_dir / DB_NAME) as store:
        store.insert("benchmark", [("cpu_sha256", 1.5, "s")], DAY, "08:00:00")
        store.insert("folder", [("slappart0", 2048)], DAY, "08:00:00")
    db = sqlite3.connect(data_dir / DB_NAME)
    for table in ("partition_usage", "partition_counters", "temperature", "heating"):
        db.execute(f'DROP TABLE "{table}"')
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    s = scrape(data_dir)
    assert s["slapos_benchmark_value"] == {(("name", "cpu_sha256"), ("unit", "s")): 1.5}
    assert s["slapos_partition_folder_bytes"] == {(("partition", "slappart0"),): 2048 * 1024}
    store = latest.open_store(data_dir)
    with store:
        assert latest.current_partitions(store)["partitions"] == [
            {"partition": "slappart0", "folder_bytes": 2048 * 1024}]
