"""The real released readers of a node's collector output, unchanged, on our data.

ci/setup-clients builds their venv (slapos.core 1.25.0, slapos.toolbox) from
Debian's Python. On a node laid out as `slapos node format` leaves it (users
slapuser0/1, instance_root with slappart0/1 and their .slapgrid/monitor/,
a slapos.cfg), our collector runs as root with --slapos-cfg; then
slapos.toolbox's monitor.collect and promises run as the partition's user,
slapos.core's ConsumptionReport builds the day's journal from our database, and
slapgrid's own check validates the journal we hand to `slapos node report`.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from datetime import date, timedelta
from pathlib import Path

import psutil
import pytest
from conftest import ROOT, run_cli
from other_user import shared_dir

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: partition users and a node collector")]

PREFIX = Path(os.environ.get("SLAPOS_CLIENTS_PREFIX", "/opt/slapos-collect-clients"))
BIN = PREFIX / "venv" / "bin"
USERS = ("slapuser0", "slapuser1")
COMPUTER = "COMP-CLIENTS"
# A steady load per partition: 30 MiB resident, about 10 % of a core, no process ending.
WORKLOAD = ("import time\nx = bytearray(30 << 20)\nfor i in range(0, len(x), 4096): x[i] = 1\n"
            "while True:\n    end = time.time() + 0.01\n    while time.time() < end: pass\n    time.sleep(0.09)\n")


@pytest.fixture(scope="module")
def clients() -> Path:
    setup = subprocess.run(["bash", str(ROOT / "ci" / "setup-clients")], capture_output=True, text=True,
                           timeout=1200)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    return BIN


@pytest.fixture(scope="module")
def node(clients):
    """Users slapuser0/1, an instance_root with slappart0/1 (each the user's,
    with .slapgrid/monitor/ and 2 MiB of data), a slapos.cfg, and each user's
    steady workload; everything removed at the end."""
    created = []
    base = shared_dir("clients-node-")
    base.chmod(0o755)
    loads = []
    try:
        for name in USERS:
            if subprocess.run(["id", "-u", name], capture_output=True).returncode != 0:
                subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
                created.append(name)
        root = base / "srv"
        root.mkdir()
        root.chmod(0o755)  # whatever the umask
        for n, name in enumerate(USERS):
            user = pwd.getpwnam(name)
            part = root / f"slappart{n}"
            for folder in (part, part / ".slapgrid", part / ".slapgrid" / "monitor", part / "srv", part / "work"):
                folder.mkdir(mode=0o750)
                os.chown(folder, user.pw_uid, user.pw_gid)
            (part / "srv" / "data").write_bytes(os.urandom(2 << 20))
            os.chown(part / "srv" / "data", user.pw_uid, user.pw_gid)
            loads.append(subprocess.Popen(["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                                           "--clear-groups", str(clients / "python"), "-S", "-c", WORKLOAD],
                                          cwd=part))
        cfg = base / "slapos.cfg"
        cfg.write_text(f"[slapos]\ninstance_root = {root}\ncomputer_id = {COMPUTER}\n"
                       f"[slapformat]\npartition_amount = {len(USERS)}\nuser_base_name = slapuser\n"
                       "partition_base_name = slappart\n")
        yield {"root": root, "cfg": cfg, "db": root / "var" / "data-log" / "collector.db", "loads": loads}
    finally:
        for load in loads:
            load.kill()
            load.wait()
        for name in created:
            subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
            subprocess.run(["userdel", name], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def as_user(name: str, *command: str, env: dict | None = None, cwd: str = "/") -> subprocess.CompletedProcess:
    user = pwd.getpwnam(name)
    full_env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", **(env or {})}
    return subprocess.run(["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
                           *command], capture_output=True, text=True, timeout=300, env=full_env, cwd=cwd)


def driver(bin_dir: Path, node: dict, *args: str, user: str | None = None) -> dict:
    script = node["root"].parent / "slapos_clients.py"
    if not script.exists():
        shutil.copy(Path(__file__).with_name("slapos_clients.py"), script)
        script.chmod(0o644)
    command = [str(bin_dir / "python"), str(script), *args]
    proc = as_user(user, *command) if user else subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def wait_for_second(below: int) -> None:
    """Sleep until the current minute's second is below ``below`` (a run stamped
    in the first 30 s of a minute, as check-computer-memory needs)."""
    while time.gmtime().tm_sec >= below:
        time.sleep(0.5)


def next_minute() -> None:
    time.sleep(60 - time.time() % 60 + 1)


def collect(node: dict) -> None:
    run_cli("collect", "--slapos-cfg", str(node["cfg"]), check=True)


@pytest.fixture(scope="module")
def collected(node):
    """Three runs in the first 20 s of one minute, the folder walk done; then the next minute."""
    wait_for_second(15)
    minute = int(time.time() // 60)
    for _ in range(3):
        collect(node)
        time.sleep(1.1)  # one stamp per run
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with sqlite3.connect(f"file:{node['db']}?mode=ro", uri=True) as conn:
            if conn.execute("SELECT count(DISTINCT partition) FROM folder").fetchone()[0] == len(USERS):
                break
        time.sleep(0.5)
    conn.close()
    assert int(time.time() // 60) == minute, "the runs took too long for the clients' minute windows"
    next_minute()
    return node


def test_monitor_collect_as_the_partition_user(clients, collected) -> None:
    node = collected
    out = node["root"] / "slappart0" / "work"
    proc = as_user("slapuser0", str(clients / "monitor.collect"), "--output_folder", str(out),
                   "--collector_db", str(node["db"]), "--partition_id", "slappart0",
                   "--pid_file", str(out / "monitor.collect.pid"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status = json.loads((out / "monitor_resource.status.json").read_text())
    # Our load (the user may run more: these users can be shared with other tests).
    assert status["total_process"] >= 3  # one process, three runs of the previous minute
    assert status["memory_rss"] >= 3 * 30  # MiB summed over the runs
    assert status["cpu_percent"] > 0
    processes = {p["pid"]: p for p in json.loads((out / "monitor_process_resource.status.json").read_text())}
    load = processes[node["loads"][0].pid]
    assert load["user"] == "slapuser0"
    assert 3 * 30 <= load["memory_rss"] <= 3 * 60  # MiB: the client sums it over the runs (30 MiB + the interpreter)
    truth = psutil.Process(node["loads"][0].pid).memory_info().rss / 2 ** 20  # the load's own, steady
    assert load["memory_rss"] / 3 == pytest.approx(truth, rel=0.05)
    print(f"monitor.collect slapuser0: {status['total_process']} process rows, load RSS "
          f"{load['memory_rss'] / 3:.2f} MiB per run (the kernel: {truth:.2f}), CPU {load['cpu_percent']} %")
    assert 2 <= load["cpu_percent"] <= 40  # about 10 % of a core


def test_check_computer_memory_as_the_partition_user(clients, collected) -> None:
    proc = as_user("slapuser1", str(clients / "check-computer-memory"), "--collectordb", str(collected["db"]),
                   "--threshold", str(10 ** 15))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    total = psutil.virtual_memory().total
    assert proc.stdout.startswith("OK - memory used: ") and f"of {total}B" in proc.stdout, proc.stdout
    print(f"check-computer-memory: {proc.stdout.strip()}")
    # The client reads "the previous minute" in local time: on a node whose
    # clock is not UTC it finds none of the (UTC) rows, and says so with exit 0.
    east = as_user("slapuser1", str(clients / "check-computer-memory"), "--collectordb", str(collected["db"]),
                   "--threshold", str(10 ** 15), env={"TZ": "JST-9"})
    assert east.returncode == 0 and east.stdout.startswith("couldn't fetch"), east.stdout


@pytest.mark.parametrize("name", ["check_free_disk_space", "monitor_partition_space"])
def test_promises_as_the_partition_user(clients, collected, name) -> None:
    node = collected
    part = node["root"] / "slappart0"
    work = part / "work" / name
    result = driver(clients, node, "promise", name, str(part), str(work), str(node["db"]), user="slapuser0")
    assert result["error"] is None, result
    assert result["result"]["failed"] is False, result
    said = result["log"] + result["result"]["message"]
    if name == "check_free_disk_space":
        assert "Current disk usage: OK" in said, result
        # (Its display-partition lines want folder rows older than the start of the
        # previous minute: a node's daily walks are; this test's, made a minute ago, may not be.)
    else:
        # It read our disk row and this user's folder rows (else "No result ... for the user");
        # anomalies need 13 days of history.
        assert "Not enough data to detect anomalies" in said, result


def _quantities(movements: list[dict]) -> dict[tuple[str, str], float]:
    return {(m["resource"], m["reference"]): float(m["quantity"]) for m in movements}


def test_consumption_report_agrees_and_the_journal_reaches_node_report(clients, collected) -> None:
    node = collected
    db = node["db"]
    today = time.strftime("%Y-%m-%d", time.gmtime())
    yesterday = (date.fromisoformat(today) - timedelta(days=1)).isoformat()
    # The day's rows become yesterday's: the next run archives that day and writes its journal.
    with sqlite3.connect(db) as conn:
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND sql LIKE '%reported%'"):
            conn.execute(f'UPDATE "{table}" SET date = ? WHERE date = ?', (yesterday, today))
    conn.close()
    collect(node)
    ours = node["root"] / "var" / "data-log" / "consumption-report" / f"{yesterday}.xml"
    handed = node["root"] / "var" / "xml_report" / COMPUTER / f"{yesterday}.xml"
    assert ours.read_bytes() == handed.read_bytes()
    assert sorted(p.name for p in handed.parent.iterdir()) == [handed.name]  # no temp file where node report reads
    assert oct(handed.parent.stat().st_mode & 0o777) == "0o755"

    # slapgrid's own check (what `slapos node report` runs before sending).
    assert driver(clients, node, "validate", str(ours)) == {str(ours): True}

    theirs = _quantities(driver(clients, node, "report", str(db.parent), yesterday, COMPUTER, *USERS)["movements"])
    mine = _quantities([{f: m.findtext(f) for f in ("resource", "reference", "quantity")}
                        for m in ET.parse(ours).getroot().iter("movement")])
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        runs = [t for (t,) in conn.execute('SELECT DISTINCT time FROM "user" WHERE date = ? ORDER BY time',
                                           (yesterday,))]
        first = dict(conn.execute('SELECT partition, total(cpu_percent) FROM "user" WHERE date = ? AND time = ? '
                                  "GROUP BY partition", (yesterday, runs[0])))
    conn.close()
    for user in USERS:
        disk = ("service_module/disk_used", user)
        assert mine[disk] == pytest.approx(theirs[disk], rel=1e-9, abs=1e-9)
        # Theirs sums RSS (a shared page once per process that maps it); ours counts it once: never above.
        memory = ("service_module/memory_used", user)
        assert 0 < mine[memory] <= theirs[memory] + 1e-9
        # Theirs averages the user rows' CPU %, where the store's first run gives each process its CPU
        # since it started; partition_usage has no interval there (0). Over the later runs they agree.
        cpu = ("service_module/cpu_load_percent", user)
        assert mine[cpu] == pytest.approx(theirs[cpu] - first.get(user, 0.0) / len(runs), rel=0.05, abs=0.1)
        assert mine[("service_module/memory_used", user)] >= 30  # MiB: the 30 MiB load and its interpreter
        assert 2 <= mine[("service_module/disk_used", user)] <= 3  # MiB: the 2 MiB of data
        assert mine[("service_module/cpu_load_percent", user)] > 2
    print("ConsumptionReport vs ours:", {f"{r.split('/')[1]}/{ref}": (theirs[(r, ref)], mine[(r, ref)])
                                          for (r, ref) in mine if ref in USERS})
    cpu = ("service_module/cpu_load_percent", COMPUTER)
    assert mine[cpu] == pytest.approx(theirs[cpu], rel=1e-9)
    memory = ("service_module/memory_used", COMPUTER)
    assert mine[memory] * 2 ** 20 == pytest.approx(theirs[memory], rel=1e-9)  # ours in MiB, theirs in bytes

    # `slapos node report` sends the file and deletes it: it is never handed over again.
    handed.unlink()
    collect(node)
    assert not handed.exists()


def test_clients_venv_is_not_ours(clients) -> None:
    """The clients run as released: nothing of this project is importable there."""
    proc = subprocess.run([str(clients / "python"), "-c", "import slapos_collect_recipe"], capture_output=True,
                          text=True, cwd="/")
    assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr
    assert sys.executable != str(clients / "python")
