"""The kernel's raw tick-sampled CPU of a live process over taskstats (root)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest

from slapos_collect_recipe import taskstats

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="taskstats answers CAP_NET_ADMIN only")


@needs_root
def test_raw_cpu_of_a_thread_group_against_its_own_times() -> None:
    """A process whose two threads burned 0.4 s each, one of them ended: the raw
    samples count the whole thread group, the ended thread included."""
    code = ("import threading, time, sys\n"
            "def burn():\n"
            "    t = time.thread_time()\n"
            "    while time.thread_time() - t < 0.4: pass\n"
            "th = threading.Thread(target=burn); th.start(); burn(); th.join()\n"
            "print(time.process_time(), flush=True); sys.stdin.readline()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        own = float(proc.stdout.readline())
        reader = taskstats.open_taskstats()
        assert reader is not None
        try:
            raw = reader.raw_cpu(proc.pid)
        finally:
            reader.close()
        # Tick samples of 0.8 s of CPU: within a few ticks, never the main thread's 0.4 s alone.
        assert raw is not None and abs(raw - own) < 0.15, (raw, own)
    finally:
        proc.stdin.close()
        proc.wait()


@needs_root
def test_a_process_that_is_gone_gives_none() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    reader = taskstats.open_taskstats()
    assert reader is not None
    try:
        assert reader.raw_cpu(proc.pid) is None
        usage = resource.getrusage(resource.RUSAGE_SELF)
        mine = reader.raw_cpu(os.getpid())
        assert mine is not None and mine <= usage.ru_utime + usage.ru_stime + 1.0
    finally:
        reader.close()


def test_not_answered_is_none_not_a_traceback(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(taskstats.socket, "socket", refuse)
    assert taskstats.open_taskstats() is None
