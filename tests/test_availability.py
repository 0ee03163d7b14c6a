"""availability: generated access logs with known outages give exactly the expected stats.json.

The logs are real files (plain and gzip) read by the real console script; the in-process
tests use the same reader with tiny chunks and shuffled lines against a naive reference.
"""

from __future__ import annotations

import calendar
import csv
import gzip
import json
import os
import pty
import random
import select
import subprocess
import time
from pathlib import Path

import jsonschema
import pytest
from conftest import SCRIPTS, run_cli
from monitor_helpers import running_server

from slapos_collect_recipe import availability

SCHEMA = json.loads((Path(availability.__file__).with_name("availability.schema.json")).read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
T0 = calendar.timegm((2026, 11, 29, 23, 50, 0))  # ten minutes before midnight UTC
MIDNIGHT = T0 + 600


def stamp(t: int, tz_minutes: int = 0) -> str:
    sign = "-" if tz_minutes < 0 else "+"
    off = abs(tz_minutes)
    return time.strftime("%d/%b/%Y:%H:%M:%S", time.gmtime(t + tz_minutes * 60)) + f" {sign}{off // 60:02d}{off % 60:02d}"


def line(t: int, comp: str, ip: str = "10.0.0.1", tz: int = 0, common: bool = False, target: str | None = None) -> str:
    target = target or f"/getFullComputerInformation?computer_id={comp}"
    text = f'{ip} - - [{stamp(t, tz)}] "GET {target} HTTP/1.1" 200 512'
    return text + ("\n" if common else ' "-" "slapos-node/1.8"\n')


def iso(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def hms(h: int, m: int, s: int, day: int = 29) -> int:
    return calendar.timegm((2026, 11, day, h, m, s))


# The scenario (gap 300 s):
# - COMP-A calls every 60 s, 23:50:10 -> 23:55:10, silent, 00:05:10 -> 00:20:10: a 600 s outage across midnight;
# - COMP-B (IPv6) every 30 s, 23:50:40 -> 00:20:40, never silent: its last call ends the logs;
# - COMP-C (common format, id in the path every other call) every 20 s, 23:52:00 -> 00:10:00, then
#   silent until the end of the logs: a 640 s outage with edge "end".
A = [T0 + 10 + 60 * k for k in (*range(0, 6), *range(15, 31))]
B = [T0 + 40 + 30 * k for k in range(61)]
C = [T0 + 120 + 20 * k for k in range(55)]


def contact(t: int, comp: str, tz: int = 0) -> tuple[int, str]:
    if comp == "COMP-A":
        return t, line(t, comp)
    if comp == "COMP-B":
        return t, line(t, comp, ip="2001:db8::b", tz=tz)
    target = f"/computer_id={comp}/ping" if (t // 20) % 2 else None
    return t, line(t, comp, ip="192.0.2.3", common=True, target=target)


def write_scenario(directory: Path) -> tuple[Path, Path]:
    """access.log.1.gz (up to 00:00:59) and access.log (from 23:58:00: they overlap)."""
    everything = [(t, c) for c, ts in (("COMP-A", A), ("COMP-B", B), ("COMP-C", C)) for t in ts]
    old = sorted(contact(t, c) for t, c in everything if t < MIDNIGHT + 60)
    old_text = "garbage before the first line\n"
    old_text += line(T0 + 60, "", ip="198.51.100.7", target="/favicon.ico")  # no computer id: ignored
    old_text += "".join(text for _, text in old)
    rotated = directory / "access.log.1.gz"
    with gzip.open(rotated, "wt", encoding="ascii") as handle:
        handle.write(old_text)

    # COMP-B's clock is on local time (+01:00); some lines are written late (out of order).
    new = sorted(contact(t, c, tz=60) for t, c in everything if t >= MIDNIGHT - 120)
    texts = [text for _, text in new]
    late = texts.index(line(hms(0, 7, 20, 30), "COMP-C", ip="192.0.2.3", common=True))
    texts.insert(late + 6, texts.pop(late))  # 00:07:20 written after 00:07:40
    early = texts.index(line(hms(0, 10, 10, 30), "COMP-A"))
    texts.insert(early - 3, texts.pop(early))  # 00:10:10 written before 00:09:40
    texts.insert(10, "\x00\x01 binary junk \xff\n")
    texts.insert(40, "10.0.0.1 - - [30/Nov/2026:00:0\n")  # cut short
    texts.insert(50, line(hms(0, 3, 0, 30), "COMP-A").replace("30/Nov", "31/Nov"))  # no such day
    texts.insert(60, line(hms(0, 1, 0, 30), "", ip="2001:db8::99", target="/hateoas/"))  # no computer id
    current = directory / "access.log"
    current.write_text("".join(texts), encoding="latin-1")
    return current, rotated


def outage(start: int, end: int, edge: str | None = None) -> dict:
    return {"start": iso(start), "end": iso(end), "seconds": end - start, "edge": edge}


def day(first, last, up, expected, availability_, outage_seconds, outages) -> dict:
    return {"first_contact": first and iso(first), "last_contact": last and iso(last), "minutes_up": up,
            "minutes_expected": expected, "availability": availability_, "outage_seconds": outage_seconds,
            "outages": outages}


def run_json(*args: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    proc = run_cli("availability", *args)
    assert "Traceback" not in proc.stderr, proc.stderr
    doc = json.loads(proc.stdout) if proc.stdout else None
    if doc is not None:
        VALIDATOR.validate(doc)
    return proc, doc


def test_known_outages_across_midnight_exact_json(tmp_path):
    current, rotated = write_scenario(tmp_path)
    out = tmp_path / "stats.json"
    # Newest file first: any order works.
    proc = run_cli("availability", str(current), str(rotated), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    # The unparsable lines are reported, one line per file, never fatal.
    assert proc.stderr.splitlines() == [
        f"slapos-collect availability: warning: {current}: 3 of 103 lines could not be parsed (skipped)",
        f"slapos-collect availability: warning: {rotated}: 1 of 56 lines could not be parsed (skipped)",
    ]
    doc = json.loads(out.read_text())
    VALIDATOR.validate(doc)
    a_outage = outage(hms(23, 55, 10), hms(0, 5, 10, 30))
    c_outage = outage(hms(0, 10, 0, 30), hms(0, 20, 40, 30), "end")
    expected = {
        "format": "slapos-collect-availability/1",
        "parameters": {"gap_seconds": 300, "since": None, "until": None, "pattern": availability.DEFAULT_PATTERN},
        "period": {"start": "2026-11-29T23:50:10Z", "end": "2026-11-30T00:20:40Z"},
        "inputs": {
            "files": [
                {"path": str(current), "lines": 103, "contacts": 99, "ignored": 1, "unparsable": 3,
                 "outside_period": 0, "error": None},
                {"path": str(rotated), "lines": 56, "contacts": 54, "ignored": 1, "unparsable": 1,
                 "outside_period": 0, "error": None},
            ],
            "lines": 159, "contacts": 153, "ignored": 2, "unparsable": 4, "outside_period": 0, "failed_files": 0,
        },
        "fleet": {
            "computers": 3, "minutes_up": 72, "minutes_expected": 91, "availability": 79.121,
            "mean_availability": 78.828, "outages": 2, "outage_seconds": 1240,
            "lowest": [{"computer": "COMP-C", "availability": 65.517},
                       {"computer": "COMP-A", "availability": 70.968},
                       {"computer": "COMP-B", "availability": 100.0}],
            "days": {
                "2026-11-29": {"computers": 3, "minutes_up": 24, "minutes_expected": 28, "outages": 1,
                               "outage_seconds": 290, "availability": 85.714},
                "2026-11-30": {"computers": 3, "minutes_up": 48, "minutes_expected": 63, "outages": 2,
                               "outage_seconds": 950, "availability": 76.19},
            },
        },
        "computers": {
            "COMP-A": {
                "first_contact": "2026-11-29T23:50:10Z", "last_contact": "2026-11-30T00:20:10Z",
                "expected_start": "2026-11-29T23:50:10Z", "expected_end": "2026-11-30T00:20:40Z",
                "minutes_up": 22, "minutes_expected": 31, "availability": 70.968,
                "outage_seconds": 600, "outages": [a_outage],
                "days": {
                    "2026-11-29": day(hms(23, 50, 10), hms(23, 55, 10), 6, 10, 60.0, 290, [a_outage]),
                    "2026-11-30": day(hms(0, 5, 10, 30), hms(0, 20, 10, 30), 16, 21, 76.19, 310, [a_outage]),
                },
            },
            "COMP-B": {
                "first_contact": "2026-11-29T23:50:40Z", "last_contact": "2026-11-30T00:20:40Z",
                "expected_start": "2026-11-29T23:50:40Z", "expected_end": "2026-11-30T00:20:40Z",
                "minutes_up": 31, "minutes_expected": 31, "availability": 100.0,
                "outage_seconds": 0, "outages": [],
                "days": {
                    "2026-11-29": day(hms(23, 50, 40), hms(23, 59, 40), 10, 10, 100.0, 0, []),
                    "2026-11-30": day(hms(0, 0, 10, 30), hms(0, 20, 40, 30), 21, 21, 100.0, 0, []),
                },
            },
            "COMP-C": {
                "first_contact": "2026-11-29T23:52:00Z", "last_contact": "2026-11-30T00:10:00Z",
                "expected_start": "2026-11-29T23:52:00Z", "expected_end": "2026-11-30T00:20:40Z",
                "minutes_up": 19, "minutes_expected": 29, "availability": 65.517,
                "outage_seconds": 640, "outages": [c_outage],
                "days": {
                    "2026-11-29": day(hms(23, 52, 0), hms(23, 59, 40), 8, 8, 100.0, 0, []),
                    "2026-11-30": day(hms(0, 0, 0, 30), hms(0, 10, 0, 30), 11, 21, 52.381, 640, [c_outage]),
                },
            },
        },
    }
    assert doc == expected


def test_since_until_bound_the_period_and_count_edges(tmp_path):
    current, rotated = write_scenario(tmp_path)
    proc, doc = run_json(str(rotated), str(current), "--since", "2026-11-30", "--until", "2026-11-30")
    assert proc.returncode == 0, proc.stderr
    end = hms(0, 0, 0, 30) + 86400
    assert doc["period"] == {"start": "2026-11-30T00:00:00Z", "end": "2026-12-01T00:00:00Z"}
    assert doc["parameters"]["since"] == doc["parameters"]["until"] == "2026-11-30"
    files = {Path(f["path"]).name: f for f in doc["inputs"]["files"]}
    assert files["access.log.1.gz"] == {"path": str(rotated), "lines": 56, "contacts": 5, "ignored": 0,
                                        "unparsable": 1, "outside_period": 50, "error": None}
    assert files["access.log"] == {"path": str(current), "lines": 103, "contacts": 89, "ignored": 1,
                                   "unparsable": 3, "outside_period": 10, "error": None}
    a = doc["computers"]["COMP-A"]
    lead = outage(hms(0, 0, 0, 30), hms(0, 5, 10, 30), "start")
    trail = outage(hms(0, 20, 10, 30), end, "end")
    assert a == {
        "first_contact": "2026-11-30T00:05:10Z", "last_contact": "2026-11-30T00:20:10Z",
        "expected_start": "2026-11-30T00:00:00Z", "expected_end": "2026-12-01T00:00:00Z",
        "minutes_up": 16, "minutes_expected": 1440, "availability": 1.111,
        "outage_seconds": 310 + 85190, "outages": [lead, trail],
        "days": {"2026-11-30": day(hms(0, 5, 10, 30), hms(0, 20, 10, 30), 16, 1440, 1.111, 85500, [lead, trail])},
    }
    # B's first call, 10 s after midnight, is no outage; its silence after the logs end is one.
    assert doc["computers"]["COMP-B"]["outages"] == [outage(hms(0, 20, 40, 30), end, "end")]
    assert doc["computers"]["COMP-B"]["availability"] == 1.458
    assert doc["computers"]["COMP-C"]["outages"] == [outage(hms(0, 10, 0, 30), end, "end")]
    assert doc["fleet"]["days"] == {"2026-11-30": {"computers": 3, "minutes_up": 48, "minutes_expected": 4320,
                                                   "outages": 4, "outage_seconds": 256460, "availability": 1.111}}
    assert [x["computer"] for x in doc["fleet"]["lowest"]] == ["COMP-C", "COMP-A", "COMP-B"]


def test_gap_option_and_stdout(tmp_path):
    current, rotated = write_scenario(tmp_path)
    proc, doc = run_json(str(rotated), str(current), "--gap", "601")
    assert proc.returncode == 0
    assert doc["parameters"]["gap_seconds"] == 601
    assert doc["computers"]["COMP-A"]["outages"] == []  # 600 s is not longer than 601
    assert [o["seconds"] for o in doc["computers"]["COMP-C"]["outages"]] == [640]
    assert doc["computers"]["COMP-A"]["availability"] == 70.968  # minutes do not depend on the gap


def test_csv_per_computer_for_dygraph(tmp_path):
    current, rotated = write_scenario(tmp_path)
    out_dir = tmp_path / "csv"
    proc = run_cli("availability", str(current), str(rotated), "-o", str(tmp_path / "stats.json"),
                   "--csv", str(out_dir))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "availability_COMP-A.csv", "availability_COMP-B.csv", "availability_COMP-C.csv"]
    with open(out_dir / "availability_COMP-A.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows == [["time", "entry"], ["2026-11-29 23:00:00", "60.0"], ["2026-11-30 00:00:00", "76.19"]]
    with open(out_dir / "availability_COMP-C.csv", newline="") as handle:
        assert list(csv.reader(handle))[1:] == [["2026-11-29 23:00:00", "100.0"], ["2026-11-30 00:00:00", "52.381"]]


def test_custom_pattern(tmp_path):
    log = tmp_path / "access.log"
    log.write_text("".join(line(T0 + 60 * k, "", target=f"/registerComputerPartition?computer_reference=COMP-{k % 2}"
                                     "&computer_partition_reference=slappart0") for k in range(10)))
    proc, doc = run_json(str(log), "--pattern", r"computer_reference=(COMP-\d+)")
    assert proc.returncode == 0, proc.stderr
    assert sorted(doc["computers"]) == ["COMP-0", "COMP-1"]
    assert doc["computers"]["COMP-0"]["minutes_up"] == 5
    # The default pattern finds nothing there: every line is ignored, no computer.
    proc, doc = run_json(str(log))
    assert proc.returncode == 0
    assert doc["computers"] == {} and doc["period"] is None and doc["inputs"]["ignored"] == 10
    assert doc["fleet"]["availability"] is None


def test_empty_files_are_fine(tmp_path):
    empty, empty_gz = tmp_path / "access.log", tmp_path / "access.log.1.gz"
    empty.write_bytes(b"")
    with gzip.open(empty_gz, "wb"):
        pass
    proc, doc = run_json(str(empty), str(empty_gz))
    assert proc.returncode == 0 and proc.stderr == ""
    assert doc["inputs"]["lines"] == 0 and doc["inputs"]["failed_files"] == 0
    assert doc["computers"] == {} and doc["fleet"]["computers"] == 0 and doc["fleet"]["lowest"] == []


def test_bad_files_are_reported_and_the_others_still_read(tmp_path):
    current, rotated = write_scenario(tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("Dear admin,\nthis is not an access log.\n")
    binary = tmp_path / "core"
    binary.write_bytes(bytes(range(256)) * 64)
    truncated = tmp_path / "access.log.2.gz"
    truncated.write_bytes(rotated.read_bytes()[:-40])
    corrupt = tmp_path / "access.log.3.gz"
    data = bytearray(rotated.read_bytes())
    data[len(data) // 2:len(data) // 2 + 8] = b"\xff" * 8
    corrupt.write_bytes(bytes(data))
    missing = tmp_path / "access.log.9.gz"
    out = tmp_path / "stats.json"
    proc = run_cli("availability", str(missing), str(text), str(current), str(binary), str(truncated), str(corrupt),
                   str(tmp_path), "-o", str(out))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [x for x in proc.stderr.splitlines() if ": error: " in x]
    assert errors[:5] == [
        f"slapos-collect availability: error: {missing}: no such file",
        f"slapos-collect availability: error: {text}: not an access log: none of its first 2 lines has a "
        "[dd/Mon/yyyy:HH:MM:SS +zone] timestamp",
        f"slapos-collect availability: error: {binary}: not an access log: none of its first 64 lines has a "
        "[dd/Mon/yyyy:HH:MM:SS +zone] timestamp",
        f"slapos-collect availability: error: {truncated}: truncated gzip file (the lines before the cut were used)",
        f"slapos-collect availability: error: {corrupt}: " + errors[4].split(f"{corrupt}: ", 1)[1],
    ]
    assert "gzip" in errors[4]
    assert errors[5] == f"slapos-collect availability: error: {tmp_path}: is a directory"
    assert len(errors) == 6
    doc = json.loads(out.read_text())  # still written, whole
    VALIDATOR.validate(doc)
    files = {f["path"]: f for f in doc["inputs"]["files"]}
    assert doc["inputs"]["failed_files"] == 6
    assert files[str(current)]["error"] is None and files[str(current)]["contacts"] == 99
    assert files[str(truncated)]["contacts"] > 0  # what came before the cut
    assert files[str(missing)]["lines"] == 0
    assert sorted(doc["computers"]) == ["COMP-A", "COMP-B", "COMP-C"]


@pytest.mark.parametrize(("args", "message"), [
    (["--since", "2026-13-01"], "--since must be a day as YYYY-MM-DD, not '2026-13-01'"),
    (["--until", "yesterday"], "--until must be a day as YYYY-MM-DD, not 'yesterday'"),
    (["--since", "2026-11-30", "--until", "2026-11-29"], "--until 2026-11-29 is before --since 2026-11-30"),
    (["--gap", "60"], "--gap must be at least 120 seconds (minute resolution), not 60"),
    (["--pattern", "computer_id=(COMP"], "--pattern 'computer_id=(COMP' is not a valid regular expression"),
    (["--pattern", "(a)=(b)"], "--pattern '(a)=(b)' must have at most one group (the computer id)"),
    (["-o", "/nonexistent/dir/stats.json"], "output directory /nonexistent/dir does not exist"),
    (["--csv", "/nonexistent/dir/csv"], "CSV directory /nonexistent/dir/csv: parent directory /nonexistent/dir"),
    (["-o", "{tmp}"], "output {tmp} is a directory"),
    (["--csv", "{tmp}/access.log"], "CSV directory {tmp}/access.log is not a directory"),
])
def test_bad_arguments_one_line_no_traceback(tmp_path, args, message):
    log = tmp_path / "access.log"
    log.write_text(line(T0, "COMP-A"))
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    message = message.replace("{tmp}", str(tmp_path))
    proc = run_cli("availability", str(log), *args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("slapos-collect availability: error: " + message)


def test_a_stray_stamp_years_away_asks_for_a_period(tmp_path):
    current, rotated = write_scenario(tmp_path)
    stray = tmp_path / "access.log.4"
    # A master that booted with its clock in 2000 for a moment.
    stray.write_text(line(calendar.timegm((2000, 1, 1, 0, 0, 5)), "COMP-A") + line(T0 - 60, "COMP-A"))
    proc = run_cli("availability", str(stray), str(current), "-o", str(tmp_path / "stats.json"))
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == (
        "slapos-collect availability: error: the logs span 9831 days (2000-01-01 to 2026-11-30), more than 366: "
        "choose the period with --since/--until")
    assert not (tmp_path / "stats.json").exists()
    proc, doc = run_json(str(stray), str(current), str(rotated), "--since", "2026-11-29")
    assert proc.returncode == 0, proc.stderr
    assert doc["inputs"]["files"][0]["outside_period"] == 1 and doc["inputs"]["files"][0]["contacts"] == 1
    assert doc["computers"]["COMP-A"]["first_contact"] == iso(T0 - 60)
    proc = run_cli("availability", str(current), "--since", "2025-01-01", "--until", "2026-01-02")
    assert proc.returncode == 2
    assert proc.stderr == ("slapos-collect availability: error: --since 2025-01-01 --until 2026-01-02 is more than "
                           "366 days\n")


def test_output_is_replaced_atomically(tmp_path):
    current, rotated = write_scenario(tmp_path)
    out_dir = tmp_path / "data-log"
    out_dir.mkdir()
    out = out_dir / "stats.json"
    out.write_text("old")
    proc = run_cli("availability", str(current), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["format"] == "slapos-collect-availability/1"
    assert [p.name for p in out_dir.iterdir()] == ["stats.json"]  # no temporary file left


def test_slapmonitor_serves_stats_json_from_the_data_dir(tmp_path, data_dir):
    current, rotated = write_scenario(tmp_path)
    proc = run_cli("availability", str(current), str(rotated), "-o", str(data_dir / "stats.json"),
                   "--csv", str(data_dir))
    assert proc.returncode == 0, proc.stderr
    with running_server(data_dir) as server:
        status, headers, body = server.get(f"/{server.secret}/server-log/stats.json")
        assert status == 200
        assert headers["Content-Type"].startswith("application/json")
        assert json.loads(body) == json.loads((data_dir / "stats.json").read_text())
        status, _, body = server.get(f"/{server.secret}/server-log/?format=json")
        assert status == 200
        names = {entry["name"] for entry in json.loads(body)["entries"]}
        assert {"stats.json", "availability_COMP-A.csv", "availability_COMP-C.csv"} <= names
        status, _, body = server.get(f"/{server.secret}/server-log/availability_COMP-A.csv")
        assert status == 200 and body.startswith(b"time,entry\n")


def test_progress_bar_only_on_a_terminal(tmp_path):
    rotated = tmp_path / "access.log.1.gz"
    with gzip.open(rotated, "wt") as handle:
        handle.write("".join(contact(t, "COMP-B")[1] for t in B))
    proc = run_cli("availability", str(rotated), "-o", str(tmp_path / "a.json"))
    assert proc.returncode == 0 and proc.stderr == ""
    master, slave = pty.openpty()
    try:
        child = subprocess.Popen([str(SCRIPTS / "slapos-collect"), "availability", str(rotated),
                                  "-o", str(tmp_path / "b.json")], stderr=slave, stdout=subprocess.DEVNULL)
        os.close(slave)
        seen = b""
        while True:
            ready, _, _ = select.select([master], [], [], 30)
            if not ready:
                break
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        assert child.wait(timeout=30) == 0
    finally:
        os.close(master)
    assert b"100.0%" in seen and b"\r" in seen
    assert json.loads((tmp_path / "b.json").read_text()) == json.loads((tmp_path / "a.json").read_text()) | {
        "inputs": json.loads((tmp_path / "b.json").read_text())["inputs"]}


# -- in-process: the reader against a naive reference -------------------------------------------


def analyse(paths: list[Path], gap: int = 300, **kwargs) -> dict:
    analyser = availability.Analyser(**kwargs)
    stats = []
    for path in paths:
        st = availability.FileStats(str(path))
        analyser.read(str(path), st)
        stats.append(st)
    return analyser.report(stats, gap=gap)


def naive(contacts: dict[str, list[int]], gap: int, end: int) -> dict[str, dict]:
    """Per computer: minutes with a contact and the outages, the obvious way."""
    result = {}
    for comp, times in contacts.items():
        times = sorted(set(times))
        outages = [(a, b, None) for a, b in zip(times, times[1:], strict=False) if b - a > gap]
        if end - times[-1] > gap:
            outages.append((times[-1], end, "end"))
        result[comp] = {"minutes_up": len({t // 60 for t in times}),
                        "minutes_expected": end // 60 - times[0] // 60 + 1,
                        "outages": [outage(*o) for o in outages]}
    return result


def random_fleet(seed: int, computers: int = 12, hours: int = 5,
                 synchronised: bool = False) -> tuple[dict[str, list[int]], list[str]]:
    """Computers calling with random periods and outages; a tenth of the lines written late.

    ``synchronised``: every computer calls on the same seconds, so that many
    lines share a stamp (and late lines share theirs).
    """
    rng = random.Random(seed)
    contacts: dict[str, list[int]] = {}
    lines: list[tuple[int, str]] = []
    for n in range(computers):
        comp = f"COMP-{n}"
        t = T0 + rng.randrange(0, 600)
        period = rng.choice((7, 20, 30, 45))
        if synchronised:
            t, period = T0 + rng.randrange(0, 10) * 20, 20
        times = []
        while t < T0 + hours * 3600:
            times.append(t)
            t += period + (0 if synchronised else rng.randrange(0, 5))
            if rng.random() < 0.004:
                t += rng.randrange(100, 2000)  # an outage, sometimes shorter than the gap
        contacts[comp] = times
        tz = 0 if synchronised else rng.choice((0, 0, 60, -300))
        lines += [(t, line(t, comp, ip=f"2001:db8::{n:x}" if n % 2 else f"10.1.0.{n}", tz=tz)) for t in times]
    lines.sort()
    # Clock skew: a tenth of the lines are written up to 90 s late.
    skewed = sorted(lines, key=lambda item: item[0] + (rng.randrange(0, 90) if rng.random() < 0.1 else 0))
    return contacts, [text for _, text in skewed]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_shuffled_skewed_lines_match_a_naive_reference(tmp_path, seed, monkeypatch):
    contacts, texts = random_fleet(seed)
    log = tmp_path / "access.log"
    log.write_text("".join(texts))
    end = max(max(times) for times in contacts.values())
    doc = analyse([log], gap=180)
    expected = naive(contacts, 180, end)
    got = {comp: {k: info[k] for k in ("minutes_up", "minutes_expected", "outages")}
           for comp, info in doc["computers"].items()}
    assert got == expected
    assert doc["inputs"]["contacts"] == len(texts)
    # Same result whatever the chunk size (lines cut across reads) and the order of lines.
    monkeypatch.setattr(availability, "CHUNK", 997)
    shuffled = tmp_path / "shuffled.log.gz"
    random.Random(seed).shuffle(texts)
    with gzip.open(shuffled, "wt") as handle:
        handle.write("".join(texts))
    again = analyse([shuffled], gap=180)
    assert again["computers"] == doc["computers"]
    assert again["fleet"] == doc["fleet"]


def test_many_identical_stamps_written_late(tmp_path):
    """150 computers calling on the same seconds: late lines share stamps, blocks mix minutes."""
    contacts, texts = random_fleet(11, computers=150, hours=1, synchronised=True)
    garbage = range(len(texts) - 100, 0, -997)  # and some garbage
    for at in garbage:
        texts.insert(at, "[garbage] no stamp here\n" if at % 2 else "\n")
    log = tmp_path / "access.log"
    log.write_text("".join(texts))
    end = max(max(times) for times in contacts.values())
    doc = analyse([log], gap=180)
    got = {comp: {k: info[k] for k in ("minutes_up", "minutes_expected", "outages")}
           for comp, info in doc["computers"].items()}
    assert got == naive(contacts, 180, end)
    first_last = {comp: (info["first_contact"], info["last_contact"]) for comp, info in doc["computers"].items()}
    assert first_last == {comp: (iso(min(times)), iso(max(times))) for comp, times in contacts.items()}
    assert doc["inputs"]["unparsable"] == len(garbage) > 20
    assert doc["inputs"]["contacts"] == len(texts) - len(garbage)


def test_overlapping_files_count_each_minute_once(tmp_path):
    contacts, texts = random_fleet(7)
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    first.write_text("".join(texts[: len(texts) * 2 // 3]))
    second.write_text("".join(texts[len(texts) // 3:]))
    both = analyse([second, first])
    whole = tmp_path / "whole.log"
    whole.write_text("".join(texts))
    alone = analyse([whole])
    assert both["computers"] == alone["computers"]
    assert both["inputs"]["contacts"] == len(texts) + len(texts) * 2 // 3 - len(texts) // 3


def test_over_long_line_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(availability, "MAX_LINE", 300)
    monkeypatch.setattr(availability, "CHUNK", 256)
    log = tmp_path / "access.log"
    log.write_text(line(T0, "COMP-A") + "x" * 5000 + "\n" + line(T0 + 60, "COMP-A") + "no newline at the end")
    doc = analyse([log])
    assert doc["inputs"]["files"][0] | {"path": None} == {
        "path": None, "lines": 4, "contacts": 2, "ignored": 0, "unparsable": 2, "outside_period": 0, "error": None}
    assert doc["computers"]["COMP-A"]["minutes_up"] == 2


def test_time_zones_and_invalid_stamps():
    analyser = availability.Analyser()
    minute = T0 // 60
    assert analyser._parse_stamp(f"[{stamp(T0)}]".encode()) == minute
    assert analyser._parse_stamp(f"[{stamp(T0, 60)}]".encode()) == minute
    assert analyser._parse_stamp(f"[{stamp(T0, -330)}]".encode()) == minute
    for bad in ("[31/Nov/2026:00:00:00 +0000]", "[30/Nov/2026:24:00:00 +0000]", "[30/Nov/2026:00:00:61 +0000]",
                "[30/Foo/2026:00:00:00 +0000]", "[30/Nov/2026:00:00:0a +0000]", "[30/Nov/2026:00:00:00x+0000]",
                "[30/Nov/2026:00:00:00 +0075]"):
        assert analyser._parse_stamp(bad.encode()) == -1, bad


def test_csv_names_stay_apart_when_a_pattern_lets_unsafe_characters_in(tmp_path):
    """Two ids that differ only in characters unfit for a file name get two CSVs."""
    log = tmp_path / "access.log"
    log.write_text("".join(line(T0 + 60 * k, "", target=f"/x?computer_reference=A{'/:'[k % 2]}1")
                           for k in range(10)))
    out = tmp_path / "csv"
    out.mkdir()
    proc = run_cli("availability", str(log), "--pattern", r"computer_reference=([^&\s]+)", "--csv", str(out),
                   "-o", str(tmp_path / "stats.json"))
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 2 and all(n.startswith("availability_A_1-") and n.endswith(".csv") for n in names), names
