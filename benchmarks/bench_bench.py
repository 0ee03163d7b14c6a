"""The benchmark of the benchmark: how steady each ``slapos-collect bench`` figure
is from run to run on this machine, and what a run costs.

Each figure is measured by 10 runs of the real command (each run keeps the
median of its own repeats, as cron would); the spread is their coefficient of
variation (standard deviation over mean). Target: under 5 % for cpu and
sqlite. The net figures run against a real slapmonitor on loopback (a fresh
one every few runs, so that its per-client rate limit never answers 429).
Variants of the workload length show what the defaults were tuned from.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import results  # noqa: E402

from slapos_collect_recipe.bench import FIGURES  # noqa: E402

SCRIPTS = Path(sys.executable).parent
RUNS = int(os.environ.get("BENCH_BENCH_RUNS", "10"))
SECRET = "bench-of-bench-secret-0123456789"
# "real-time": the same command under SCHED_RR (root only), so that the
# machine's other processes (CFS) cannot take its CPU: what is left is the
# benchmark's own noise and the host's (SMT sibling, hypervisor).
REALTIME = ("chrt", "-r", "1") if os.geteuid() == 0 and shutil.which("chrt") else ()


def run_bench(data_dir: Path, cfg: Path, what: str, *args: str, prefix: tuple[str, ...] = ()) -> tuple[dict, float, float]:
    """One run of the real command: (its JSON, wall seconds, CPU seconds of it and its workers)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([*prefix, str(SCRIPTS / "slapos-collect"), "bench", "-c", str(cfg), "--data-dir", str(data_dir),
                           what, "--json", *args], capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"bench {what} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout), wall, cpu


def start_peer(data_dir: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([str(SCRIPTS / "slapos-collect"), "serve", "--no-tls", "--host", "127.0.0.1",
                             "--port", "0", "--data-dir", str(data_dir), "--secret", SECRET],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        match = re.search(r"listening on (\S+)", line)
        if match:
            return proc, f"{match.group(1)}{SECRET}/"
    proc.wait(10)
    raise SystemExit("the slapmonitor did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(20)


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.mean(values) * 100 if len(values) > 1 else 0.0


def measure(label: str, what: str, config_text: str, tmp: Path, peer: bool = False,
            prefix: tuple[str, ...] = ()) -> list[list[object]]:
    cfg = tmp / f"{label}.cfg"
    cfg.write_text("[bench]\n" + config_text, encoding="utf-8")
    data_dir = tmp / label
    data_dir.mkdir()
    figures: dict[str, list[float]] = {}
    spreads: dict[str, list[float]] = {}
    bests: dict[str, list[float]] = {}
    walls: list[float] = []
    cpus: list[float] = []
    server = None
    try:
        for n in range(RUNS):
            args: list[str] = []
            if peer:
                if n % 3 == 0:  # 7 transfers a run; the peer allows 30 a minute per client
                    if server:
                        stop(server)
                    peer_dir = tmp / f"{label}-peer-{n}"
                    peer_dir.mkdir()
                    server, url = start_peer(peer_dir)
                args = ["--peer", url]
            result, wall, cpu = run_bench(data_dir, cfg, what, *args, prefix=prefix)
            walls.append(wall)
            cpus.append(cpu)
            for name, value in result["values"].items():
                figures.setdefault(name, []).append(value)
                spreads.setdefault(name, []).append(result["spreads"][name])
                best = max if FIGURES[name][1] else min  # the best run: highest rate, lowest latency
                bests.setdefault(name, []).append(best(result["runs"][name]))
    finally:
        if server:
            stop(server)
    rows = []
    for name, values in figures.items():
        rows.append([label, name, f"{statistics.median(values):.4g}", f"{cv(values):.1f} %",
                     f"{cv(bests[name]):.1f} %",
                     f"{statistics.median(spreads[name]):.1f} %", f"{statistics.median(walls):.2f} s",
                     f"{statistics.median(cpus):.2f} s"])
        print(f"{label:28} {name:14} median {statistics.median(values):12.4g}  CV {cv(values):5.1f} %  "
              f"wall {statistics.median(walls):.2f} s", flush=True)
    return rows


def main() -> int:
    load_before = os.getloadavg()[0]
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-bench-") as tmp_name:
        tmp = Path(tmp_name)
        rows += measure("cpu (default: 50k loops x5)", "cpu", "", tmp)
        if REALTIME:
            rows += measure("cpu (default), real-time", "cpu", "", tmp, prefix=REALTIME)
        rows += measure("cpu (100k loops x5)", "cpu", "cpu-loops = 100000\n", tmp)
        rows += measure("sqlite (default: 100 rounds x5)", "sqlite", "", tmp)
        if REALTIME:
            rows += measure("sqlite (default), real-time", "sqlite", "", tmp, prefix=REALTIME)
        rows += measure("sqlite (200 rounds x5)", "sqlite", "sqlite-rounds = 200\n", tmp)
        rows += measure("net (default: 10 MB x3)", "net", "", tmp, peer=True)
    load_after = os.getloadavg()[0]
    markdown = (
        "### `slapos-collect bench`: run-to-run spread of each figure\n\n"
        f"{RUNS} runs of the real command per line; each run keeps the median of its own repeats. "
        "CV = standard deviation / mean of those medians (target under 5 % for cpu and sqlite); "
        "CV if best-of-N = the same runs had each kept its best repeat instead of the median (for comparison); "
        "in-run spread = median over the runs of the stored `<name>_spread` (median absolute deviation / "
        "median of one run's repeats); wall and CPU = median wall time and CPU time (the process and its "
        "workers) of one run, start-up included; the net runs' CPU excludes the peer's. "
        "Real-time: the same runs under `chrt -r 1` (SCHED_RR), out of reach of this machine's other "
        "processes, to separate the benchmark's own noise from theirs. "
        f"Net: loopback to a real slapmonitor. Load average {load_before:.1f} before, {load_after:.1f} after "
        "(the 2 cores are shared with other work, which the CPU figures feel directly).\n\n"
        + results.table(["settings", "figure", "median", "CV over runs", "CV if best-of-N", "in-run spread",
                       "wall per run",
                       "CPU per run"], rows)
    )
    results.write_section("bench", markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
