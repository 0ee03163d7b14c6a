"""The Prometheus exposition built from a real collector.db when scraped."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from slapos_collect_recipe import metrics
from slapos_collect_recipe.store import Store

DAY = "2026-11-29"


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


def one_run(store: Store, time_: str, users: list[tuple], system: tuple) -> None:
    with store.transaction():
        store.insert("user", users, DAY, time_)
        store.insert("system", [system], DAY, time_)


def test_system_and_partitions_from_the_latest_run(data_dir):
    store = Store(data_dir / "collector.db")
    one_run(store, "09:00:00", [("slappart0", 1, "1-1", 50.0, 100.0, 9, 9.0, 9e9, 9, 9)],
            (9.0, 90.0, 9, 9, 9, 9, 9, 9, 9, 9))
    one_run(store, "09:01:00", [
        ("slappart0", 1, "1-1", 2.5, 10.0, 3, 1.0, 1e6, 1000, 10),
        ("slappart0", 2, "2-1", 1.5, 5.0, 1, 0.5, 2e6, 500, 5),
        ("slappart1", 3, "3-1", 0.5, 1.0, 1, 0.1, 3e6, 10, 1),
    ], (0.5, 12.0, 1e9, 2e9, 100, 1, 2, 200, 3, 4))
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
    assert s["slapos_partition_cpu_seconds_total"] == {p0: 15.0, p1: 1.0}
    assert s["slapos_partition_cpu_percent"] == {p0: 4.0, p1: 0.5}
    assert s["slapos_partition_resident_bytes"] == {p0: 3e6, p1: 3e6}
    assert s["slapos_partition_io_bytes_total"] == {p0: 1500, p1: 10}
    assert s["slapos_partition_io_ops_total"] == {p0: 15, p1: 1}
    assert s["slapos_partition_processes"] == {p0: 2, p1: 1}
    assert s["slapos_partition_threads"] == {p0: 4, p1: 1}
    assert s["slapos_partition_folder_bytes"] == {p0: 4096 * 1024}  # the latest measure, in bytes
    # never a pid label
    assert all("pid" not in dict(labels) for family in s.values() for labels in family)


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
    one_run(store, "11:00:00", [("b", 1, "1-1", 1, 2, 3, 4, 5, 6, 7), ("a", 2, "2-1", 1, 1, 1, 1, 1, 1, 1)],
            (1.0, 1, 1, 1, 1, 1, 1, 1, 1, 1))
    report = metrics.current_partitions(store)
    store.close()
    assert (report["date"], report["time"]) == (DAY, "11:00:00")
    assert [p["partition"] for p in report["partitions"]] == ["a", "b"]
    assert report["partitions"][1] == {"partition": "b", "processes": 1, "threads": 3, "cpu_percent": 1,
                                       "cpu_seconds": 2, "memory_percent": 4, "resident_bytes": 5,
                                       "io_bytes": 6, "io_ops": 7}


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
