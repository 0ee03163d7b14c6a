"""A real Prometheus (Debian's package) scrapes two running slapmonitors, as for a fleet."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from monitor_helpers import running_server

from slapos_collect_recipe.snapshot import PartitionUsage
from slapos_collect_recipe.store import Store

pytestmark = pytest.mark.slow

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
DAY = time.strftime("%Y-%m-%d", time.gmtime())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def usage(partition: str, cpu_time: float, processes: int, ended: int = 0, rss: float = 7e6) -> tuple:
    return PartitionUsage(partition=partition, cpu_time=cpu_time, cpu_percent=cpu_time / 0.6, processes=processes,
                          ended=ended, memory_rss=int(rss), io_rw_counter=100, io_cycles_counter=10,
                          source="children").row()


def node(path, partition: str, load: float):
    path.mkdir()
    store = Store(path / "collector.db")
    with store.transaction():
        store.insert("user", [(partition, 1, "1-1", 3.0, 42.0, 2, 1.0, 7e6, 100, 10)], DAY, "10:00:00")
        store.insert("system", [(load, 12.0, 1e9, 2e9, 100, 0, 0, 200, 0, 0)], DAY, "10:00:00")
        store.insert_usage([usage(partition, 42.0, 1)], DAY, "10:00:00")
    store.close()
    return path


def query(port: int, promql: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        answer = json.load(response)
    assert answer["status"] == "success"
    return answer["data"]["result"]


@contextmanager
def prometheus(tmp_path, scrape_configs: str) -> Iterator[tuple[int, subprocess.Popen]]:
    """Debian's Prometheus scraping every second; yields its port and process, stopped at the end."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
                      + scrape_configs)
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"),
    )
    try:
        yield port, proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


needs_prometheus = pytest.mark.skipif(not shutil.which("prometheus") and not shutil.which(PROMETHEUS),
                                      reason="prometheus is missing (apt-get install prometheus)")


@needs_prometheus
def test_prometheus_scrapes_two_slapmonitors(tmp_path):
    first = node(tmp_path / "node-a", "slappart-a", 0.25)
    second = node(tmp_path / "node-b", "slappart-b", 0.75)
    secret_b = "another-secret-for-node-b-0123456789"
    with running_server(first, tls=True) as a, running_server(second, tls=False, secret=secret_b) as b:
        # One job for the fleet; each target carries its own secret path (__metrics_path__).
        with prometheus(tmp_path, (
            "  - job_name: slapmonitor-tls\n    scheme: https\n"
            "    tls_config:\n      insecure_skip_verify: true\n"
            "    static_configs:\n"
            f"      - targets: ['127.0.0.1:{a.port}']\n"
            f"        labels: {{__metrics_path__: '/{a.secret}/metrics', node: a}}\n"
            "  - job_name: slapmonitor-plain\n    scheme: http\n"
            "    static_configs:\n"
            f"      - targets: ['127.0.0.1:{b.port}']\n"
            f"        labels: {{__metrics_path__: '/{b.secret}/metrics', node: b}}\n"
        )) as (port, proc):
            deadline = time.monotonic() + 90
            series: list[dict] = []
            while time.monotonic() < deadline:
                assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
                try:
                    series = query(port, "slapos_partition_cpu_seconds_total")
                except OSError:
                    series = []
                if len(series) == 2:
                    break
                time.sleep(0.5)
            found = {s["metric"]["partition"]: (s["metric"]["node"], float(s["value"][1])) for s in series}
            assert found == {"slappart-a": ("a", 42.0), "slappart-b": ("b", 42.0)}, series
            ups = {s["metric"]["node"]: s["value"][1] for s in query(port, "up")}
            assert ups == {"a": "1", "b": "1"}
            loads = {s["metric"]["node"]: float(s["value"][1]) for s in query(port, "node_load1")}
            assert loads == {"a": 0.25, "b": 0.75}
            # a fleet-wide PromQL over both nodes
            total = query(port, "sum(slapos_partition_resident_bytes)")
            assert float(total[0]["value"][1]) == 14e6


def wait_for(port: int, proc: subprocess.Popen, promql: str, expected: float, log) -> None:
    """Until Prometheus has scraped ``expected`` as the value of ``promql``."""
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            found = [float(s["value"][1]) for s in query(port, promql)]
        except OSError:
            found = []
        if found == [pytest.approx(expected)]:
            return
        assert time.monotonic() < deadline, (promql, found, expected)
        time.sleep(0.3)


@needs_prometheus
def test_counters_never_go_down_across_a_process_exit(tmp_path):
    """The partition's busy child ends between two runs: the live processes' CPU sum
    (the old figure) drops from 41 s to 1.5 s; the counter Prometheus scrapes goes on up,
    each run written by a new connection, as a new collector process would."""
    data = tmp_path / "node"
    data.mkdir()
    system = (0.5, 12.0, 1e9, 2e9, 100, 0, 0, 200, 0, 0)
    runs = [  # (user rows: parent and child, usage row, counter expected)
        ([("p", 1, "1-1", 1, 1.0, 1, 1, 1, 1, 1), ("p", 2, "2-1", 33, 20.0, 1, 1, 1, 1, 1)], usage("p", 21.0, 2), 21.0),
        ([("p", 1, "1-1", 1, 1.2, 1, 1, 1, 1, 1), ("p", 2, "2-1", 33, 40.0, 1, 1, 1, 1, 1)], usage("p", 20.2, 2), 41.2),
        ([("p", 1, "1-1", 1, 1.5, 1, 1, 1, 1, 1)], usage("p", 12.3, 1, ended=1), 53.5),
    ]
    with running_server(data) as server, prometheus(tmp_path, (
        "  - job_name: slapmonitor\n    scheme: http\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{server.port}']\n"
        f"        labels: {{__metrics_path__: '/{server.secret}/metrics'}}\n"
    )) as (port, proc):
        for minute, (users, row, expected) in enumerate(runs):
            with Store(data / "collector.db") as store, store.transaction():
                store.insert("user", users, DAY, f"11:0{minute}:00")
                store.insert("system", [system], DAY, f"11:0{minute}:00")
                store.insert_usage([row], DAY, f"11:0{minute}:00")
            wait_for(port, proc, 'slapos_partition_cpu_seconds_total{partition="p"}', expected,
                     tmp_path / "prometheus.log")
        wait_for(port, proc, 'slapos_partition_ended_processes_total{partition="p"}', 1, tmp_path / "prometheus.log")
        # Every sample Prometheus holds, in order: never down, so rate() sees no reset.
        (series,) = query(port, 'slapos_partition_cpu_seconds_total{partition="p"}[10m]')
        values = [float(v) for _, v in series["values"]]
        assert values == sorted(values) and values[0] == pytest.approx(21.0) and values[-1] == pytest.approx(53.5)
        assert {21.0, 41.2, 53.5} <= {round(v, 1) for v in values}
        (resets,) = query(port, 'resets(slapos_partition_cpu_seconds_total{partition="p"}[10m])')
        assert float(resets["value"][1]) == 0
        (io,) = query(port, 'slapos_partition_io_bytes_total{partition="p"}')
        assert float(io["value"][1]) == 300
