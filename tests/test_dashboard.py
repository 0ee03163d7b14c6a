"""The dashboard in a real headless Chromium, served by the real slapmonitor over TLS."""

from __future__ import annotations

import os
import time

import pytest
from browser import browser_page
from monitor_helpers import running_server

from slapos_collect_recipe import realtime
from slapos_collect_recipe.snapshot import PartitionUsage
from slapos_collect_recipe.store import Store

pytestmark = pytest.mark.slow

DAY = time.strftime("%Y-%m-%d", time.gmtime())
MINUTES = 30
MIB = 1048576
# Any label is a partition: a slash, spaces, HTML, unicode.
ODD = "<b>web</b> / été ☃"
PARTITION_CHARTS = ["partition-cpu", "partition-memory", "partition-io", "partition-net-in", "partition-net-out"]
# Coloured pixels (a series line; axes and grid are grey) of a chart's canvases.
COLOURED = """id => Array.from(document.querySelectorAll('#chart-' + id + ' canvas')).reduce((n, c) => {
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] > 0 && (Math.abs(d[i] - d[i + 1]) > 40 || Math.abs(d[i + 1] - d[i + 2]) > 40)) { n++; }
  }
  return n;
}, 0)"""


def usage_rows(m: int) -> list[tuple]:
    """One run of three partitions, as a sampler writes them (slappart1: memory and network not measured)."""
    def row(label: str, cpu: float, **figures) -> tuple:
        values = dict(processes=2, ended=m % 3, memory_rss=(40 + m) * MIB, io_rw_counter=None,
                      io_cycles_counter=None, source="children")
        values.update(figures)
        return PartitionUsage(partition=label, cpu_time=cpu * 0.6, cpu_percent=cpu, **values).row()

    return [row("slappart0", 20 + m % 5, memory_used=(30 + m) * MIB, memory_source="pss", io_rw_counter=2048 * m,
                io_cycles_counter=m, net_in_bytes=1024 * m, net_out_bytes=512 * m, net_in_packets=m,
                net_out_packets=m, net_source="nftables"),
            row("slappart1", 60 - m, io_rw_counter=1024, io_cycles_counter=1),
            row(ODD, 5.0 + m, memory_used=10 * MIB, memory_source="cgroup-v2", io_rw_counter=0,
                io_cycles_counter=0, net_in_bytes=3000, net_out_bytes=0, net_in_packets=3, net_out_packets=0,
                net_source="interface", source="cgroup-v2")]


def wait_js(page, expression: str, timeout: float = 30) -> None:
    """Poll ``expression`` with page.evaluate (wait_for_function would need 'unsafe-eval',
    which the dashboard's Content-Security-Policy rightly refuses)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {timeout} s: {expression}"
        time.sleep(0.1)


def csv(values) -> str:
    rows = [f"{DAY} 10:{m:02d}:00,{v}" for m, v in enumerate(values)]
    return "time,entry\n" + "\n".join(rows) + "\n"


def fill(data_dir) -> dict[str, int]:
    """Today's CSVs as the publishers write them, and a store with two partitions."""
    series = {
        "system_cpu_percent.csv": [10 + m % 7 for m in range(MINUTES)],
        "system_loadavg.csv": [0.5 + m / 100 for m in range(MINUTES)],
        "system_memory_used.csv": [1_000_000 + m for m in range(MINUTES)],
        "system_memory_free.csv": [2_000_000 - m for m in range(MINUTES)],
        "system_net_in_bytes.csv": [100 * m for m in range(MINUTES)],
        "system_net_out_bytes.csv": [50 * m for m in range(MINUTES)],
        "system_net_in_errors.csv": [0] * MINUTES,
        "system_net_out_errors.csv": [0] * MINUTES,
        "system_net_in_dropped.csv": [0] * MINUTES,
        "system_net_out_dropped.csv": [0] * MINUTES,
        "system_disk_memory_used__dev_sda1.csv": [500 + m for m in range(MINUTES)],
        "system_disk_memory_free__dev_sda1.csv": [900 - m for m in range(MINUTES)],
        "system_disk_memory_used__dev_sdb1.csv": [5 for m in range(MINUTES)],
        "system_disk_memory_free__dev_sdb1.csv": [7 for m in range(MINUTES)],
        "benchmark_cpu.csv": [1.5] * 10,
        "benchmark_sqlite.csv": [12000 + m for m in range(5)],
    }
    store = Store(data_dir / "collector.db")
    # The per-partition CSVs as the real-time publisher appends them, run after run.
    for m in range(MINUTES):
        stamp = f"10:{m:02d}:00"
        with store.transaction():
            store.insert("system", [(0.5, 10.0, 1e9, 2e9, 0, 0, 0, 0, 0, 0)], DAY, stamp)
            store.insert_usage(usage_rows(m), DAY, stamp)
        realtime.publish(store, data_dir)
    with store.transaction():
        store.insert("user", [
            ("slappart0", 1, "1-1", 2.5, 10.0, 3, 1.0, 50 * 1048576, 1000, 10),
            ("slappart0", 2, "2-1", 1.5, 5.0, 1, 0.5, 20 * 1048576, 500, 5),
            ("slappart1", 3, "3-1", 0.5, 1.0, 1, 0.1, 3 * 1048576, 10, 1),
        ], DAY, "10:29:00")
        store.insert("computer", [(2, 2.4e9, "x86", 4096 * MIB, "", "")], DAY, "10:29:00")
    store.close()
    for name, values in series.items():
        (data_dir / name).write_text(csv(values))
    os.symlink("/etc/passwd", data_dir / "system_evil.csv")  # must not become a chart
    # chart id -> rows it must show
    return {"cpu": MINUTES, "load": MINUTES, "memory": MINUTES, "network": MINUTES, "network-errors": MINUTES,
            **{chart: MINUTES for chart in PARTITION_CHARTS},
            "disk-_dev_sda1": MINUTES, "disk-_dev_sdb1": MINUTES, "benchmark_cpu": 10, "benchmark_sqlite": 5}


def test_dashboard_renders_every_chart_and_the_partitions(data_dir):
    expected = fill(data_dir)
    with running_server(data_dir, tls=True) as server, browser_page(ignore_https_errors=True) as (page, console):
        page.goto(server.url(""))
        wait_js(page, "window.slapmonitor && window.slapmonitor.ready")
        assert page.evaluate("window.slapmonitor.errors") == []
        rows = page.evaluate(
            "Object.fromEntries(Object.entries(window.slapmonitor.graphs).map(([k, g]) => [k, g.numRows()]))")
        assert rows == expected
        # one canvas-backed plot per chart, each drawn (dygraph draws on canvases inside the plot)
        charts = page.locator("#charts .chart")
        assert charts.count() == len(expected)
        for i in range(charts.count()):
            assert charts.nth(i).locator("canvas").count() >= 1
        order = page.evaluate("Array.from(document.querySelectorAll('#charts .chart')).map(e => e.id)")
        assert order == ["chart-" + name for name in expected]  # fixed order, whatever answers first
        labels = page.evaluate("window.slapmonitor.graphs['memory'].getLabels()")
        assert labels == ["time", "used", "free"]
        # KiB in the CSVs, GiB on the chart
        assert page.evaluate("window.slapmonitor.graphs['memory'].getValue(0, 1)") == pytest.approx(1e6 / 1048576)
        assert page.evaluate("window.slapmonitor.graphs['cpu'].getValue(0, 1)") == 10
        # one line per partition, labelled by partition (HTML in a label shown as text)
        for chart in PARTITION_CHARTS:
            labels = page.evaluate(f"window.slapmonitor.graphs['{chart}'].getLabels()")
            assert labels == ["time", ODD, "slappart0", "slappart1"] or (
                chart.startswith("partition-net") and labels == ["time", ODD, "slappart0"]), (chart, labels)
            assert page.evaluate(COLOURED, chart) > 500, chart  # the lines are drawn
        assert page.locator("#chart-partition-cpu .legend").inner_text().count("slappart") == 2
        assert "<b>web</b>" in page.locator("#chart-partition-cpu .legend").inner_text()
        assert page.locator("#chart-partition-cpu b").count() == 0  # never markup
        assert page.evaluate("window.slapmonitor.graphs['partition-cpu'].getValue(29, 3)") == 31  # slappart1
        # memory: memory_used where measured, the RSS sum where not, KiB in the CSVs, MiB on the chart
        assert page.evaluate("window.slapmonitor.graphs['partition-memory'].getValue(0, 2)") == 30
        assert page.evaluate("window.slapmonitor.graphs['partition-memory'].getValue(0, 3)") == 40
        assert page.evaluate("window.slapmonitor.graphs['partition-io'].getValue(29, 2)") == 58  # KiB
        screenshot = os.environ.get("SLAPOS_COLLECT_SCREENSHOT")
        if screenshot:
            page.screenshot(path=screenshot, full_page=True)
        # the partitions table (latest partition_usage rows)
        table = page.locator("#partitions tbody tr")
        assert table.count() == 3
        rows = {tr.locator("td").nth(0).inner_text(): tr.locator("td").all_inner_texts()
                for tr in table.all()}
        assert set(rows) == {ODD, "slappart0", "slappart1"}
        assert rows["slappart0"][1:16] == [
            "2", "2", "4", "24.0", "14.40", "396.0",  # processes, ended, threads, CPU %, s, total s
            "59.0", "69.0", "1.44", "58.0", "29",  # memory used, RSS (MiB), memory %, IO KiB, ops
            "29.0", "14.5", "n/a", "cpu/io children, memory pss, network nftables"]
        # not measured: n/a, never 0
        assert rows["slappart1"][7] == "n/a" and rows["slappart1"][12:14] == ["n/a", "n/a"]
        assert rows["slappart1"][15] == "cpu/io children, memory n/a, network n/a"
        # nothing from outside the server, no console error
        origin = server.base.rstrip("/")
        assert console.requests and all(url.startswith(origin) for url in console.requests)
        assert console.errors == [], console.messages


def test_dashboard_refreshes_and_picks_up_new_data(data_dir):
    fill(data_dir)
    with running_server(data_dir) as server, browser_page() as (page, console):
        page.clock.install()
        page.goto(server.url(""))
        wait_js(page, "window.slapmonitor && window.slapmonitor.ready")
        assert page.evaluate("window.slapmonitor.graphs['cpu'].numRows()") == MINUTES
        tmp = data_dir / "cpu.tmp"
        tmp.write_text(csv([10 + m % 7 for m in range(MINUTES + 5)]))
        os.replace(tmp, data_dir / "system_cpu_percent.csv")
        (data_dir / "benchmark_net.csv").write_text(csv([3.0, 4.0]))
        # a partition that appears gets its line
        (data_dir / f"{realtime.partition_file_stem('cpu_percent', 'new one')}.csv").write_text(csv([7.0, 8.0]))
        page.clock.run_for(61_000)
        wait_js(page, "window.slapmonitor.refreshes >= 2")
        assert page.evaluate("window.slapmonitor.graphs['cpu'].numRows()") == MINUTES + 5
        assert page.evaluate("window.slapmonitor.graphs['benchmark_net'].numRows()") == 2
        assert page.evaluate("window.slapmonitor.graphs['partition-cpu'].getLabels()") == [
            "time", ODD, "new one", "slappart0", "slappart1"]
        assert page.evaluate("window.slapmonitor.graphs['partition-cpu'].getValue(1, 2)") == 8
        assert console.errors == [], console.messages


def test_dashboard_without_data_says_so(data_dir):
    with running_server(data_dir) as server, browser_page() as (page, console):
        page.goto(server.url(""))
        wait_js(page, "window.slapmonitor && window.slapmonitor.ready")
        assert page.evaluate("Object.keys(window.slapmonitor.graphs).length") == 0
        assert "no partition data yet" in page.locator("#partitions").inner_text()
        page.click("text=collected files")
        page.wait_for_url("**/server-log/")
        assert "collector.db" not in page.content()  # no store yet
        assert page.locator("h1").inner_text() == "server-log/"
        assert console.errors == [], console.messages


def test_temperature_chart_appears_with_sensors_only(data_dir):
    expected = fill(data_dir)
    (data_dir / "temperature_coretemp_Package_id_0.csv").write_text(csv([45 + m % 3 for m in range(MINUTES)]))
    (data_dir / "temperature_nvme_temp1.csv").write_text(csv([38.5] * MINUTES))
    with running_server(data_dir) as server, browser_page() as (page, console):
        page.goto(server.url(""))
        wait_js(page, "window.slapmonitor && window.slapmonitor.ready")
        order = page.evaluate("Array.from(document.querySelectorAll('#charts .chart')).map(e => e.id)")
        # after the disks, before the other system and benchmark charts
        names = list(expected)
        after_disks = max(i for i, name in enumerate(names) if name.startswith("disk-")) + 1
        assert order == ["chart-" + name for name in [*names[:after_disks], "temperature", *names[after_disks:]]]
        assert page.evaluate("window.slapmonitor.graphs['temperature'].getLabels()") == [
            "time", "coretemp_Package_id_0", "nvme_temp1"]
        assert page.evaluate("window.slapmonitor.graphs['temperature'].getValue(0, 1)") == 45
        assert page.evaluate("window.slapmonitor.graphs['temperature'].getValue(0, 2)") == 38.5
        assert console.errors == [], console.messages
