"""Workloads of a partition user, each process reporting its own CPU time, and the
collectors that measure them: shared by tests/test_accounting.py and
benchmarks/bench_accuracy.py (ground truth = the processes' own getrusage)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Runs as the partition user with the standard library only. The parent
# appends "<tag> <CPU seconds>" to the report for each child it reaps (the
# os.wait4 rusage: the child's whole life, its own reaped children included),
# the daemon its own getrusage just before it exits, and the parent its own CPU
# from "go" to "done". Microsecond precision.
WORKLOAD = r'''
import os, resource, sys, time
report, kind = sys.argv[1], sys.argv[2]
IO_JOBS, IO_WRITES, IO_BLOCK = 20, 100, 4096

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

def burn(seconds):
    end = cpu() + seconds
    x = 0
    while cpu() < end:
        for _ in range(3000):
            x += 1

def note(tag, value):
    fd = os.open(report, os.O_WRONLY | os.O_APPEND)
    os.write(fd, ("%s %.6f\n" % (tag, value)).encode())
    os.close(fd)

def short(seconds, nested):
    """A compile-like job: burns, maybe through a child of its own, and ends."""
    if nested:
        pid = os.fork()
        if pid == 0:
            burn(seconds / 2)
            os._exit(0)
        burn(seconds / 2)
        os.waitpid(pid, 0)
    else:
        burn(seconds)

def spawn(function, *args):
    pid = os.fork()
    if pid == 0:
        try:
            function(*args)
        finally:
            os._exit(0)
    return pid

def reap(pid):
    _, _, usage = os.wait4(pid, 0)
    note("proc", usage.ru_utime + usage.ru_stime)

def daemon(seconds):
    """Double fork: the middle process ends at once, the daemon is re-parented away."""
    if os.fork() == 0:
        os.setsid()
        burn(seconds)
        note("daemon", cpu())
        os._exit(0)
    os._exit(0)

print("ready", os.getpid(), flush=True)
sys.stdin.readline()
start = cpu()
if kind == "build":
    for i in range(int(os.environ.get("WORKLOAD_JOBS", "40"))):
        if i % 4 == 1:
            # A job that is another program, as a build's compiler is.
            pid = os.fork()
            if pid == 0:
                os.execv("/bin/sh", ["sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"])
            reap(pid)
        else:
            reap(spawn(short, 0.12, i % 3 == 0))
elif kind == "across":
    reap(spawn(burn, 5.0))
elif kind == "busy":
    burn(5.0)
elif kind == "io":
    # 20 jobs, each writing 100 blocks of 4 KiB (one write call each) to a file of its own; the
    # first one is seen by a run halfway (it waits), then reaped: its IO must count once.
    def writer(first):
        fd = os.open(os.path.join(os.path.dirname(report), "io-%d" % os.getpid()),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        block = b"x" * IO_BLOCK
        for i in range(IO_WRITES):
            if first and i == IO_WRITES // 2:
                time.sleep(2.5)
            os.write(fd, block)
        os.close(fd)
        burn(0.1)
    for i in range(IO_JOBS):
        reap(spawn(writer, i == 0))
elif kind == "daemon":
    reap(spawn(daemon, 4.0))
    while "daemon " not in open(report).read():
        time.sleep(0.05)
    time.sleep(0.1)  # the daemon's exit after its report
note("parent", cpu() - start)
note("done", 0)
sys.stdin.readline()
'''


# The node's supervisor, as root: starts the workload and reaps whatever is
# re-parented to it at once (a child subreaper), as supervisord or systemd do.
SUPERVISOR = r'''
import ctypes, os, sys
if ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    sys.exit("cannot become a child subreaper")
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
code = 0
while True:
    try:
        done, status = os.wait()
    except ChildProcessError:
        break
    if done == pid:
        code = os.waitstatus_to_exitcode(status)
sys.exit(code)
'''


@dataclass
class Collector:
    name: str
    argv: list[str]
    data_dir: Path
    env: dict | None = None
    runs: list[float] = field(default_factory=list)  # CPU seconds of each run (wait4)

    def run(self) -> None:
        proc = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        proc.stderr.close()
        if status != 0:
            raise AssertionError(f"collector {self.name} failed ({status}): {err.strip()}")
        self.runs.append(usage.ru_utime + usage.ru_stime)

    def rows(self, partition: str) -> list[sqlite3.Row]:
        db = sqlite3.connect(self.data_dir / "collector.db")
        db.row_factory = sqlite3.Row
        try:
            return db.execute("SELECT * FROM partition_usage WHERE partition = ? ORDER BY rowid",
                              (partition,)).fetchall()
        finally:
            db.close()

    def cpu(self, partition: str) -> float:
        return sum(row["cpu_time"] for row in self.rows(partition))


def as_user(user: str, argv: list[str]) -> list[str]:
    entry = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups", *argv]


def ensure_user(name: str) -> bool:
    """Create a system user (no home); True when created here (the caller removes it)."""
    try:
        pwd.getpwnam(name)
        return False
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       check=True)
        return True


def end_user_processes(uid: int) -> None:
    """Kill, by pid, what is left of the test user's processes (the daemon of a failed run)."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    os.kill(int(name), 9)
            except OSError:
                pass


def remove_user(name: str) -> None:
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return
    end_user_processes(uid)
    time.sleep(0.2)
    subprocess.run(["userdel", name], check=False, capture_output=True)


def run_workload(kind: str, user: str, python: str, scratch: Path, collectors: list[Collector],
                 cgroup: str | list[str] | None = None, tick: float = 2.0, jobs: int = 40) -> float:
    """Run one workload as ``user``, under a root supervisor that reaps what is
    re-parented to it, in ``cgroup`` (one directory or several: v2 and v1
    hierarchies), while every collector runs every ``tick`` s (first run
    before it starts, last after it ended); returns the true CPU seconds the
    workload used from "go" on."""
    script = scratch / "workload.py"
    script.write_text(WORKLOAD)
    script.chmod(0o644)
    report = scratch / f"report-{kind}"
    report.write_text("")
    report.chmod(0o666)
    argv = as_user(user, [python, "-I", str(script), str(report), kind])
    proc = subprocess.Popen([sys.executable, "-I", "-c", SUPERVISOR, *argv],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={"WORKLOAD_JOBS": str(jobs), "PATH": "/usr/bin:/bin"})
    try:
        ready, workload_pid = proc.stdout.readline().split()
        assert ready == "ready"
        for directory in ([cgroup] if isinstance(cgroup, str) else cgroup or []):
            with open(os.path.join(directory, "cgroup.procs"), "w") as handle:
                handle.write(workload_pid)
        for collector in collectors:
            collector.run()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 120
        while "done " not in report.read_text():
            assert time.monotonic() < deadline, "workload did not finish"
            time.sleep(tick)
            for collector in collectors:
                collector.run()
        for collector in collectors:
            collector.run()
        for collector in collectors:
            if hasattr(collector, "finish"):
                collector.finish()  # one that runs at its own pace: its last run after the workload
        proc.stdin.write("exit\n")
        proc.stdin.flush()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    truth = 0.0
    for line in report.read_text().splitlines():
        tag, value = line.split()
        if tag in ("proc", "parent", "daemon"):
            truth += float(value)
    return truth


# What the "io" workload writes: jobs x write calls x bytes per call.
IO_JOBS, IO_WRITES, IO_BLOCK = 20, 100, 4096


@contextlib.contextmanager
def own_cgroup(root: str) -> Iterator[tuple[str | None, str | None]]:
    """``(path, None)`` of a new cgroup under ``root`` (a v2 or v1 hierarchy), removed on
    leaving once its processes are gone; ``(None, reason)`` when it cannot be made."""
    path = os.path.join(root, f"slapos-collect-test-{os.getpid()}")
    try:
        os.mkdir(path)
    except OSError as exc:
        yield None, f"cannot create a cgroup under {root}: {exc.strerror}"
        return
    try:
        yield path, None
    finally:
        # The kernel frees a cgroup a moment after its last process exits.
        for _ in range(50):
            try:
                os.rmdir(path)
                break
            except OSError:
                time.sleep(0.1)


def collect_command() -> list[str]:
    """The checkout's ``slapos-collect`` (run as root)."""
    found = Path(sys.executable).parent / "slapos-collect"
    return [str(found)] if found.exists() else [shutil.which("slapos-collect") or "slapos-collect"]
