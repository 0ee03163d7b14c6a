"""Today's dygraph CSVs: names, units, deltas, appends, the day change, and that they plot."""

from __future__ import annotations

import csv
import functools
import http.server
import threading
import time
from pathlib import Path

import pytest

from slapos_collect_recipe import realtime
from slapos_collect_recipe.snapshot import PartitionUsage
from slapos_collect_recipe.store import DB_NAME, Store

SYSTEM_FILES = [f"{stem}.csv" for stem in realtime.SYSTEM_SERIES]
GIB = 2**30


def add_run(store: Store, day: str, time_: str, *, net_in: float = 0, net_out: float = 0, cpu: float = 10.0,
            disks: tuple[str, ...] = ("/dev/sda1",)) -> None:
    with store.transaction():
        store.insert("system", [(0.25, cpu, 2 * GIB, 3 * GIB, net_in, 1, 2, net_out, 3, 4)], day, time_)
        store.insert("disk", [(dev, str(GIB), str(4 * GIB), "/") for dev in disks], day, time_)


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_files_names_header_units_and_deltas(data_dir: Path) -> None:
    with Store(data_dir / DB_NAME) as store:
        add_run(store, "2026-03-01", "10:00:00", net_in=10 * 1024, net_out=5 * 1024)
        realtime.publish(store, data_dir)
        add_run(store, "2026-03-01", "10:01:00", net_in=30 * 1024, net_out=6 * 1024, cpu=55.5)
        realtime.publish(store, data_dir)
    names = sorted(p.name for p in data_dir.glob("system_*.csv"))
    assert names == sorted(SYSTEM_FILES + ["system_disk_memory_used__dev_sda1.csv",
                                           "system_disk_memory_free__dev_sda1.csv"])
    for name in names:
        rows = read_csv(data_dir / name)
        assert rows[0] == ["time", "entry"]
        assert [r[0] for r in rows[1:]] == ["2026-03-01 10:00:00", "2026-03-01 10:01:00"]
    value = {name: [r[1] for r in read_csv(data_dir / name)[1:]] for name in names}
    assert value["system_cpu_percent.csv"] == ["10", "55.5"]
    assert value["system_loadavg.csv"] == ["0.25", "0.25"]
    assert value["system_memory_used.csv"] == [str(2 * 1024 * 1024)] * 2  # KiB
    assert value["system_memory_free.csv"] == [str(3 * 1024 * 1024)] * 2
    assert value["system_net_in_bytes.csv"] == ["0", "20"]  # KiB per interval; the first run is a baseline
    assert value["system_net_out_bytes.csv"] == ["0", "1"]
    assert value["system_net_in_errors.csv"] == ["0", "0"]
    assert value["system_disk_memory_used__dev_sda1.csv"] == [str(1024 * 1024)] * 2
    assert value["system_disk_memory_free__dev_sda1.csv"] == [str(4 * 1024 * 1024)] * 2


def test_counter_reset_starts_a_new_baseline(data_dir: Path) -> None:
    with Store(data_dir / DB_NAME) as store:
        for minute, counter in enumerate((5 * 1024, 9 * 1024, 1024, 3 * 1024)):
            add_run(store, "2026-03-01", f"10:0{minute}:00", net_in=counter)
            realtime.publish(store, data_dir)
    assert [r[1] for r in read_csv(data_dir / "system_net_in_bytes.csv")[1:]] == ["0", "4", "0", "2"]


def test_each_run_appends_only_its_line_and_never_twice(data_dir: Path) -> None:
    path = data_dir / "system_cpu_percent.csv"
    with Store(data_dir / DB_NAME) as store:
        add_run(store, "2026-03-01", "10:00:00")
        realtime.publish(store, data_dir)
        # A mark in the earlier line survives: the day is never rewritten.
        path.write_text(path.read_text().replace(",10\n", ",10.0\n"))
        inode = path.stat().st_ino
        add_run(store, "2026-03-01", "10:01:00", cpu=20)
        realtime.publish(store, data_dir)
        realtime.publish(store, data_dir)  # same run again: nothing added
    assert path.read_text() == "time,entry\n2026-03-01 10:00:00,10.0\n2026-03-01 10:01:00,20\n"
    assert path.stat().st_ino == inode


def test_day_change_starts_over_and_drops_gone_disks(data_dir: Path) -> None:
    with Store(data_dir / DB_NAME) as store:
        add_run(store, "2026-03-01", "23:58:00", disks=("/dev/sda1", "/dev/sdb1"), net_in=1024)
        realtime.publish(store, data_dir)
        add_run(store, "2026-03-01", "23:59:00", disks=("/dev/sda1", "/dev/sdb1"), net_in=2048)
        realtime.publish(store, data_dir)
        assert (data_dir / "system_disk_memory_used__dev_sdb1.csv").exists()
        add_run(store, "2026-03-02", "00:00:00", disks=("/dev/sda1",), net_in=4096)
        realtime.publish(store, data_dir)
    assert read_csv(data_dir / "system_net_in_bytes.csv") == [["time", "entry"], ["2026-03-02 00:00:00", "2"]]
    assert read_csv(data_dir / "system_disk_memory_used__dev_sda1.csv")[1:] == [["2026-03-02 00:00:00", "1048576"]]
    assert not (data_dir / "system_disk_memory_used__dev_sdb1.csv").exists()
    assert not list(data_dir.glob(".*.tmp"))


LABELS = ["slappart0", "a/b c", "a_b_c", "a%2Fb%20c", "été ☃", "..", "~x", "w" * 300, "w" * 299 + "v"]


def add_usage(store: Store, day: str, time_: str, rows: list[PartitionUsage], **system) -> None:
    add_run(store, day, time_, **system)
    with store.transaction():
        store.insert_usage([r.row() for r in rows], day, time_)


def part(label: str, cpu: float = 25.0, **figures) -> PartitionUsage:
    values = dict(cpu_time=cpu * 0.6, cpu_percent=cpu, processes=2, ended=0, memory_rss=8 * 2**20,
                  io_rw_counter=None, io_cycles_counter=None, source="children")
    values.update(figures)
    return PartitionUsage(partition=label, **values)


def test_per_partition_files_names_units_and_gaps(data_dir: Path) -> None:
    from urllib.parse import unquote

    with Store(data_dir / DB_NAME) as store:
        add_usage(store, "2026-03-01", "10:00:00", [part(label) for label in LABELS])
        realtime.publish(store, data_dir)
        add_usage(store, "2026-03-01", "10:01:00", [
            part(label, cpu=50.0, memory_used=4 * 2**20, io_rw_counter=3072, net_in_bytes=2048, net_out_bytes=1024)
            for label in LABELS])
        realtime.publish(store, data_dir)
    names = sorted(p.name for p in data_dir.glob("partition_*.csv"))
    # Five figures per label, no two labels on one file, none of them hidden or outside.
    assert len(names) == 5 * len(LABELS) == len(set(names))
    assert all("/" not in n and not n.startswith(".") and len(n.encode()) < 240 for n in names)
    cpu = {n[len("partition_cpu_percent_"):-4]: n for n in names if n.startswith("partition_cpu_percent_")}
    # Reversible: the label is the name's part, percent-decoded (cut and hashed only when too long).
    assert sorted(unquote(k) for k in cpu if "~" not in k) == sorted(label for label in LABELS if len(label) < 100)
    assert [k for k in cpu if "~" in k] and len([k for k in cpu if "~" in k]) == 2
    assert (data_dir / "partition_cpu_percent_a%2Fb%20c.csv").exists()
    assert (data_dir / "partition_cpu_percent_a%252Fb%2520c.csv").exists()
    assert (data_dir / "partition_memory_used_%C3%A9t%C3%A9%20%E2%98%83.csv").exists()

    def entries(figure: str) -> list[list[str]]:
        return read_csv(data_dir / f"partition_{figure}_slappart0.csv")

    assert entries("cpu_percent") == [["time", "entry"], ["2026-03-01 10:00:00", "25"], ["2026-03-01 10:01:00", "50"]]
    # KiB; memory_used, or the RSS sum where it was not measured
    assert entries("memory_used")[1:] == [["2026-03-01 10:00:00", "8192"], ["2026-03-01 10:01:00", "4096"]]
    # Not measured (NULL): no line at all, never a 0.
    assert entries("io_bytes")[1:] == [["2026-03-01 10:01:00", "3"]]
    assert entries("net_in_bytes")[1:] == [["2026-03-01 10:01:00", "2"]]
    assert entries("net_out_bytes")[1:] == [["2026-03-01 10:01:00", "1"]]


def test_day_change_drops_partitions_that_are_gone(data_dir: Path) -> None:
    with Store(data_dir / DB_NAME) as store:
        add_usage(store, "2026-03-01", "23:59:00", [part("kept", net_in_bytes=10), part("gone")])
        realtime.publish(store, data_dir)
        assert (data_dir / "partition_cpu_percent_gone.csv").exists()
        add_usage(store, "2026-03-02", "00:00:00", [part("kept")])
        realtime.publish(store, data_dir)
    assert sorted(p.name for p in data_dir.glob("partition_*.csv")) == [
        "partition_cpu_percent_kept.csv", "partition_memory_used_kept.csv"]  # net no longer measured: gone too
    assert read_csv(data_dir / "partition_cpu_percent_kept.csv")[1:] == [["2026-03-02 00:00:00", "25"]]


def test_a_reader_never_sees_half_a_line_or_a_missing_file(data_dir: Path) -> None:
    path = data_dir / "system_cpu_percent.csv"
    stop = threading.Event()
    problems: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                text = path.read_text()
            except FileNotFoundError:
                if started.is_set():
                    problems.append("missing")
                continue
            started.set()
            reads += 1
            if not text.startswith("time,entry\n") or not text.endswith("\n"):
                problems.append(repr(text[-40:]))
            for line in text.splitlines()[1:]:
                stamp, _, value = line.partition(",")
                if len(stamp) != 19 or not value:
                    problems.append(line)

    started = threading.Event()
    with Store(data_dir / DB_NAME) as store:
        add_run(store, "2026-03-01", "00:00:00")
        realtime.publish(store, data_dir)
        thread = threading.Thread(target=reader)
        thread.start()
        try:
            for n in range(1, 240):  # two day changes
                day = "2026-03-01" if n < 60 else "2026-03-02" if n < 150 else "2026-03-03"
                add_run(store, day, f"{n // 60 % 24:02d}:{n % 60:02d}:00", cpu=float(n))
                realtime.publish(store, data_dir)
        finally:
            stop.set()
            thread.join()
    assert reads > 0
    assert problems == []
    rows = read_csv(path)
    assert rows[0] == ["time", "entry"] and all(r[0].startswith("2026-03-03") for r in rows[1:])


def test_nothing_stored_publishes_nothing(data_dir: Path) -> None:
    with Store(data_dir / DB_NAME) as store:
        realtime.publish(store, data_dir)
    assert not list(data_dir.glob("*.csv"))


@pytest.fixture
def static_server(data_dir: Path):
    handler = functools.partial(QuietHandler, directory=str(data_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


PAGE = """<!doctype html><html><head><script src="dygraph-combined.js"></script></head><body>
<div id="chart" style="width:600px;height:300px"></div>
<script>
window.charts = {};
function plot(name) {
  return new Promise((resolve, reject) => {
    const div = document.createElement("div");
    div.style.width = "600px"; div.style.height = "200px";
    document.body.appendChild(div);
    const g = new Dygraph(div, encodeURIComponent(name), {});
    g.ready(() => resolve({rows: g.numRows(), columns: g.numColumns(), labels: g.getLabels(),
                           first: g.getValue(0, 0), value: g.getValue(0, 1)}));
    setTimeout(() => reject(new Error("no chart for " + name)), 20000);
  });
}
</script></body></html>
"""


@pytest.mark.slow
def test_the_csvs_plot_in_dygraphs_in_a_real_browser(data_dir: Path, static_server: str) -> None:
    import dygraphs
    from playwright import sync_api as playwright_api

    runs = 90
    with Store(data_dir / DB_NAME) as store:
        for n in range(runs):
            add_usage(store, "2026-03-01", f"{n // 60:02d}:{n % 60:02d}:00", [
                part(label, cpu=n % 100, memory_used=n * 2**20, io_rw_counter=n * 1024, net_in_bytes=n,
                     net_out_bytes=n) for label in ("slappart0", "a/b c", "été ☃")], net_in=1024.0 * n * n, cpu=n % 100)
            realtime.publish(store, data_dir)
    (data_dir / "dygraph-combined.js").write_bytes(
        (Path(dygraphs.__file__).parent / "assets" / "dygraph-combined.js").read_bytes())
    (data_dir / "index.html").write_text(PAGE)
    names = sorted(p.name for p in data_dir.glob("system_*.csv")) + sorted(
        p.name for p in data_dir.glob("partition_*.csv"))
    assert len(names) == len(SYSTEM_FILES) + 2 + 15

    with playwright_api.sync_playwright() as pw:
        browser = _launch(pw)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(static_server + "index.html")
            for name in names:
                rows = len(read_csv(data_dir / name)) - 1
                chart = page.evaluate("name => plot(name)", name)
                assert chart["rows"] == rows == runs, name
                assert chart["labels"] == ["time", "entry"], name
                assert chart["columns"] == 2
            assert errors == []
        finally:
            browser.close()


def _launch(pw):
    """The shared launcher when the suite has one, else Debian's chromium directly."""
    try:
        from browser import launch  # tests/browser.py (the monitor's tests)
    except ImportError:
        launch = None
    if launch is not None:
        try:
            return launch(pw)
        except TypeError:
            pass
    return pw.chromium.launch(
        executable_path="/usr/bin/chromium",
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    )


def test_real_collect_runs_publish_what_partition_usage_holds(data_dir: Path, tmp_path: Path) -> None:
    """The real console script, twice, with a busy process in the partition's folder: each
    partition_usage row of the latest run is the last line of its partition's files (a
    figure not measured: no line), whatever sampler filled the table."""
    import subprocess
    import sys

    from conftest import run_cli

    folder = tmp_path / "web part"
    folder.mkdir()
    busy = subprocess.Popen([sys.executable, "-c", "while True:\n    pass\n"], cwd=folder)
    try:
        for _ in range(2):
            time.sleep(1.1)  # runs are stamped to the second: one stamp per run, as cron's minutes give
            run_cli("collect", "--data-dir", str(data_dir), "--partition", f"web/1={folder}", check=True)
    finally:
        busy.kill()
        busy.wait()
    with Store(data_dir / DB_NAME, readonly=True) as store:
        stamp = store.latest_stamp("system")
        latest = store.rows_at("partition_usage", *stamp)
    assert all(row["partition"] == "web/1" for row in latest)
    for row in latest:
        for figure, (names, divisor) in realtime.PARTITION_SERIES.items():
            path = data_dir / f"{realtime.partition_file_stem(figure, row['partition'])}.csv"
            value = next((row[name] for name in names if row[name] is not None), None)
            lines = read_csv(path) if path.exists() else []
            if value is None:
                assert [f"{stamp[0]} {stamp[1]}"] not in [line[:1] for line in lines], figure
            else:
                assert lines[0] == ["time", "entry"] and lines[-1] == [
                    f"{stamp[0]} {stamp[1]}", realtime.format_value(value / divisor)], figure
    assert (data_dir / "partition_cpu_percent_web%2F1.csv").exists() == bool(latest)
