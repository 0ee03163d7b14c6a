"""A real Prometheus (Debian's package) scrapes two running slapmonitors, as for a fleet."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
from monitor_helpers import running_server

from slapos_collect_recipe.store import Store

pytestmark = pytest.mark.slow

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
DAY = time.strftime("%Y-%m-%d", time.gmtime())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node(path, partition: str, load: float):
    path.mkdir()
    store = Store(path / "collector.db")
    with store.transaction():
        store.insert("user", [(partition, 1, "1-1", 3.0, 42.0, 2, 1.0, 7e6, 100, 10)], DAY, "10:00:00")
        store.insert("system", [(load, 12.0, 1e9, 2e9, 100, 0, 0, 200, 0, 0)], DAY, "10:00:00")
    store.close()
    return path


def query(port: int, promql: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        answer = json.load(response)
    assert answer["status"] == "success"
    return answer["data"]["result"]


@pytest.mark.skipif(not shutil.which("prometheus") and not shutil.which(PROMETHEUS),
                    reason="prometheus is missing (apt-get install prometheus)")
def test_prometheus_scrapes_two_slapmonitors(tmp_path):
    first = node(tmp_path / "node-a", "slappart-a", 0.25)
    second = node(tmp_path / "node-b", "slappart-b", 0.75)
    secret_b = "another-secret-for-node-b-0123456789"
    with running_server(first, tls=True) as a, running_server(second, tls=False, secret=secret_b) as b:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        # One job for the fleet; each target carries its own secret path (__metrics_path__).
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: slapmonitor-tls\n    scheme: https\n"
            "    tls_config:\n      insecure_skip_verify: true\n"
            "    static_configs:\n"
            f"      - targets: ['127.0.0.1:{a.port}']\n"
            f"        labels: {{__metrics_path__: '/{a.secret}/metrics', node: a}}\n"
            "  - job_name: slapmonitor-plain\n    scheme: http\n"
            "    static_configs:\n"
            f"      - targets: ['127.0.0.1:{b.port}']\n"
            f"        labels: {{__metrics_path__: '/{b.secret}/metrics', node: b}}\n"
        )
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"),
        )
        try:
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
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
