"""Partition memory counted once (memory.py), against real processes of real users.

Ground truth is what each workload touched itself: a prefork parent that wrote
N MB of private memory before forking workers holds N MB once, however many
processes map it. The collector runs as the partition user, as another
unprivileged user and as root, from a copy of the package any user can run.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli
from other_user import other_user_runtime, shared_dir

from slapos_collect_recipe import memory
from slapos_collect_recipe.snapshot import PartitionUsage, ProcessSample

MB = 1 << 20
PYTHON = "/usr/bin/python3"
OWNER, OTHER = "sc-mem0", "sc-mem1"
UNIFIED = Path("/sys/fs/cgroup/unified")
V1_MEMORY = Path("/sys/fs/cgroup/memory")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates users, cgroups, drops privileges")

# The workload (a program): run as the partition user, its text passed by -c.
WORKLOAD = (Path(__file__).with_name("prefork.py")).read_text()

# What one collection run computes for one partition, as whoever runs it.
MEASURE = r"""
import json, logging, pwd, sys, time
import psutil
from slapos_collect_recipe import memory, sample
from slapos_collect_recipe.config import Partition
from slapos_collect_recipe.snapshot import PartitionUsage
logging.basicConfig(level=logging.INFO, format="%(message)s")
user, cgroup = sys.argv[1], sys.argv[2]
part = Partition(label=user, uid=pwd.getpwnam(user).pw_uid)
now = time.time()
procs, _, _ = sample.sample_processes(sample.find_processes([part]), now, {}, None,
                                      psutil.virtual_memory().total, 100.0)
usage = [PartitionUsage(user, 0.0, 0.0, len(procs), 0, sum(p.memory_rss for p in procs), None, None, "live")]
memory.fill(usage, procs, {user: cgroup} if cgroup else {}, None, now, 0)
print(json.dumps({"used": usage[0].memory_used, "source": usage[0].memory_source,
                  "rss": usage[0].memory_rss, "processes": len(procs)}))
"""


def _ensure_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       check=True)


@pytest.fixture(scope="module")
def users() -> Iterator[dict[str, int]]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create users")
    created = []
    for name in (OWNER, OTHER):
        try:
            pwd.getpwnam(name)
        except KeyError:
            _ensure_user(name)
            created.append(name)
    try:
        yield {name: pwd.getpwnam(name).pw_uid for name in (OWNER, OTHER)}
    finally:
        for name in created:
            subprocess.run(["userdel", name], check=False, capture_output=True)


class Workload:
    """One workload process group of the partition user, killed by its id at the end."""

    def __init__(self, mb: int, workers: int, user: str = OWNER) -> None:
        self.mb = mb
        self.proc = subprocess.Popen([PYTHON, "-S", "-c", WORKLOAD, str(mb), str(workers), "wait"], user=user,
                                     cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.pids: list[int] = []

    def start(self) -> Workload:
        """Let it touch its memory and fork; returns once every worker runs."""
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        self.pids = [int(p) for p in self.proc.stdout.readline().split()]
        assert self.pids, "the workload did not start"
        return self

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        for pid in self.pids[1:]:  # workers, re-parented: wait until they are reaped
            deadline = time.monotonic() + 10
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                time.sleep(0.02)


@pytest.fixture
def workloads() -> Iterator[list[Workload]]:
    started: list[Workload] = []
    try:
        yield started
    finally:
        for load in started:
            load.stop()


def spawn(workloads: list[Workload], mb: int, workers: int, *cgroups: Path) -> Workload:
    """A workload, moved into ``cgroups`` before it touches its memory and forks."""
    load = Workload(mb, workers)
    workloads.append(load)
    for cgroup in cgroups:
        (cgroup / "cgroup.procs").write_text(str(load.proc.pid))
    return load.start()


def measure(as_user: str | None, partition: str = OWNER, cgroup: Path | None = None) -> tuple[dict, str]:
    """One run of the memory sampler for ``partition``, as ``as_user`` (None: root)."""
    runtime = other_user_runtime()
    code = f"import sys; sys.path[:0] = [{str(runtime.path)!r}]\n" + MEASURE
    proc = subprocess.run([runtime.python, "-S", "-c", code, partition, str(cgroup or "")],
                          user=as_user, capture_output=True, text=True, timeout=60, env=runtime.env(), cwd="/")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def pss_truth(pids: list[int]) -> int:
    """The kernel's PSS of ``pids``, read here as root."""
    return sum(memory.process_pss(pid) or 0 for pid in pids)


# An interpreter's own pages: what a process holds beyond what it touched.
SLACK = 48 * MB


@needs_root
@pytest.mark.parametrize("as_user", [OWNER, None], ids=["as-partition-user", "as-root"])
def test_prefork_counted_once(users: dict, workloads: list[Workload], as_user: str | None) -> None:
    """A parent that touched 128 MB and forked 8 workers: about 128 MB, not 9 x 128."""
    load = spawn(workloads, 128, 8)
    figure, log = measure(as_user)
    touched = load.mb * MB
    assert figure["processes"] == 9
    assert figure["source"] == "pss", log
    assert figure["rss"] >= 8 * touched, "every worker maps the parent's pages"
    assert touched * 0.95 <= figure["used"] <= touched + SLACK, (figure, touched)
    assert figure["used"] < figure["rss"] / 6
    assert abs(figure["used"] - pss_truth(load.pids)) < 8 * MB
    assert "unreadable" not in log


@needs_root
def test_independent_processes_pss_close_to_rss(users: dict, workloads: list[Workload]) -> None:
    """Four processes that each touched 64 MB of their own: PSS within 12 % of RSS."""
    loads = [spawn(workloads, 64, 0) for _ in range(4)]
    figure, _ = measure(OWNER)
    assert figure["processes"] == 4 and figure["source"] == "pss"
    assert 4 * 64 * MB * 0.95 <= figure["used"] <= figure["rss"]
    assert figure["used"] >= 0.88 * figure["rss"], figure
    assert abs(figure["used"] - pss_truth([p for load in loads for p in load.pids])) < 8 * MB


@needs_root
def test_unreadable_smaps_rollup_falls_back_to_rss(users: dict, workloads: list[Workload]) -> None:
    """Another unprivileged user cannot read the partition's smaps_rollup: each process counts
    with its RSS, the figure is marked pss-partial and the count logged."""
    spawn(workloads, 32, 3)
    figure, log = measure(OTHER)
    assert figure["processes"] == 4
    assert figure["source"] == "pss-partial"
    assert figure["used"] == figure["rss"]
    assert "4 processes' smaps_rollup unreadable" in log and f"pss-partial: {OWNER})" in log


def _remove_cgroup(path: Path) -> None:
    deadline = time.monotonic() + 10
    while True:
        # The test's workloads are the only processes in it: end them by their pids.
        for pid in (path / "cgroup.procs").read_text().split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            path.rmdir()
            return
        except OSError as exc:  # EBUSY until the last process is reaped
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def new_cgroup() -> Iterator:
    """``new_cgroup(hierarchy)``: a new cgroup there (skips when not writable); all removed at the
    end, even on failure."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create cgroups")
    made: list[Path] = []

    def make(root: Path) -> Path:
        if not os.access(root, os.W_OK):
            pytest.skip(f"{root} is not writable here")
        path = root / f"sc-mem-test-{os.getpid()}"
        path.mkdir()
        made.append(path)
        return path

    try:
        yield make
    finally:
        for path in reversed(made):
            _remove_cgroup(path)


@pytest.fixture
def cgroup_dir(request, new_cgroup) -> Path:
    """A new cgroup under the hierarchy given as the parameter."""
    return new_cgroup(request.param)


@pytest.fixture
def v2_memory() -> Iterator[None]:
    """The unified hierarchy's root hands the memory controller to its children (enabled here when it
    can, and disabled again at the end); skips where memory is bound to v1 (the hybrid layout)."""
    if os.geteuid() != 0 or not (UNIFIED / "cgroup.subtree_control").exists():
        pytest.skip("needs root and a unified cgroup hierarchy")
    control = UNIFIED / "cgroup.subtree_control"
    if "memory" in control.read_text().split():
        yield
        return
    if "memory" not in (UNIFIED / "cgroup.controllers").read_text().split():
        pytest.skip("the memory controller is not available in the unified hierarchy here (bound to v1)")
    try:
        control.write_text("+memory")
    except OSError as exc:
        pytest.skip(f"cannot enable the memory controller in {control}: {exc.strerror}")
    try:
        yield
    finally:
        try:
            control.write_text("-memory")
        except OSError:
            pass  # other cgroups use it by now: left enabled


@needs_root
def test_cgroup_v2_memory(users: dict, workloads: list[Workload], v2_memory: None, new_cgroup) -> None:
    """A partition in a real cgroup v2 with the memory controller: its working set."""
    cgroup_dir = new_cgroup(UNIFIED)
    assert (cgroup_dir / "memory.current").exists()
    load = spawn(workloads, 128, 8, cgroup_dir)
    figure, _ = measure(OWNER, cgroup=cgroup_dir)
    assert figure["source"] == "cgroup-v2"
    assert load.mb * MB * 0.95 <= figure["used"] <= load.mb * MB + SLACK


@needs_root
@pytest.mark.parametrize("cgroup_dir", [UNIFIED], indirect=True)
def test_cgroup_v2_without_memory_controller_uses_pss(users: dict, workloads: list[Workload],
                                                      cgroup_dir: Path) -> None:
    """A cgroup v2 whose parent does not hand it the memory controller has no memory.current:
    the partition's PSS stands instead."""
    if (cgroup_dir / "memory.current").exists():
        pytest.skip("the memory controller is enabled here: covered by test_cgroup_v2_memory")
    load = spawn(workloads, 64, 4, cgroup_dir)
    assert str(load.proc.pid) in (cgroup_dir / "cgroup.procs").read_text().split()
    figure, _ = measure(OWNER, cgroup=cgroup_dir)
    assert figure["source"] == "pss"
    assert load.mb * MB * 0.95 <= figure["used"] <= load.mb * MB + SLACK


@needs_root
@pytest.mark.skipif(not (V1_MEMORY / "memory.usage_in_bytes").exists(), reason="no cgroup v1 memory hierarchy")
@pytest.mark.parametrize("cgroup_dir", [V1_MEMORY], indirect=True)
@pytest.mark.parametrize("as_user", [OWNER, None], ids=["as-partition-user", "as-root"])
def test_cgroup_v1_memory(users: dict, workloads: list[Workload], cgroup_dir: Path, as_user: str | None) -> None:
    """A partition in a real v1 memory cgroup: usage minus inactive file cache, about what it touched."""
    load = spawn(workloads, 128, 8, cgroup_dir)
    figure, _ = measure(as_user, cgroup=cgroup_dir)
    assert figure["source"] == "cgroup-v1"
    assert load.mb * MB * 0.95 <= figure["used"] <= load.mb * MB + SLACK
    assert figure["used"] < figure["rss"] / 6


@needs_root
@pytest.mark.skipif(not (V1_MEMORY / "memory.usage_in_bytes").exists(), reason="no cgroup v1 memory hierarchy")
def test_hybrid_layout_reads_the_v1_memory_cgroup(users: dict, workloads: list[Workload], new_cgroup) -> None:
    """The hybrid layout: the partition's cgroup is given in the unified hierarchy (for CPU and IO),
    memory is a v1 controller: the same path in the v1 memory hierarchy is read."""
    unified = new_cgroup(UNIFIED)
    if (unified / "memory.current").exists():
        pytest.skip("the memory controller is in the unified hierarchy here: not the hybrid layout")
    v1 = new_cgroup(V1_MEMORY)
    load = spawn(workloads, 128, 8, unified, v1)
    figure, _ = measure(OWNER, cgroup=unified)
    assert figure["source"] == "cgroup-v1"
    assert load.mb * MB * 0.95 <= figure["used"] <= load.mb * MB + SLACK


@needs_root
def test_hybrid_layout_twin_without_the_partitions_processes_is_not_read(users: dict, workloads: list[Workload],
                                                                         new_cgroup) -> None:
    """The same path exists in the v1 memory hierarchy, but the partition's processes are not in it
    (another cgroup that happens to have that name): its figure is not the partition's, the PSS sum is."""
    unified = new_cgroup(UNIFIED)
    if (unified / "memory.current").exists():
        pytest.skip("the memory controller is in the unified hierarchy here: not the hybrid layout")
    new_cgroup(V1_MEMORY)  # the twin: empty
    load = spawn(workloads, 128, 8, unified)
    figure, _ = measure(OWNER, cgroup=unified)
    assert figure["source"] == "pss", figure
    assert load.mb * MB * 0.95 <= figure["used"] <= load.mb * MB + SLACK


def _samples(pids: list[int], label: str = OWNER) -> list[ProcessSample]:
    from slapos_collect_recipe import sample

    found, _, _ = sample.sample_processes([(pid, label) for pid in pids], time.time(), {}, None, 1 << 34, 100.0)
    return found


def _usage(samples: list[ProcessSample], label: str = OWNER) -> list[PartitionUsage]:
    return [PartitionUsage(label, 0.0, 0.0, len(samples), 0, sum(s.memory_rss for s in samples), None, None,
                           "live")]


@needs_root
def test_memory_cycle_carries_the_last_figure(users: dict, workloads: list[Workload]) -> None:
    """A partition whose PSS walk is dear (here 1.5 GB of RSS summed) is re-read every memory-cycle
    seconds; between reads its last figure is carried, stamped with the time it was taken."""
    load = spawn(workloads, 160, 8)
    procs = _samples(load.pids)
    assert memory.walk_cost(sum(p.memory_rss for p in procs), len(procs)) > memory.CHEAP_WALK
    epoch = 1_700_000_000.0  # 22:13:20 UTC
    first = _usage(procs)
    state = memory.fill(first, procs, {}, None, epoch, 300)
    assert first[0].memory_source == "pss"
    assert load.mb * MB * 0.95 <= first[0].memory_used <= load.mb * MB + SLACK

    for minute in (1, 2, 3, 4):
        carried = _usage(procs)
        state = memory.fill(carried, procs, {}, state, epoch + 60 * minute, 300)
        assert carried[0].memory_source == "pss@22:13:20"
        assert carried[0].memory_used == first[0].memory_used

    due = _usage(procs)
    state = memory.fill(due, procs, {}, state, epoch + 300, 300)
    assert due[0].memory_source == "pss"
    after = _usage(procs)
    memory.fill(after, procs, {}, state, epoch + 360, 300)
    assert after[0].memory_source == "pss@22:18:20"

    # A worker gone: the process count changed, the figure is read again at once.
    os.kill(load.pids[-1], signal.SIGKILL)
    fewer = [p for p in procs if p.pid != load.pids[-1]]
    changed = _usage(fewer)
    memory.fill(changed, fewer, {}, state, epoch + 420, 300)
    assert changed[0].memory_source == "pss"

    # A state this version did not write: read again, no error.
    for odd in ({"partitions": {OWNER: {"epoch": "x"}}}, {"partitions": []}, [], {"partitions": {OWNER: 3}}):
        fresh = _usage(fewer)
        memory.fill(fresh, fewer, {}, odd, epoch + 430, 300)
        assert fresh[0].memory_source == "pss"

    # memory-cycle 0: every run.
    always = _usage(fewer)
    memory.fill(always, fewer, {}, state, epoch + 361, 0)
    assert always[0].memory_source == "pss"


@needs_root
def test_cheap_partition_read_every_run(users: dict, workloads: list[Workload]) -> None:
    """A partition whose walk is cheap (three processes, 70 MB of RSS summed) is walked every run."""
    load = spawn(workloads, 16, 2)
    procs = _samples(load.pids)
    assert memory.walk_cost(sum(p.memory_rss for p in procs), len(procs)) <= memory.CHEAP_WALK
    state = memory.fill(_usage(procs), procs, {}, None, 1_700_000_000.0, 300)
    again = _usage(procs)
    memory.fill(again, procs, {}, state, 1_700_000_060.0, 300)
    assert again[0].memory_source == "pss"


def _proc_tree(root: Path, entries: dict[int, str | None]) -> None:
    for pid, rollup in entries.items():
        (root / str(pid)).mkdir()
        if rollup is not None:
            (root / str(pid) / "smaps_rollup").write_text(rollup)


def test_fixture_proc_tree(tmp_path: Path) -> None:
    """On a /proc-like tree: Pss in kB; no smaps_rollup (a kernel before 4.14): RSS stands in;
    a process gone between the sample and the read: nothing; no Pss line (a zombie): nothing."""
    _proc_tree(tmp_path, {
        10: "5576c1791000-7ffd13f8e000 ---p 00000000 00:00 0 [rollup]\nRss:  1732 kB\nPss:   109 kB\n",
        11: None,
        12: "",
    })
    samples = [ProcessSample(OWNER, pid, 0.0, 0.0, 0.0, 1, 0.0, 4096 * pid, None, None) for pid in (10, 11, 12, 13)]
    usage = _usage(samples) + [PartitionUsage("empty", 0.0, 0.0, 0, 0, 0, None, None, "live")]
    memory.fill(usage, samples, {}, None, time.time(), 300, proc_root=str(tmp_path))
    assert (usage[0].memory_used, usage[0].memory_source) == (109 * 1024 + 4096 * 11, "pss-partial")
    assert (usage[1].memory_used, usage[1].memory_source) == (0, "pss")
    # No /proc at all (not Linux): every RSS stands in, never a false 0.
    usage = _usage(samples)
    memory.fill(usage, samples, {}, None, time.time(), 300, proc_root=str(tmp_path / "none"))
    assert (usage[0].memory_used, usage[0].memory_source) == (4096 * (10 + 11 + 12 + 13), "pss-partial")


def test_cgroup_files_on_a_fixture_tree(tmp_path: Path) -> None:
    """v2 and v1 working sets from their files; a cgroup without the memory controller gives None."""
    v2, v1, bare = tmp_path / "v2", tmp_path / "v1", tmp_path / "bare"
    for path in (v2, v1, bare):
        path.mkdir()
    (v2 / "memory.current").write_text("1000000\n")
    (v2 / "memory.stat").write_text("anon 600000\nfile 400000\nactive_file 150000\ninactive_file 250000\n")
    (v1 / "memory.usage_in_bytes").write_text("900000\n")
    (v1 / "memory.stat").write_text("inactive_file 1\ntotal_inactive_file 100000\n")
    (bare / "cpu.stat").write_text("usage_usec 1\n")
    assert memory.cgroup_memory(str(v2)) == memory.Figure(750000, "cgroup-v2")
    assert memory.cgroup_memory(str(v1)) == memory.Figure(800000, "cgroup-v1")
    assert memory.cgroup_memory(str(bare)) is None
    assert memory.cgroup_memory(str(tmp_path / "gone")) is None


def test_memory_files_outside_a_cgroup_filesystem_are_not_read(tmp_path: Path) -> None:
    """A directory holding copies of a cgroup's memory files is not the partition's cgroup: its
    processes' PSS is the figure, never the copy's numbers."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "memory.current").write_text("999999999\n")
    (fake / "memory.stat").write_text("inactive_file 0\n")
    usage = _usage([])
    memory.fill(usage, [], {OWNER: str(fake)}, None, time.time(), 0)
    assert (usage[0].memory_used, usage[0].memory_source) == (0, "pss")


def _usage_rows(db: Path) -> list[sqlite3.Row]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return con.execute("SELECT * FROM partition_usage ORDER BY date, time").fetchall()
    finally:
        con.close()


@needs_root
@pytest.mark.parametrize("as_user", [OWNER, None], ids=["as-partition-user", "as-root"])
def test_collect_stores_memory_used(users: dict, workloads: list[Workload], as_user: str | None) -> None:
    """A real ``collect`` run stores the prefork's memory counted once beside its RSS sum; with
    memory-cycle the next run carries it, stamped."""
    load = spawn(workloads, 160, 8)
    runtime = other_user_runtime()
    work = shared_dir("collect-memory-")
    try:
        argv = runtime.command("collect", "--data-dir", str(work / "data"), "--user", OWNER,
                               "--log-file", str(work / "log"), "--memory-cycle", "600",
                               "--process-accounting", "no")  # the machine's accounting left alone
        for _ in range(2):
            proc = subprocess.run(argv, user=as_user, capture_output=True, text=True, timeout=60,
                                  env=runtime.env(), cwd=work)
            assert proc.returncode == 0, proc.stderr
        first, second = _usage_rows(work / "data" / "collector.db")
        touched = load.mb * MB
        assert first["memory_source"] == "pss"
        assert touched * 0.95 <= first["memory_used"] <= touched + SLACK
        assert first["memory_rss"] >= 8 * touched
        assert second["memory_source"] == f"pss@{first['time']}"
        assert second["memory_used"] == first["memory_used"]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_memory_cycle_setting(tmp_path: Path, data_dir: Path) -> None:
    """--memory-cycle over the config file's memory-cycle; bad values: one line, non-zero exit."""
    from argparse import Namespace

    from slapos_collect_recipe import config

    cfg = tmp_path / "collect.cfg"
    cfg.write_text(f"[slapos-collect]\ndata-dir = {data_dir}\nmemory-cycle = 120\n")
    args = Namespace(config=str(cfg), data_dir=None, log_file=None, user=[], partition=[], slapos_cfg=None)
    assert config.collect_settings(args).memory_cycle == 120
    args.memory_cycle = 0
    assert config.collect_settings(args).memory_cycle == 0
    assert config.collect_settings(Namespace(data_dir=str(data_dir))).memory_cycle == 300
    for bad in ("--memory-cycle=-1", "--memory-cycle=90000"):
        proc = run_cli("collect", "--data-dir", str(data_dir), bad)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "memory-cycle" in proc.stderr, proc.stderr
    cfg.write_text("[slapos-collect]\nmemory-cycle = often\n")
    proc = run_cli("collect", "-c", str(cfg), "--data-dir", str(data_dir))
    assert proc.returncode != 0 and "memory-cycle" in proc.stderr and "Traceback" not in proc.stderr


@needs_root
@pytest.mark.skipif(not (V1_MEMORY / "memory.usage_in_bytes").exists(), reason="no cgroup v1 memory hierarchy")
def test_collect_with_cgroup_stores_its_memory(users: dict, workloads: list[Workload], new_cgroup,
                                               data_dir: Path) -> None:
    """``collect --cgroup`` (as root): the partition's memory is its cgroup's, never carried."""
    unified = new_cgroup(UNIFIED)
    memory_dirs = [unified] if (unified / "memory.current").exists() else [unified, new_cgroup(V1_MEMORY)]
    load = spawn(workloads, 160, 8, *memory_dirs)
    for _ in range(2):
        run_cli("collect", "--data-dir", str(data_dir), "--user", OWNER, "--cgroup", f"{OWNER}={unified}",
                "--process-accounting", "no", check=True)
    rows = _usage_rows(data_dir / "collector.db")
    assert [r["memory_source"] for r in rows] == ["cgroup-v2" if len(memory_dirs) == 1 else "cgroup-v1"] * 2
    for row in rows:
        assert load.mb * MB * 0.95 <= row["memory_used"] <= load.mb * MB + SLACK
        assert row["memory_rss"] >= 8 * load.mb * MB
