"""The XML consumption journal and the SlapOS monitor's per-partition JSON, against their formats."""

from __future__ import annotations

import json
import os
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import SCRIPTS, run_cli

from slapos_collect_recipe import config, report, rotate
from slapos_collect_recipe.snapshot import PartitionUsage
from slapos_collect_recipe.store import DB_NAME, Store

DAY = "2026-02-10"
MIB = 2**20


def usage(partition: str, cpu_percent: float, memory_rss: float, memory_used: float | None, processes: int = 2,
          **figures) -> tuple:
    """A partition_usage row of a one-minute interval (IO and network not measured unless given)."""
    return PartitionUsage(partition=partition, cpu_time=cpu_percent * 0.6, cpu_percent=cpu_percent,
                          processes=processes, ended=figures.pop("ended", 0), memory_rss=int(memory_rss),
                          io_rw_counter=figures.pop("io", None), io_cycles_counter=figures.pop("io_ops", None),
                          source="children", memory_used=None if memory_used is None else int(memory_used),
                          memory_source=None if memory_used is None else "pss", **figures).row()


def fill(store: Store, day: str = DAY, with_usage: bool = True) -> None:
    """Four runs: slapuser0 always has two processes, slapuser1 only in two runs.

    partition_usage (when ``with_usage``) says more than the live processes: slapuser0
    also ran short processes between the runs (45 % where the live ones show 40 %)
    and shares pages (120 MiB counted once where the RSS sum is 150 MiB);
    slapuser1's memory was not measured in the first run (its RSS stands in)."""
    with store.transaction():
        for run in range(4):
            stamp = f"12:0{run}:00"
            store.insert("system", [(1.0, 20.0 + 10 * run, 1000 * MIB, 3000 * MIB, 0, 0, 0, 0, 0, 0)], day, stamp)
            store.insert("user", [
                ("slapuser0", 11, "11-1700000000.50", 30.0, 60.0 * (run + 1), 3, 1.0, 100 * MIB, 1000, 10),
                ("slapuser0", 12, "12-1700000001.00", 10.0, 6.0, 1, 0.5, 50 * MIB, 500, 5),
            ], day, stamp)
            if run < 2:
                store.insert("user", [("slapuser1", 21, "21-1700000002.00", 100.0, 1.0, 1, 2.0, 200 * MIB, 0, 0)],
                             day, stamp)
            if with_usage:
                store.insert_usage([
                    usage("slapuser0", 45.0, 150 * MIB, 120 * MIB, ended=3, io=1500, io_ops=15, net_in_bytes=1000,
                          net_out_bytes=500, net_in_packets=10, net_out_packets=5, net_source="nftables"),
                    usage("slapuser1", 100.0, 200 * MIB, None if run == 0 else 180 * MIB, processes=1)
                    if run < 2 else usage("slapuser1", 0.0, 0, 0, processes=0),
                ], day, stamp)
        store.insert("computer", [(2, 2.4e9, "x86", 12000 * MIB, "", "")], day, "12:03:00")
        store.insert("folder", [("slapuser0", 2048.0), ("slapuser1", 10240.0)], day, "12:00:00")
        store.insert("folder", [("slapuser0", 4096.0)], day, "12:03:00")


def movements(path: Path) -> list[dict[str, str]]:
    root = ET.parse(path).getroot()
    return [{child.tag: child.text or "" for child in movement} for movement in root.iter("movement")]


def test_xml_journal_format_and_averages(data_dir: Path) -> None:
    with Store(data_dir / DB_NAME) as store:
        fill(store)
        path = report.write_consumption_report(store, data_dir, DAY, "COMP-7")
    assert path == data_dir / "consumption-report" / f"{DAY}.xml"
    raw = path.read_bytes()
    assert raw.startswith(b"<?xml version='1.0' encoding='utf-8'?><journal>")
    root = ET.fromstring(raw)
    assert root.tag == "journal"
    (transaction,) = root.findall("transaction")
    assert transaction.get("type") == "Sale Packing List"
    assert transaction.findtext("title") == "Eco Information for COMP-7 "
    assert transaction.findtext("start_date") == f"{DAY} 00:00:00"
    assert transaction.findtext("stop_date") == f"{DAY} 23:59:59"
    assert transaction.findtext("reference") == f"{DAY}-global"
    assert transaction.find("arrow").get("type") == "Destination"
    moves = movements(path)
    for move in moves:
        assert list(move) == ["resource", "title", "reference", "quantity", "price", "VAT", "category"]
        assert move["price"] == "0.0"
        assert move["title"].endswith(("(%)", "(MiB)"))  # units stated
    found = {(m["resource"], m["reference"]): float(m["quantity"]) for m in moves}
    assert found == pytest.approx({
        ("service_module/cpu_load_percent", "COMP-7"): 35.0,      # (20+30+40+50)/4
        ("service_module/memory_used", "COMP-7"): 1000.0,         # MiB
        ("service_module/cpu_load_percent", "slapuser0"): 45.0,   # partition_usage, ended processes included
        ("service_module/cpu_load_percent", "slapuser1"): 50.0,   # 100 in 2 of 4 runs
        ("service_module/memory_used", "slapuser0"): 120.0,       # memory_used, not the 150 MiB RSS sum
        ("service_module/memory_used", "slapuser1"): 95.0,        # (200 RSS standing in + 180 + 0 + 0) / 4
        ("service_module/disk_used", "slapuser0"): 3.0,           # (2048+4096)/2 KiB -> MiB
        ("service_module/disk_used", "slapuser1"): 10.0,
    })


def test_xml_journal_of_a_day_before_partition_usage(data_dir: Path) -> None:
    """A day stored before the table existed (a backlog after an upgrade): the processes' sums."""
    with Store(data_dir / DB_NAME) as store:
        fill(store, with_usage=False)
        path = report.write_consumption_report(store, data_dir, DAY, "COMP-7")
    found = {(m["resource"], m["reference"]): float(m["quantity"]) for m in movements(path)}
    assert found[("service_module/cpu_load_percent", "slapuser0")] == pytest.approx(40.0)  # 30+10 every run
    assert found[("service_module/memory_used", "slapuser0")] == pytest.approx(150.0)
    assert found[("service_module/memory_used", "slapuser1")] == pytest.approx(100.0)


def test_xml_journal_validates_against_slapos_schema(data_dir: Path) -> None:
    """The schema slapos.core's ``slapos node report`` validates the journal with."""
    etree = pytest.importorskip("lxml.etree")
    slap = pytest.importorskip("slapos.slap")
    schema = etree.XMLSchema(etree.parse(str(Path(slap.__file__).parent / "doc" / "computer_consumption.xsd")))
    with Store(data_dir / DB_NAME) as store:
        fill(store)
        path = report.write_consumption_report(store, data_dir, DAY, "COMP-7")
    document = etree.parse(str(path))
    assert schema.validate(document), schema.error_log


def test_xml_not_rebuilt_when_present_or_uploaded(data_dir: Path) -> None:
    folder = data_dir / "consumption-report"
    folder.mkdir()
    (folder / f"{DAY}.xml").write_text("kept")
    (folder / "2026-02-11.xml.uploaded").write_text("sent")
    with Store(data_dir / DB_NAME) as store:
        fill(store)
        fill(store, "2026-02-11")
        assert report.write_consumption_report(store, data_dir, DAY, "C") is None
        assert report.write_consumption_report(store, data_dir, "2026-02-11", "C") is None
    assert (folder / f"{DAY}.xml").read_text() == "kept"
    assert not (folder / "2026-02-11.xml").exists()
    assert sorted(p.name for p in folder.iterdir()) == [f"{DAY}.xml", "2026-02-11.xml.uploaded"]


def test_rotate_writes_one_report_per_archived_day(data_dir: Path) -> None:
    yesterday = rotate.gc_cutoff(rotate.today_utc(), 1)
    with Store(data_dir / DB_NAME) as store:
        fill(store, yesterday)
    run_cli("rotate", "--data-dir", str(data_dir), check=True)
    assert [p.name for p in (data_dir / "consumption-report").iterdir()] == [f"{yesterday}.xml"]
    assert len(movements(data_dir / "consumption-report" / f"{yesterday}.xml")) == 8


def node_layout(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A node's data dir, its slapos.cfg, and where `slapos node report` takes the journals."""
    root = tmp_path / "srv"
    data_dir = root / "var" / "data-log"
    data_dir.mkdir(parents=True)
    cfg = tmp_path / "slapos.cfg"
    cfg.write_text(f"[slapos]\ninstance_root = {root}\ncomputer_id = COMP-7\n[slapformat]\npartition_amount = 0\n")
    return data_dir, cfg, root / "var" / "xml_report" / "COMP-7"


def test_node_mode_hands_each_new_journal_to_node_report_once(tmp_path: Path) -> None:
    """--slapos-cfg: each journal written also goes to xml_report/<computer_id>/, where
    `slapos node report` sends and deletes it; a day is never handed over twice,
    even when a rotation killed before its journal is finished by the next one."""
    data_dir, cfg, inbox = node_layout(tmp_path)
    first, second = rotate.gc_cutoff(rotate.today_utc(), 2), rotate.gc_cutoff(rotate.today_utc(), 1)
    with Store(data_dir / DB_NAME) as store:
        fill(store, first)
    run_cli("rotate", "--slapos-cfg", str(cfg), check=True)
    journal = data_dir / "consumption-report" / f"{first}.xml"
    assert (inbox / f"{first}.xml").read_bytes() == journal.read_bytes()
    assert [p.name for p in inbox.parent.iterdir()] == ["COMP-7"]  # no temp file left beside it

    (inbox / f"{first}.xml").unlink()  # sent by `slapos node report`
    with Store(data_dir / DB_NAME) as store:
        fill(store, second)
    proc = subprocess.Popen([str(SCRIPTS / "slapos-collect"), "rotate", "--slapos-cfg", str(cfg)],
                            env=dict(os.environ, **{rotate.PAUSE_ENV: "linked"}), stderr=subprocess.PIPE, text=True)
    try:
        assert "paused at linked" in proc.stderr.readline()  # archived; no journal yet
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert not list(inbox.iterdir())
    run_cli("rotate", "--slapos-cfg", str(cfg), check=True)  # completes the day: its journal, handed over
    assert sorted(p.name for p in inbox.iterdir()) == [f"{second}.xml"]

    with Store(data_dir / DB_NAME) as store:
        fill(store, first)  # late rows: a .late-1 archive, never a second journal
    run_cli("rotate", "--slapos-cfg", str(cfg), check=True)
    assert (data_dir / f"{first}.late-1.tar.gz").exists()
    assert sorted(p.name for p in inbox.iterdir()) == [f"{second}.xml"]


def test_a_failed_hand_over_is_retried_until_it_succeeds(tmp_path: Path) -> None:
    """The journal is written, its hand-over fails (here: the inbox is a file, not a
    folder): the run says so, and the next runs hand it over once they can, never twice."""
    data_dir, cfg, inbox = node_layout(tmp_path)
    inbox.parent.mkdir(parents=True)
    inbox.write_text("in the way")
    day = rotate.gc_cutoff(rotate.today_utc(), 1)
    with Store(data_dir / DB_NAME) as store:
        fill(store, day)
    for _ in range(2):  # the journal is there, the inbox still is not: each run says so
        proc = run_cli("rotate", "--slapos-cfg", str(cfg))
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert (data_dir / "consumption-report" / f"{day}.xml").is_file()
    inbox.unlink()  # fixed
    run_cli("rotate", "--slapos-cfg", str(cfg), check=True)
    journal = (data_dir / "consumption-report" / f"{day}.xml").read_bytes()
    assert (inbox / f"{day}.xml").read_bytes() == journal
    assert (data_dir / f"{day}.tar.gz").is_file()
    (inbox / f"{day}.xml").unlink()  # sent by `slapos node report`
    run_cli("rotate", "--slapos-cfg", str(cfg), check=True)
    assert not list(inbox.iterdir())


def partition(tmp_path: Path, label: str, monitor: bool = True) -> config.Partition:
    path = tmp_path / label
    if monitor:
        (path / ".slapgrid" / "monitor").mkdir(parents=True)
    else:
        path.mkdir()
    return config.Partition(label=label, path=str(path))


def test_monitor_json_files_and_formats(data_dir: Path, tmp_path: Path) -> None:
    parts = [partition(tmp_path, "slapuser0"), partition(tmp_path, "slapuser1", monitor=False)]
    with Store(data_dir / DB_NAME) as store:
        fill(store)
        written = report.publish_monitor(store, parts)
    monitor = tmp_path / "slapuser0" / ".slapgrid" / "monitor"
    assert written == [monitor]
    assert sorted(p.name for p in monitor.iterdir()) == sorted([
        "monitor_resource_process.data.json", "monitor_resource_memory.data.json",
        "monitor_resource_io.data.json", "monitor_resource_network.data.json", "monitor_resource.status.json",
        "monitor_process_resource.status.json"])
    assert not (tmp_path / "slapuser1" / ".slapgrid").exists()

    stamp = f"{DAY} 12:03:00"
    process = json.loads((monitor / "monitor_resource_process.data.json").read_text())
    assert set(process) == {"date", "data"} and isinstance(process["date"], float)
    # CPU from partition_usage; CPU time (minutes), IO and network: totals since the store began.
    assert process["data"] == ["date, total process, CPU percent, CPU time, CPU threads",
                               f"{stamp}, 2, 45.0, 1.8, 4.0"]
    memory = json.loads((monitor / "monitor_resource_memory.data.json").read_text())
    assert memory["data"] == ["date, memory used percent, memory used", f"{stamp}, 1.0, 120.0"]
    io = json.loads((monitor / "monitor_resource_io.data.json").read_text())
    assert io["data"] == ["date, io rw counter, io cycles counter, disk used", f"{stamp}, 6000.0, 60.0, 4.0"]
    network = json.loads((monitor / "monitor_resource_network.data.json").read_text())
    assert network["data"] == ["date, net in bytes, net out bytes, net in packets, net out packets",
                               f"{stamp}, 4000.0, 2000.0, 40.0, 20.0"]

    status = json.loads((monitor / "monitor_resource.status.json").read_text())
    assert status == {"total_process": 2, "cpu_percent": 45.0, "cpu_time": 1.8, "cpu_num_threads": 4.0,
                      "memory_percent": 1.0, "memory_used": 120.0, "memory_rss": 150.0,
                      "io_rw_counter": 6000.0, "io_cycles_counter": 60.0, "disk_used": 4.0,
                      "net_in_bytes": 4000.0, "net_out_bytes": 2000.0, "net_in_packets": 40.0,
                      "net_out_packets": 20.0, "date": stamp}
    processes = json.loads((monitor / "monitor_process_resource.status.json").read_text())
    assert [p["pid"] for p in processes] == [11, 12]  # busiest first
    assert processes[0] == {"pid": 11, "cpu_percent": 30.0, "cpu_time": 4.0, "cpu_num_threads": 3.0,
                            "memory_percent": 1.0, "memory_rss": 100.0, "io_rw_counter": 1000.0,
                            "io_cycles_counter": 10.0, "date": "2023-11-14 22:13:20"}
    assert not list(monitor.glob(".*"))


def test_monitor_history_appends_once_per_run_and_stays_bounded(data_dir: Path, tmp_path: Path) -> None:
    part = partition(tmp_path, "slapuser0")
    path = Path(part.path) / ".slapgrid" / "monitor" / report.PROCESS_DATA
    with Store(data_dir / DB_NAME) as store:
        fill(store)
        report.publish_monitor(store, [part])
        created = json.loads(path.read_text())["date"]
        report.publish_monitor(store, [part])  # same run: not added twice
        assert len(json.loads(path.read_text())["data"]) == 2
        with store.transaction():
            store.insert("system", [(1.0, 5.0, MIB, MIB, 0, 0, 0, 0, 0, 0)], DAY, "12:04:00")
            store.insert("user", [("slapuser0", 11, "11-1.0", 5.0, 1.0, 1, 1.0, MIB, 1, 1)], DAY, "12:04:00")
            store.insert_usage([usage("slapuser0", 5.0, MIB, MIB, processes=1)], DAY, "12:04:00")
        report.publish_monitor(store, [part])
    content = json.loads(path.read_text())
    assert content["date"] == created
    assert [row[:19] for row in content["data"][1:]] == [f"{DAY} 12:03:00", f"{DAY} 12:04:00"]

    # 40 days of history (the original's layout, rows appended without a space):
    # the next append keeps the 30 days before the new row only.
    now = time.time()
    new_row = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now)) + ", 2, 2, 2, 2"
    old_rows = [f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(now - d * 86400))}, 1, 1.0, 1.0, 1.0"
                for d in range(40, 0, -1)]
    path.write_text('{"date": 1.5, "data": ["' + report.PROCESS_HEADER + '"'
                    + "".join(f',"{r}"' for r in old_rows) + "]}")
    assert report.append_history(path, report.PROCESS_HEADER, new_row)
    content = json.loads(path.read_text())
    assert content["date"] == 1.5
    assert content["data"][0] == report.PROCESS_HEADER
    assert content["data"][1:] == old_rows[-30:] + [new_row]  # days 30..1 before, and the new row


def test_monitor_history_file_that_is_not_json_starts_over(tmp_path: Path) -> None:
    path = tmp_path / report.IO_DATA
    path.write_text('{"date": 1, "data": ["x", "trunc')
    assert report.append_history(path, report.IO_HEADER, "2026-01-01 00:00:00, 1, 2, 3")
    content = json.loads(path.read_text())
    assert content["data"] == [report.IO_HEADER, "2026-01-01 00:00:00, 1, 2, 3"]


def test_rotate_cli_writes_monitor_files_for_given_partitions(data_dir: Path, tmp_path: Path) -> None:
    part = partition(tmp_path, "web")
    with Store(data_dir / DB_NAME) as store:
        fill(store)
        with store.transaction():
            store.insert("user", [("web", 5, "5-1.0", 12.5, 1.0, 1, 1.0, MIB, 1, 1)], DAY, "12:03:00")
            store.insert_usage([usage("web", 12.5, MIB, None, processes=1)], DAY, "12:03:00")
    run_cli("rotate", "--data-dir", str(data_dir), "--partition", f"web={part.path}", "--keep-days", "9999",
            check=True)
    monitor = Path(part.path) / ".slapgrid/monitor"
    status = json.loads((monitor / "monitor_resource.status.json").read_text())
    assert status["cpu_percent"] == 12.5 and status["total_process"] == 1
    assert status["memory_used"] == status["memory_rss"] == 1.0  # not measured: the RSS stands in
    # IO and network not measured: no figure, no history (never a 0)
    assert "io_rw_counter" not in status and "net_in_bytes" not in status
    assert not (monitor / report.IO_DATA).exists() and not (monitor / report.NETWORK_DATA).exists()
