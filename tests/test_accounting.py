"""Per-partition usage between runs (``partition_usage``): every mechanism against
the workload's own CPU time, with real processes of a real unprivileged user, real
kernel process accounting and a real cgroup v2."""

from __future__ import annotations

import os
import pwd
import shutil
import sqlite3
from pathlib import Path

import pytest
from accounting_workloads import (
    IO_BLOCK,
    IO_JOBS,
    IO_WRITES,
    Collector,
    as_user,
    collect_command,
    ensure_user,
    own_cgroup,
    remove_user,
    run_workload,
)
from conftest import accounting_restored, run_cli
from other_user import other_user_runtime, shared_dir

# A user of this session's own (sessions of other branches may run beside it on one machine).
USER = f"sc-acct{os.getpid()}"
UNIFIED = "/sys/fs/cgroup/unified"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates a user, runs processes as it")


def _usage(data_dir: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(data_dir / "collector.db")
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT * FROM partition_usage ORDER BY rowid").fetchall()
    finally:
        db.close()


def test_every_partition_has_a_row_first_run_zero(data_dir: Path) -> None:
    """One row per configured partition at every run, zeros (not missing) for one
    without processes; the first run of a store counts no CPU."""
    for _ in range(2):
        run_cli("collect", "--data-dir", str(data_dir), "--user", "root", "--process-accounting", "no",
                "--partition", f"empty={data_dir}/nothing-runs-here", check=True)
    rows = _usage(data_dir)
    assert [r["partition"] for r in rows] == ["root", "empty", "root", "empty"]
    assert rows[0]["cpu_time"] == 0 and rows[0]["cpu_percent"] == 0 and rows[0]["processes"] > 0
    empty = rows[3]
    assert (empty["cpu_time"], empty["processes"], empty["ended"], empty["memory_rss"]) == (0, 0, 0, 0)
    assert empty["io_rw_counter"] == 0 and empty["source"] == "children"


# --- real workloads against their own CPU time ---------------------------------------------

@pytest.fixture(scope="module")
def partition_user():
    if os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("useradd"):
        pytest.skip("needs root, setpriv and useradd: creates a user and runs processes as it")
    created = ensure_user(USER)
    try:
        yield pwd.getpwnam(USER)
    finally:
        if created:
            remove_user(USER)


@pytest.fixture(scope="module")
def accounting_off_after():
    """Kernel accounting as it was before the module (off, or the node's file), even on failure."""
    with accounting_restored():
        yield


@pytest.fixture(scope="module")
def cgroup_dir():
    """A cgroup v2 of the test's own under the unified hierarchy, or the reason there is none."""
    with own_cgroup(UNIFIED) as made:
        yield made


@pytest.fixture(scope="module")
def cgroup_v1_dir():
    """A cgroup of the test's own in the v1 cpuacct hierarchy, or the reason there is none."""
    with own_cgroup("/sys/fs/cgroup/cpuacct") as made:
        yield made


@pytest.fixture(scope="module")
def scratch():
    path = shared_dir("slapos-collect-acct-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


_results: dict[str, tuple[float, dict[str, Collector]]] = {}


def _measure(kind: str, scratch: Path, cgroup: str | None,
             cgroup_v1: str | None = None) -> tuple[float, dict[str, Collector]]:
    """One run of a workload, measured by root collectors side by side: children's
    times alone, process accounting, and the cgroups (v2, v1, where there are)."""
    if kind in _results:
        return _results[kind]
    base = collect_command()
    common = ["collect", "--user", USER]
    collectors = {}
    for name, extra in (("children", ["--process-accounting", "no"]), ("acct", ["--process-accounting", "yes"]),
                        ("cgroup", ["--process-accounting", "no", "--cgroup", f"{USER}={cgroup}"]),
                        ("cgroup-v1", ["--process-accounting", "no", "--cgroup", f"{USER}={cgroup_v1}"])):
        if (name == "cgroup" and not cgroup) or (name == "cgroup-v1" and not cgroup_v1):
            continue
        data = scratch / f"{kind}-{name}"
        collectors[name] = Collector(name, [*base, *common, "--data-dir", str(data), *extra], data)
    runtime = other_user_runtime()
    truth = run_workload(kind, USER, runtime.python, scratch, list(collectors.values()),
                         [path for path in (cgroup, cgroup_v1) if path])
    _results[kind] = truth, collectors
    return truth, collectors


# (workload, mechanism): the share of the true CPU it must report (at most 101 %: nothing twice).
TARGETS = {
    # The build-like load is counted by children's times under acct too (its jobs are reaped inside):
    # 99.5-99.9 % measured quiet, 99.44 % once beside another test session; bench_accuracy holds 99.5 %.
    ("build", "children"): (0.98, 1.01), ("build", "acct"): (0.99, 1.01), ("build", "cgroup"): (0.995, 1.01),
    ("across", "children"): (0.98, 1.01), ("across", "acct"): (0.98, 1.01), ("across", "cgroup"): (0.99, 1.01),
    ("busy", "children"): (0.98, 1.01), ("busy", "acct"): (0.98, 1.01), ("busy", "cgroup"): (0.99, 1.01),
    # Children's times cannot see a daemon re-parented away (here to a root supervisor that reaps it):
    # its CPU after the last run that saw it is missed.
    ("daemon", "children"): (0.0, 1.01), ("daemon", "cgroup"): (0.99, 1.01),
    ("build", "cgroup-v1"): (0.995, 1.01), ("daemon", "cgroup-v1"): (0.99, 1.01),
    # Accounting catches its end; the record's CPU is the kernel's tick samples (this kernel counts
    # CPU by ticks), which stray from the real run time on a busy machine: the part after the last
    # run is taken raw minus raw at the ratio that run saw (measured: 98.3-100 % on a quiet machine,
    # 96.6-101.4 % under heavy contention; without: 100.5-102 % and 113-130 %). An estimate, so this
    # test allows 3 % over (a double count would be 200 %); benchmarks/bench_accuracy.py holds the 101 %.
    ("daemon", "acct"): (0.95, 1.03),
}


@pytest.mark.parametrize(("kind", "mechanism"), list(TARGETS), ids=[f"{k}-{m}" for k, m in TARGETS])
def test_share_of_true_cpu(kind: str, mechanism: str, partition_user, accounting_off_after, cgroup_dir,
                           cgroup_v1_dir, scratch: Path) -> None:
    """A build-like load (short jobs, some with a job of their own, under a live
    parent), one child across several runs then reaped, a long busy loop, a
    double-forked daemon: each mechanism's sum of ``cpu_time`` over the runs
    against the workload's own CPU (its processes' getrusage)."""
    cgroup, reason = cgroup_dir
    if mechanism == "cgroup" and cgroup is None:
        pytest.skip(reason)
    cgroup_v1, reason_v1 = cgroup_v1_dir
    if mechanism == "cgroup-v1" and cgroup_v1 is None:
        pytest.skip(reason_v1)
    truth, collectors = _measure(kind, scratch, cgroup, cgroup_v1)
    collector = collectors[mechanism]
    share = collector.cpu(USER) / truth
    rows = collector.rows(USER)
    print(f"{kind} {mechanism}: {share:.2%} of {truth:.2f} s over {len(rows)} runs")
    sources = {row["source"] for row in rows[2:]}
    if mechanism == "acct" and "acct" not in sources:
        # Accounting is one per machine: a root collector of another session running meanwhile
        # took it over for the whole window.
        pytest.skip("kernel accounting was taken over by another root collector during the workload")
    low, high = TARGETS[kind, mechanism]
    assert low <= share <= high, (kind, mechanism, share, truth, [tuple(row) for row in rows])
    assert rows[0]["cpu_time"] == 0  # the store's first run
    expected = {"children": "children", "acct": "acct", "cgroup": "cgroup-v2", "cgroup-v1": "cgroup-v1"}[mechanism]
    if mechanism == "acct":
        # Intervals where another session held accounting are measured by children's times.
        assert sources <= {"acct", "children"}
    else:
        assert sources == {expected}
    assert all(0 <= row["cpu_percent"] <= 100 * os.cpu_count() for row in rows)
    if kind == "build":
        assert sum(row["ended"] for row in rows) >= (40 if sources == {"acct"} else 1)


@pytest.mark.parametrize("mechanism", ["children", "acct"])
def test_io_of_ended_processes_counted_once(mechanism: str, partition_user, accounting_off_after,
                                            scratch: Path) -> None:
    """Jobs that write and end between runs (one of them seen halfway by a run):
    the kernel adds a reaped job's IO counters to its parent's, so the partition's
    IO counts each byte and write call once."""
    truth, collectors = _measure("io", scratch, None)
    rows = collectors[mechanism].rows(USER)
    written = sum(row["io_rw_counter"] for row in rows)
    calls = sum(row["io_cycles_counter"] for row in rows)
    expected = IO_JOBS * IO_WRITES * IO_BLOCK
    print(f"io {mechanism}: {written} bytes of {expected}, {calls} calls of {IO_JOBS * IO_WRITES}; "
          f"CPU {collectors[mechanism].cpu(USER) / truth:.2%}")
    detail = [tuple(row) for row in rows]
    assert expected <= written <= expected + 128 * 1024, detail  # + the jobs' own reports of their truth
    assert IO_JOBS * IO_WRITES <= calls <= IO_JOBS * IO_WRITES + 100, detail
    assert 0.98 <= collectors[mechanism].cpu(USER) / truth <= 1.01, (truth, detail)


@pytest.mark.parametrize("mechanism", ["children", "cgroup"])
def test_collector_as_the_partition_user(mechanism: str, partition_user, cgroup_dir, scratch: Path) -> None:
    """Not root: the collector run as the partition user itself sees its own
    processes' children's times (and IO), or reads the partition's cgroup."""
    cgroup, reason = cgroup_dir
    if mechanism == "cgroup" and cgroup is None:
        pytest.skip(reason)
    runtime = other_user_runtime()
    data = scratch / f"user-{mechanism}"
    argv = runtime.command("collect", "--user", USER, "--data-dir", str(data))
    if mechanism == "cgroup":
        argv += ["--cgroup", f"{USER}={cgroup}"]
    collector = Collector(mechanism, as_user(USER, argv), data, env=runtime.env())
    truth = run_workload("build", USER, runtime.python, scratch, [collector], cgroup if mechanism == "cgroup" else None)
    share = collector.cpu(USER) / truth
    print(f"as {USER}, build {mechanism}: {share:.2%} of {truth:.2f} s")
    assert (0.995 if mechanism == "cgroup" else 0.98) <= share <= 1.01
    rows = collector.rows(USER)
    assert {row["source"] for row in rows[2:]} == {"children" if mechanism == "children" else "cgroup-v2"}
    # Its own processes' IO counters are readable: IO is measured, not unknown.
    assert all(row["io_rw_counter"] is not None for row in rows)


# --- what the bookkeeping does with odd histories (a reboot cannot happen here: its state is written) ---

def _sample(pid: int, create: float, cpu: float, child: float = 0.0, label: str = "p", io: int = 0):
    from slapos_collect_recipe.snapshot import ProcessSample

    return ProcessSample(partition=label, pid=pid, create_time=create, cpu_percent=0.0, cpu_time=cpu,
                         cpu_num_threads=1, memory_percent=0.0, memory_rss=1000, io_rw_counter=io,
                         io_cycles_counter=io // 10)


def _compute(samples, kin, previous, now, ncpu=2, labels=("p",)):
    from slapos_collect_recipe.accounting import compute
    from slapos_collect_recipe.config import Partition

    usage, state = compute([Partition(label) for label in labels], samples, kin, previous, now, 1000.0, ncpu)
    return {u.partition: u for u in usage}, state


def test_histories_give_sane_figures(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="slapos_collect")
    now = 10_000.0
    old = _sample(100, 1500.0, 50.0, 5.0)
    _, state = _compute([old], [(1, 5.0)], None, now - 60)
    # The first run of a store counts nothing; the next counts the growth only.
    usage, state = _compute([_sample(100, 1500.0, 80.0, 5.0)], [(1, 5.0)], state, now)
    assert usage["p"].cpu_time == 30.0 and usage["p"].cpu_percent == 50.0
    # A counter that went down (not the same process after all): no negative, a log line.
    usage, state = _compute([_sample(100, 1500.0, 10.0, 5.0)], [(1, 5.0)], state, now + 60)
    assert usage["p"].cpu_time == 0.0
    assert "went down" in caplog.text
    # The pid reused by a process started since the previous run: the new one counts in full, the old ended.
    usage, state = _compute([_sample(100, now + 70, 2.0)], [(1, 0.0)], state, now + 120)
    assert (usage["p"].cpu_time, usage["p"].ended, usage["p"].processes) == (2.0, 1, 1)
    # A collector that did not run for an hour: the hour's figure, a log line, no spike.
    usage, state = _compute([_sample(100, now + 70, 1802.0)], [(1, 0.0)], state, now + 3720)
    assert usage["p"].cpu_time == 1800.0 and usage["p"].cpu_percent == 50.0
    assert "since the previous run" in caplog.text
    # Above all cores over the interval (a bogus counter): capped.
    usage, state = _compute([_sample(100, now + 70, 5000.0)], [(1, 0.0)], state, now + 3780)
    assert usage["p"].cpu_time == 120.0 and usage["p"].cpu_percent == 200.0
    # A reboot: the previous boot's processes ended; those started since count in full, never the old totals.
    state["boot_time"] = 500.0
    usage, state = _compute([_sample(7, now + 3800, 3.0)], [(1, 0.0)], state, now + 3840)
    assert (usage["p"].cpu_time, usage["p"].ended) == (3.0, 1)
    assert "rebooted" in caplog.text


def test_partitions_appearing_and_disappearing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="slapos_collect")
    now = 10_000.0
    _, state = _compute([_sample(1, 100.0, 9.0, label="a"), _sample(2, 100.0, 9.0, label="b")],
                        [(0, 0.0), (0, 0.0)], None, now - 60, labels=("a", "b"))
    # "b" is no longer configured, "c" is new and its long-running process was never seen: no spike.
    usage, _ = _compute([_sample(1, 100.0, 10.0, label="a"), _sample(3, 100.0, 500.0, label="c")],
                        [(0, 0.0), (0, 0.0)], state, now, labels=("a", "c"))
    assert set(usage) == {"a", "c"}
    assert usage["a"].cpu_time == 1.0 and usage["c"].cpu_time == 0.0 and usage["c"].processes == 1
    assert "partition c is new" in caplog.text and "partition b is no longer collected" in caplog.text


def test_child_seen_then_reaped_counts_once() -> None:
    """A child seen by a run, then reaped by its live parent: the parent's children's
    times grow by the child's whole total, less what the run had seen of it."""
    now = 10_000.0
    parent, child = _sample(10, 100.0, 1.0, 0.0, io=1000), _sample(11, 200.0, 4.0, 0.5, io=500)
    _, state = _compute([parent, child], [(1, 0.0), (10, 0.5)], None, now - 60)
    # The child used 2 s more (and its own reaped child 0.5 s), then the parent reaped it.
    usage, _ = _compute([_sample(10, 100.0, 1.5, 7.0, io=1900)], [(1, 7.0)], state, now)
    assert usage["p"].cpu_time == pytest.approx(0.5 + 7.0 - 4.5)
    assert usage["p"].io_rw_counter == 1900 - 1000 - 500
    assert usage["p"].ended == 1


def test_daemon_tail_takes_the_stray_of_its_ticks_off() -> None:
    """A daemon reaped outside its partition ends between two runs: its record's
    raw tick samples strayed 20 % above its real run time. The part after the
    last run is the record less the raw samples that run read (taskstats), at the
    real/raw ratio it saw (3.0 s real for 3.6 s raw), never the whole life's
    stray, never more than the raw ticks after the run; without the raw
    samples (a state of an older version), the record less /proc's time."""
    from slapos_collect_recipe.accounting import Ended, compute
    from slapos_collect_recipe.config import Partition

    boot, now = 1000.0, 10_000.0
    daemon = _sample(20, 1100.0, 3.0)
    key = daemon.process

    def settle(raw):
        _, state = compute([Partition("p", uid=1000)], [daemon], [(1, 0.0)], None, now - 60, boot, 2,
                           ended_records=[], uids={"p": 1000}, uptime=now - 60 - boot, raw=raw)
        # It lived 2 s after that run and its record says 4.8 s of CPU in all.
        record = Ended(uid=1000, pid=20, ppid=1, btime=1100.0, cpu=4.8, elapsed=(now - 60 - boot) - 100.0 + 2.0)
        usage, _ = compute([Partition("p", uid=1000)], [], [], state, now, boot, 2,
                           ended_records=[record], uids={"p": 1000}, uptime=now - boot)
        return usage[0]

    with_raw = settle({key: 3.6})
    assert with_raw.source == "acct" and with_raw.ended == 1
    assert with_raw.cpu_time == pytest.approx((4.8 - 3.6) * 3.01 / 3.6)
    assert settle(None).cpu_time == pytest.approx(4.8 - 3.0)  # the whole life's stray: what the raw read avoids


def test_reboot_with_accounting_counts_this_boots_daemons_only() -> None:
    """A reboot between two runs, with the node's accounting file read on: a daemon of this
    boot that ended outside the partition before the first run counts in full; a record of
    the previous boot (after its last run) is of another boot's interval: not counted."""
    from slapos_collect_recipe.accounting import Ended, compute
    from slapos_collect_recipe.config import Partition

    partitions = [Partition("p", uid=1000)]
    _, state = compute(partitions, [_sample(50, 600.0, 9.0)], [(1, 0.0)], None, 5000.0, 500.0, 2,
                       ended_records=[], uids={"p": 1000}, uptime=4500.0)
    old_boot = Ended(uid=1000, pid=50, ppid=1, btime=600.0, cpu=9.5, elapsed=4410.0)
    this_boot = Ended(uid=1000, pid=70, ppid=1, btime=9030.0, cpu=2.0, elapsed=10.0)
    usage, _ = compute(partitions, [], [], state, 9100.0, 9000.0, 2, ended_records=[old_boot, this_boot],
                       uids={"p": 1000}, uptime=100.0)
    assert (usage[0].cpu_time, usage[0].ended, usage[0].source) == (2.0, 2, "acct")


# --- bad input ---------------------------------------------------------------------------

def test_cgroup_not_a_cgroup_is_one_line_and_the_run_is_stored(data_dir: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain-dir"
    plain.mkdir()
    for _ in range(2):
        proc = run_cli("collect", "--data-dir", str(data_dir), "--user", "root", "--process-accounting", "no",
                       "--cgroup", f"root={plain}")
        assert proc.returncode == 1
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "is not a cgroup" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    rows = _usage(data_dir)
    assert len(rows) == 2 and rows[1]["source"] == "children"  # stored, with the processes' mechanism
    proc = run_cli("collect", "--data-dir", str(data_dir), "--user", "root", "--cgroup", "nobody-here=/x")
    assert proc.returncode != 0 and "no partition is labelled 'nobody-here'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cgroup_files_are_read_not_guessed(tmp_path: Path) -> None:
    from slapos_collect_recipe.cgroup import CgroupError, check_cgroup, read_usage

    with pytest.raises(CgroupError, match="no such directory"):
        check_cgroup(str(tmp_path / "missing"))
    assert check_cgroup(UNIFIED) == "cgroup-v2" if os.path.isdir(UNIFIED) else True
    if os.path.isdir("/sys/fs/cgroup/cpuacct"):
        reading = read_usage("/sys/fs/cgroup/cpuacct")
        assert reading.kind == "cgroup-v1" and reading.cpu_usec > 0


def test_a_directory_that_looks_like_a_cgroup_is_not_one(tmp_path: Path) -> None:
    """A copy of a cgroup's files (a backup, a fixture) outside a cgroup filesystem is no cgroup:
    its numbers are nobody's usage."""
    from slapos_collect_recipe.cgroup import CgroupError, check_cgroup, read_usage

    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "cgroup.controllers").write_text("cpu io memory\n")
    (fake / "cpu.stat").write_text("usage_usec 123456789\nuser_usec 1\nsystem_usec 1\n")
    (tmp_path / "cpuacct.usage").write_text("5000\n")
    for path in (fake, tmp_path):
        with pytest.raises(CgroupError, match="is not a cgroup"):
            check_cgroup(str(path))
        with pytest.raises(CgroupError, match="is not a cgroup"):
            read_usage(str(path))


@needs_root
def test_accounting_file_truncated_or_not_one(tmp_path: Path) -> None:
    """A real kernel-written file: whole records are read, a cut record or bytes
    that are not records give one line, nothing is read twice."""
    from slapos_collect_recipe import pacct

    path = tmp_path / "real.pacct"
    path.write_bytes(b"")
    with accounting_restored():
        pacct.acct(str(path))
        # Registered, so that a root collector of another session only reads it meanwhile.
        pacct.write_registry(str(path))
        pids = []
        for _ in range(5):
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            pids.append(pid)
        pacct.acct(None)
    data = path.read_bytes()
    records, used, problem = pacct.parse(data, str(path))
    assert problem is None and used == len(data) and set(pids) <= {r.pid for r in records}
    assert all(r.uid == 0 and r.cpu >= 0 for r in records if r.pid in pids)
    cut = tmp_path / "cut.pacct"
    cut.write_bytes(data[: 3 * pacct.SIZE + 30])
    problems: list[str] = []
    got, offset = pacct._read_from(str(cut), 0, problems)
    assert len(got) == 3 and offset == 3 * pacct.SIZE
    assert len(problems) == 1 and "ends in the middle of a record" in problems[0]
    junk = tmp_path / "junk.pacct"
    junk.write_bytes(b"this is not an accounting file\n" * 20 + data[: 2 * pacct.SIZE])
    problems = []
    got, offset = pacct._read_from(str(junk), 0, problems)
    assert len(got) == 2 and offset == junk.stat().st_size
    assert len(problems) == 1 and "not acct v3 records" in problems[0]
    assert pacct.comp_t(0x2001) == 8 and pacct.comp_t(100) == 100


def _record(pid: int, elapsed: float = 100.0, uid: int = 1000) -> bytes:
    """An acct v3 record as the kernel writes it (0.5 + 0.5 s of CPU)."""
    from slapos_collect_recipe import pacct

    return pacct.RECORD.pack(0, 3, 0, 0, uid, uid, pid, 1, 1_700_000_000, elapsed, 50, 50, 0, 0, 0, 0, 0, 0,
                             b"job\0".ljust(16, b"\0"))


def test_accounting_record_with_an_impossible_elapsed_time_is_not_one() -> None:
    """Bytes that pass for a record but whose elapsed time is not a number, or negative (a file
    written over): skipped as not a record, one line; never a NaN in the figures."""
    from slapos_collect_recipe import pacct

    record = _record
    data = record(10, 100.0) + record(11, float("nan")) + record(12, -5.0) + record(13, float("inf")) \
        + record(14, 200.0)
    records, used, problem = pacct.parse(data, "f")
    assert [r.pid for r in records] == [10, 14] and used == len(data)
    assert problem is not None and "not acct v3 records" in problem
    assert records[0].cpu == 1.0 and records[0].elapsed == 1.0


def test_a_long_backlog_is_read_a_piece_at_a_time_keeping_the_partitions_records(tmp_path: Path) -> None:
    """After a long collector gap the file holds a backlog of every user's records (here
    100,000, 6.4 MB): it is read a piece at a time and only the partitions' users' records
    are kept, so the run's memory does not grow with the backlog; a record cut by a piece's
    end is read whole, junk across a piece's end is skipped once."""
    import tracemalloc

    from slapos_collect_recipe import pacct

    count = 100_000
    junk_after = 3 * pacct.CHUNK // pacct.SIZE - 2  # from 64 bytes before the third piece's end
    path = tmp_path / "backlog"
    with open(path, "wb") as handle:
        for pid in range(count):
            handle.write(_record(pid, uid=1000 if pid % 100 == 0 else 2000))
            if pid == junk_after:
                handle.write(b"junk" * 40)  # written over, across pieces (not a multiple of 64)
    size = path.stat().st_size
    problems: list[str] = []
    tracemalloc.start()
    try:
        got, offset = pacct._read_from(str(path), 0, problems, uids={1000})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [r.pid for r in got] == list(range(0, count, 100)) and offset == size
    assert len(problems) == 1 and "160 bytes that are not acct v3 records" in problems[0], problems
    assert size > 6 * pacct.CHUNK and peak < 3 * pacct.CHUNK, (peak, size)  # the piece's size, not the file's
    assert len(pacct._read_from(str(path), 0, [])[0]) == count  # no filter: every record


# --- kernel accounting as root: our file, the node's file, a kill -9 before the commit -------

def _end_processes(n: int = 3) -> list[int]:
    """Start and reap ``n`` processes that end at once; their pids."""
    pids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        pids.append(pid)
    return pids


@needs_root
def test_own_accounting_file_rotated_and_removed_after_commit(tmp_path: Path, monkeypatch) -> None:
    from slapos_collect_recipe import pacct

    monkeypatch.setattr(pacct, "NODE_FILES", ())
    monkeypatch.setattr(pacct, "REGISTRY", str(tmp_path / "registry"))
    with accounting_restored():
        problems: list[str] = []
        records, state = pacct.read_ended(tmp_path, "yes", None, problems)
        assert records is None and state["file"] == str(tmp_path / "pacct.0") and not problems
        _end_processes()
        records, state = pacct.read_ended(tmp_path, "yes", state, problems)
        assert records is not None and len(records) >= 3  # ours and the probes
        monkeypatch.setattr(pacct, "ROTATE_BYTES", 0)
        _end_processes()
        records, rotated = pacct.read_ended(tmp_path, "yes", state, problems)
        assert rotated["file"] == str(tmp_path / "pacct.1") and len(records) >= 3
        # Not committed yet (the run may be killed): the old file stays until a run starts after it.
        assert (tmp_path / "pacct.0").exists()
        monkeypatch.setattr(pacct, "ROTATE_BYTES", 1 << 30)
        records, state = pacct.read_ended(tmp_path, "yes", rotated, problems)
        assert not (tmp_path / "pacct.0").exists() and (tmp_path / "pacct.1").exists()
        assert not problems
        # process-accounting = no: ours is switched off and removed.
        pacct.read_ended(tmp_path, "no", state, problems)
        assert not list(tmp_path.glob("pacct.*")) and pacct.probe([str(tmp_path / "pacct.1")]) is None


@needs_root
def test_another_collectors_file_followed_through_its_rotation(tmp_path: Path, monkeypatch) -> None:
    """Two collectors of one node (two data dirs): the second reads the file the first
    switched on and registered. When the first rotates its file, the second reads the
    rest of the old one and goes on in the new one: no interval without records, no
    record lost."""
    from slapos_collect_recipe import pacct

    monkeypatch.setattr(pacct, "NODE_FILES", ())
    monkeypatch.setattr(pacct, "REGISTRY", str(tmp_path / "registry"))
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    with accounting_restored():
        problems: list[str] = []
        _, state_a = pacct.read_ended(first, "yes", None, problems)
        _, state_b = pacct.read_ended(second, "auto", None, problems)
        assert state_b["file"] == str(first / "pacct.0") and not state_b["own"]
        _, state_a = pacct.read_ended(first, "yes", state_a, problems)
        records, state_b = pacct.read_ended(second, "auto", state_b, problems)
        assert records is not None
        before = _end_processes(2)
        monkeypatch.setattr(pacct, "ROTATE_BYTES", 0)
        _, state_a = pacct.read_ended(first, "yes", state_a, problems)
        monkeypatch.setattr(pacct, "ROTATE_BYTES", 1 << 30)
        assert state_a["file"] == str(first / "pacct.1")
        after = _end_processes(2)
        records, state_b = pacct.read_ended(second, "auto", state_b, problems)
        assert records is not None and set(before + after) <= {r.pid for r in records}, problems
        assert state_b["file"] == str(first / "pacct.1") and not problems
        again = _end_processes(1)
        records, state_b = pacct.read_ended(second, "auto", state_b, problems)
        assert {r.pid for r in records} & set(before + after) == set() and set(again) <= {r.pid for r in records}


@needs_root
def test_node_accounting_file_is_only_read_and_followed_through_rotation(tmp_path: Path, monkeypatch) -> None:
    """Accounting already on into the node's file (as Debian's acct package does):
    read there, never written, truncated or taken over; its daily rotation
    (renamed to .0, a new file switched on) loses nothing."""
    from slapos_collect_recipe import pacct

    node = tmp_path / "account" / "pacct"
    node.parent.mkdir()
    node.write_bytes(b"")
    monkeypatch.setattr(pacct, "NODE_FILES", (str(node),))
    monkeypatch.setattr(pacct, "REGISTRY", str(tmp_path / "registry"))
    with accounting_restored():
        pacct.acct(str(node))
        problems: list[str] = []
        records, state = pacct.read_ended(tmp_path / "data", "auto", None, problems)
        assert records is None and state == {"own": False, "file": str(node), "ino": node.stat().st_ino,
                                             "offset": state["offset"]}
        _end_processes(4)
        before = node.stat().st_size
        records, state = pacct.read_ended(tmp_path / "data", "auto", state, problems)
        assert len(records) >= 4 and node.stat().st_size >= before  # never truncated
        _end_processes(2)
        node.rename(node.with_name("pacct.0"))
        node.write_bytes(b"")
        pacct.acct(str(node))
        _end_processes(2)
        records, state = pacct.read_ended(tmp_path / "data", "auto", state, problems)
        assert len(records) >= 4 and state["ino"] == node.stat().st_ino and not problems
        assert not (tmp_path / "data").exists() or not list((tmp_path / "data").glob("pacct.*"))


@needs_root
def test_run_killed_before_commit_reads_the_records_again_once(partition_user, accounting_off_after,
                                                                tmp_path: Path) -> None:
    """The position in the accounting file is committed with the run: a run that
    dies before its commit (its transaction never happened: the store as it was
    before it) leaves the records to the next run, which counts them once."""
    data = tmp_path / "data"
    argv = ["collect", "--user", USER, "--data-dir", str(data), "--process-accounting", "yes"]
    run_cli(*argv, check=True)
    run_cli(*argv, check=True)
    truth = 0.0
    for _ in range(3):
        proc = __import__("subprocess").Popen(as_user(USER, ["/bin/sh", "-c", "i=0; while [ $i -lt 30000 ]; do "
                                                              "i=$((i+1)); done"]))
        _, _, usage = os.wait4(proc.pid, 0)
        truth += usage.ru_utime + usage.ru_stime
    saved = tmp_path / "saved"
    saved.mkdir()
    for name in ("collector.db", "collector.db-wal", "collector.db-shm"):
        if (data / name).exists():
            shutil.copy(data / name, saved / name)
    run_cli(*argv, check=True)
    counted = _usage(data)[-1]["cpu_time"]
    for name in ("collector.db", "collector.db-wal", "collector.db-shm"):
        (data / name).unlink(missing_ok=True)
        if (saved / name).exists():
            shutil.copy(saved / name, data / name)
    run_cli(*argv, check=True)
    again = _usage(data)
    assert len(again) == 3
    assert again[-1]["cpu_time"] == pytest.approx(counted, abs=0.05)
    assert 0.7 * truth <= again[-1]["cpu_time"] <= 1.3 * truth + 0.05, (again[-1]["cpu_time"], truth)
    assert again[-1]["source"] == "acct" and again[-1]["ended"] >= 3
