"""``slapos-collect bench``: measure the machine's degradation over time.

Figures (each the median of N runs, with its spread):

- ``cpu_single``, ``cpu_all``: Pystone, pystones/s on one core and summed over
  one process per usable core;
- ``sqlite_ops``: a fixed SQLite mix (bench_measure.bench_workload) on a temporary
  database in the data dir's filesystem, operations/s; ``sqlite_fsync``: the
  latency of ``os.fsync`` after a small write there, ms;
- ``net_download``, ``net_upload`` (MB/s, 10^6 bytes) and ``net_latency`` (ms)
  against a peer slapmonitor's ``bench/download`` and ``bench/upload`` routes.

One run is all or nothing: the figures are measured under the collect lock
(so never during a collection), within a hard time limit, then stored in one
transaction with one UTC stamp. Each figure is compared with the machine's own
baseline (the median of its first ``baseline-days`` of results, kept in the
store's state so that garbage collection cannot move it, or a configured
reference); ``benchmark_status.json`` says which figures fell below
``threshold`` times their baseline.

This module is the command: flags and ``[bench]`` settings, the run under the
lock and the time limit, and the storing. The parts: ``bench_measure`` (cpu,
sqlite), ``bench_peer`` (net, against a peer's routes), ``bench_verdict``
(baselines and status, pure functions).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import config, lock, realtime
from .atomic import write_atomic
from .bench_measure import measure_cpu, measure_sqlite
from .bench_peer import MAX_NET_BYTES, PeerClient, measure_net
from .bench_verdict import FIGURES, build_status, spread_percent, update_baselines
from .datafiles import BENCH_STATUS, BENCHMARK_PREFIX, DB_NAME, csv_name
from .errors import CollectError
from .settings import COLLECT, Kind, Setting, add_flags, boolean, integer, number, resolve, text
from .store import BACKGROUND_TIMEOUT, Store

log = logging.getLogger("slapos_collect")

SECTION = "bench"
KINDS = ("cpu", "sqlite", "net")
SPREAD_SUFFIX = "_spread"
BASELINE_STATE = "bench_baseline"
DEFAULT_REPEAT = {"cpu": 5, "sqlite": 5, "net": 3}
DEFAULT_THRESHOLD = 0.7
DEFAULT_BASELINE_DAYS = 7
DEFAULT_TIMEOUT = 40.0
DEFAULT_LOCK_WAIT = 20.0
DEFAULT_CPU_LOOPS = 50000
DEFAULT_SQLITE_ROUNDS = 100
DEFAULT_NET_BYTES = 10_000_000
COLLECT_HEAD_START = 3.0  # seconds


# -- settings ----------------------------------------------------------------


@dataclass
class Peer:
    scheme: str
    host: str
    port: int
    base_path: str  # "/<secret>/"

    @property
    def label(self) -> str:
        """host:port, never the secret (it must not reach logs)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass
class BenchSettings:
    data_dir: Path
    kinds: list[str]
    peer: Peer | None = None
    peer_ca: str | None = None
    peer_verify: bool = True
    repeat: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_REPEAT))
    threshold: float = DEFAULT_THRESHOLD
    baseline_days: int = DEFAULT_BASELINE_DAYS
    references: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)  # per figure, over threshold
    confirm_runs: int = 1
    timeout: float = DEFAULT_TIMEOUT
    lock_wait: float = DEFAULT_LOCK_WAIT
    cpu_loops: int = DEFAULT_CPU_LOOPS
    sqlite_rounds: int = DEFAULT_SQLITE_ROUNDS
    net_bytes: int = DEFAULT_NET_BYTES
    log_file: str | None = None
    as_json: bool = False


def _bench(key: str, kind: Kind = text, default: Any = None, **declared: Any) -> Setting:
    """A setting of the ``[bench]`` section."""
    return Setting(key, kind, default, sections=(SECTION,), **declared)


def _peer(url: str) -> Peer:
    """A peer's secret base URL; errors never repeat the secret."""
    example = "e.g. https://[2001:db8::1]:9443/SECRET/"
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc}); {example}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"must be an http:// or https:// URL, {example}")
    if not host:
        raise ValueError(f"has no host; {example}")
    if parts.query or parts.fragment:
        raise ValueError(f"must not have a query or fragment; {example}")
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) != 1:
        raise ValueError(f"must end with the peer's secret, as in /SECRET/; {example}")
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return Peer(parts.scheme, host, port, f"/{segments[0]}/")


PEER = _bench("peer", _peer, flag="--peer", metavar="URL",
              help="a peer slapmonitor's secret base URL, http(s)://HOST:PORT/SECRET/")
PEER_CA = _bench("peer-ca", flag="--peer-ca", metavar="FILE",
                 help="trust this CA or self-signed certificate for an https peer")
PEER_VERIFY = _bench("peer-verify", boolean, True, flag="--peer-insecure", switch=False, dest="peer_verify",
                     help="do not verify an https peer's certificate")
REPEAT = _bench("repeat", integer(1), flag="--repeat", metavar="N",
                help="runs per figure; the median is kept (default 5 for cpu and sqlite, 3 for net)")
TIMEOUT = _bench("timeout", number(1.0, 3600.0, unit="seconds"), DEFAULT_TIMEOUT, flag="--timeout",
                 metavar="SECONDS", help=f"stop and store nothing after this long (default {DEFAULT_TIMEOUT:g})")
LOCK_WAIT = _bench("lock-wait", number(0.0, 3600.0, unit="seconds"), DEFAULT_LOCK_WAIT, flag="--lock-wait",
                   metavar="SECONDS",
                   help=f"wait this long for a running collection to end (default {DEFAULT_LOCK_WAIT:g})")
AS_JSON = Setting("json", flag="--json", dest="as_json", switch=True, default=False,
                  help="print this run's figures and the status as JSON on stdout")
THRESHOLD = _bench("threshold", number(0.0, 1.0), DEFAULT_THRESHOLD)
BASELINE_DAYS = _bench("baseline-days", integer(1), DEFAULT_BASELINE_DAYS)
CONFIRM_RUNS = _bench("confirm-runs", integer(1), 1)
CPU_LOOPS = _bench("cpu-loops", integer(1000), DEFAULT_CPU_LOOPS)
SQLITE_ROUNDS = _bench("sqlite-rounds", integer(1), DEFAULT_SQLITE_ROUNDS)
NET_BYTES = _bench("net-bytes", integer(1000, MAX_NET_BYTES, high_reason="the slapmonitor's cap"), DEFAULT_NET_BYTES)
# One threshold and one reference per figure: threshold-<figure>, reference-<figure>.
THRESHOLDS = {name: _bench(f"threshold-{name}", number(0.0, 1.0)) for name in FIGURES}
REFERENCES = {name: _bench(f"reference-{name}", number(above=0.0)) for name in FIGURES}
BENCH_LOG_FILE = replace(config.LOG_FILE, sections=(SECTION, COLLECT))
BENCH_SETTINGS = (config.CONFIG, config.DATA_DIR, BENCH_LOG_FILE, PEER, PEER_CA, PEER_VERIFY, REPEAT, TIMEOUT,
                  LOCK_WAIT, AS_JSON, THRESHOLD, BASELINE_DAYS, CONFIRM_RUNS, CPU_LOOPS, SQLITE_ROUNDS, NET_BYTES,
                  *THRESHOLDS.values(), *REFERENCES.values())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, BENCH_SETTINGS[:3])
    parser.add_argument("what", choices=(*KINDS, "all"),
                        help="which benchmark; all = cpu, sqlite, and net when a peer is configured")
    add_flags(parser, BENCH_SETTINGS[3:])


def bench_settings(args: argparse.Namespace) -> BenchSettings:
    cp = config.load_config(args)
    for key in cp.options(SECTION) if cp.has_section(SECTION) else ():
        prefix, sep, name = key.partition("-")
        if prefix in ("threshold", "reference") and sep and name not in FIGURES:
            raise CollectError(f"[{SECTION}] {key}: unknown benchmark {name!r} (one of {', '.join(FIGURES)})")
    got = resolve(BENCH_SETTINGS, args, cp)
    kinds = list(KINDS) if args.what == "all" else [args.what]
    peer = got[PEER.key]
    if peer is None:
        if args.what == "net":
            raise CollectError("the net benchmark needs a peer: --peer URL or [bench] peer")
        if "net" in kinds:
            kinds.remove("net")
    peer_ca = got[PEER_CA.key] or None
    if peer_ca and not os.access(peer_ca, os.R_OK):
        raise CollectError(f"peer CA file {peer_ca} is not readable")
    repeat = dict(DEFAULT_REPEAT) if got[REPEAT.key] is None else dict.fromkeys(KINDS, got[REPEAT.key])
    return BenchSettings(
        data_dir=config.resolve_data_dir(got[config.DATA_DIR.key]),
        kinds=kinds,
        peer=peer,
        peer_ca=peer_ca,
        peer_verify=got[PEER_VERIFY.key],
        repeat=repeat,
        threshold=got[THRESHOLD.key],
        baseline_days=got[BASELINE_DAYS.key],
        references={name: got[s.key] for name, s in REFERENCES.items() if got.given(s.key)},
        thresholds={name: got[s.key] for name, s in THRESHOLDS.items() if got.given(s.key)},
        confirm_runs=got[CONFIRM_RUNS.key],
        timeout=got[TIMEOUT.key],
        lock_wait=got[LOCK_WAIT.key],
        cpu_loops=got[CPU_LOOPS.key],
        sqlite_rounds=got[SQLITE_ROUNDS.key],
        net_bytes=got[NET_BYTES.key],
        log_file=got[BENCH_LOG_FILE.key] or None,
        as_json=got[AS_JSON.key],
    )


# -- the time limit ------------------------------------------------------------


class TimeLimit(CollectError):
    exit_code = 1


@contextmanager
def time_limit(seconds: float) -> Iterator[Callable[[], float]]:
    """A hard limit on the wall time of the block: SIGALRM raises TimeLimit
    wherever the main thread is (a Pystone loop, a socket read); the block's
    ``finally`` clauses clean up. SIGTERM (a stopping cron daemon) is turned
    into an error the same way. Yields a function giving the seconds left."""
    end = time.monotonic() + seconds

    def expire(signum, frame):
        raise TimeLimit(f"timed out after {seconds:g} s; nothing stored")

    def terminated(signum, frame):
        raise CollectError("terminated; nothing stored", exit_code=143)

    previous = signal.signal(signal.SIGALRM, expire)
    previous_term = signal.signal(signal.SIGTERM, terminated)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield lambda: max(0.001, end - time.monotonic())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        signal.signal(signal.SIGTERM, previous_term)


# -- measuring -----------------------------------------------------------------


def measure(settings: BenchSettings) -> dict[str, list[float]]:
    """Every figure of the chosen benchmarks, all runs, within the time limit."""
    runs: dict[str, list[float]] = {}
    with time_limit(settings.timeout) as remaining:
        # net first: a bad peer fails fast, before seconds of CPU work.
        if "net" in settings.kinds:
            assert settings.peer is not None
            client = PeerClient(settings.peer, settings.peer_verify, settings.peer_ca, remaining)
            runs.update(measure_net(client, settings.repeat["net"], settings.net_bytes))
        if "cpu" in settings.kinds:
            runs.update(measure_cpu(settings.repeat["cpu"], settings.cpu_loops))
        if "sqlite" in settings.kinds:
            runs.update(measure_sqlite(settings.data_dir, settings.repeat["sqlite"], settings.sqlite_rounds))
    return runs


# -- writing ---------------------------------------------------------------------


def store_results(settings: BenchSettings, medians: dict[str, float], spreads: dict[str, float],
                  day: str, clock: str) -> dict:
    """Insert the run (one stamp), update the baselines, write the status and CSVs."""
    with Store(settings.data_dir / DB_NAME, timeout=BACKGROUND_TIMEOUT) as store:
        with store.transaction():
            rows = []
            for name, value in medians.items():
                rows.append((name, value, FIGURES[name][0]))
                rows.append((name + SPREAD_SUFFIX, spreads[name], "%"))
            store.insert("benchmark", rows, day, clock)
            baselines = update_baselines(store.get_state(BASELINE_STATE, {}), medians, day, settings.baseline_days)
            store.set_state(BASELINE_STATE, baselines)
        latest = store.benchmark_latest_runs()
        recent = {}
        if settings.confirm_runs > 1:
            recent = {name: store.benchmark_recent(name, settings.confirm_runs) for name in latest if name in FIGURES}
    status = build_status(latest, baselines, settings, day, recent)
    status["date"], status["time"] = day, clock
    write_atomic(settings.data_dir / BENCH_STATUS, json.dumps(status, indent=1, sort_keys=True) + "\n")
    for name, value in medians.items():
        # The whole history, not just today: degradation shows over weeks.
        realtime.publish_line(settings.data_dir / csv_name(BENCHMARK_PREFIX + name), f"{day} {clock}", f"{value:.6g}",
                              daily=False)
    return status


def run(args: argparse.Namespace) -> int:
    settings = bench_settings(args)
    config.setup_logging(settings.log_file)
    if not settings.kinds:
        raise CollectError("nothing to measure")
    second = time.time() % 60
    if second < COLLECT_HEAD_START:
        # Started with the minute, as cron starts it along with that minute's
        # collect: let the collect take the lock first rather than be skipped.
        time.sleep(COLLECT_HEAD_START - second)
    try:
        with lock.exclusive(settings.data_dir / lock.COLLECT_LOCK, wait=settings.lock_wait):
            now = datetime.now(UTC)
            started = time.monotonic()
            runs = measure(settings)
            day, clock = now.strftime("%Y-%m-%d"), now.strftime("%H:%M:%S")
            medians = {name: statistics.median(values) for name, values in runs.items()}
            spreads = {name: spread_percent(values) for name, values in runs.items()}
            status = store_results(settings, medians, spreads, day, clock)
    except lock.Busy:
        raise CollectError(f"a collection still holds {settings.data_dir / lock.COLLECT_LOCK} after "
                           f"{settings.lock_wait:g} s; nothing measured", exit_code=1) from None
    elapsed = time.monotonic() - started
    for name in medians:
        entry = status["benchmarks"].get(name, {})
        log.info("bench %s: %.6g %s (spread %.1f %%, ratio %s)", name, medians[name], FIGURES[name][0],
                 spreads[name], entry.get("ratio", "?"))
    if status["degraded"]:
        log.warning("machine degraded: %s", status["reason"])
    log.info("bench %s done in %.1f s", " ".join(settings.kinds), elapsed)
    if settings.as_json:
        print(json.dumps({
            "date": day, "time": clock, "seconds": round(elapsed, 3),
            "runs": runs, "values": medians, "spreads": spreads, "status": status,
        }, indent=1, sort_keys=True))
    return 0
