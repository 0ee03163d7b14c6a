"""``slapos-collect bench``: measure the machine's degradation over time.

Figures (each the median of N runs, with its spread):

- ``cpu_single``, ``cpu_all``: Pystone, pystones/s on one core and summed over
  one process per usable core;
- ``sqlite_ops``: a fixed SQLite mix (store.bench_workload) on a temporary
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
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import ssl
import statistics
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from datetime import date as Date
from pathlib import Path
from typing import Any

from . import config, lock, pystone, realtime
from .atomic import write_atomic
from .errors import CollectError
from .settings import Kind, Setting, add_flags, boolean, integer, number, parse, resolve, text
from .store import BACKGROUND_TIMEOUT, DB_NAME, Store, bench_workload

log = logging.getLogger("slapos_collect")

SECTION = "bench"
KINDS = ("cpu", "sqlite", "net")
# name -> (unit, higher is better)
FIGURES: dict[str, tuple[str, bool]] = {
    "cpu_single": ("pystones/s", True),
    "cpu_all": ("pystones/s", True),
    "sqlite_ops": ("ops/s", True),
    "sqlite_fsync": ("ms", False),
    "net_download": ("MB/s", True),
    "net_upload": ("MB/s", True),
    "net_latency": ("ms", False),
}
SPREAD_SUFFIX = "_spread"
STATUS_FILE = "benchmark_status.json"
BASELINE_STATE = "bench_baseline"
DEFAULT_REPEAT = {"cpu": 5, "sqlite": 5, "net": 3}
DEFAULT_THRESHOLD = 0.7
DEFAULT_BASELINE_DAYS = 7
DEFAULT_TIMEOUT = 40.0
DEFAULT_LOCK_WAIT = 20.0
DEFAULT_CPU_LOOPS = 50000
DEFAULT_SQLITE_ROUNDS = 100
DEFAULT_NET_BYTES = 10_000_000
FSYNC_SAMPLES = 15
LATENCY_SAMPLES = 10
CHUNK = 256 * 1024
MAX_NET_BYTES = 256 * 1024 * 1024  # the slapmonitor's cap
MAX_RETRY_AFTER = 5
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
BENCH_LOG_FILE = replace(config.LOG_FILE, sections=(SECTION, config.SECTION))
BENCH_SETTINGS = (config.CONFIG, config.DATA_DIR, BENCH_LOG_FILE, PEER, PEER_CA, PEER_VERIFY, REPEAT, TIMEOUT,
                  LOCK_WAIT, AS_JSON, THRESHOLD, BASELINE_DAYS, CONFIRM_RUNS, CPU_LOOPS, SQLITE_ROUNDS, NET_BYTES,
                  *THRESHOLDS.values(), *REFERENCES.values())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, BENCH_SETTINGS[:3])
    parser.add_argument("what", choices=(*KINDS, "all"),
                        help="which benchmark; all = cpu, sqlite, and net when a peer is configured")
    add_flags(parser, BENCH_SETTINGS[3:])


def parse_peer(url: str) -> Peer:
    """Check a peer's secret base URL (as ``--peer``); errors never repeat the secret."""
    return parse(PEER, url, PEER.option)


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


def spread_percent(values: list[float]) -> float:
    """Run-to-run spread: the median absolute deviation over the median, in %
    (one odd run, say a cron job starting meanwhile, barely moves it)."""
    middle = statistics.median(values)
    if not middle:
        return 0.0
    return statistics.median(abs(v - middle) for v in values) / abs(middle) * 100


def usable_cores() -> int:
    """The cores this process may run on (its affinity), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _cpu_worker(conn, barrier, loops: int, repeat: int) -> None:
    try:
        for _ in range(repeat):
            barrier.wait(timeout=600)
            conn.send(pystone.pystones(loops)[1])
    except Exception:  # the parent sees the closed pipe
        pass
    finally:
        conn.close()


def measure_cpu(settings: BenchSettings) -> dict[str, list[float]]:
    repeat, loops = settings.repeat["cpu"], settings.cpu_loops
    pystone.pystones(min(loops, 5000))  # warm-up
    single = [pystone.pystones(loops)[1] for _ in range(repeat)]

    # One forked process per usable core, started together for each run.
    cores = usable_cores()
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(cores)
    workers, pipes = [], []
    try:
        for _ in range(cores):
            ours, theirs = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_cpu_worker, args=(theirs, barrier, loops, repeat), daemon=True)
            proc.start()
            theirs.close()
            workers.append(proc)
            pipes.append(ours)
        summed = []
        for _ in range(repeat):
            try:
                summed.append(sum(pipe.recv() for pipe in pipes))
            except EOFError:
                raise CollectError("a cpu benchmark worker process died; nothing stored", exit_code=1) from None
    finally:
        for proc in workers:
            if proc.is_alive():
                proc.terminate()
        for proc in workers:
            proc.join(timeout=5)
        for pipe in pipes:
            pipe.close()
    return {"cpu_single": single, "cpu_all": summed}


def measure_sqlite(settings: BenchSettings) -> dict[str, list[float]]:
    ops_rates, fsync_ms = [], []
    # Left by a run killed outright (kill -9, power loss): only a bench
    # makes them and the lock keeps a second one out, so any found is stale.
    for stale in settings.data_dir.glob(".bench-*"):
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=settings.data_dir, prefix=".bench-") as tmp:
        for run in range(settings.repeat["sqlite"]):
            db = Path(tmp) / f"bench-{run}.db"
            try:
                operations, seconds = bench_workload(db, settings.sqlite_rounds)
            finally:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)
            ops_rates.append(operations / seconds)
            fsync_ms.append(_fsync_latency(Path(tmp) / "fsync"))
    return {"sqlite_ops": ops_rates, "sqlite_fsync": fsync_ms}


def _fsync_latency(path: Path) -> float:
    """Median ms of ``os.fsync`` after appending 4 KiB to a small file (as a
    database commit appends to its journal: data and size both made durable)."""
    block = os.urandom(4096)
    samples = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    try:
        for _ in range(FSYNC_SAMPLES):
            os.write(fd, block)
            start = time.perf_counter()
            os.fsync(fd)
            samples.append((time.perf_counter() - start) * 1000)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return statistics.median(samples)


class PeerBusy(Exception):
    """The peer answered 429 with a short Retry-After: wait and try again."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


class PeerClient:
    """HTTP(S) to a peer slapmonitor with the standard library only.

    Every failure becomes one CollectError naming host:port (never the secret)."""

    def __init__(self, settings: BenchSettings, remaining: Callable[[], float]) -> None:
        assert settings.peer is not None
        self.peer = settings.peer
        self.remaining = remaining
        self.context: ssl.SSLContext | None = None
        if self.peer.scheme == "https":
            if settings.peer_verify:
                try:
                    self.context = ssl.create_default_context(cafile=settings.peer_ca)
                except ssl.SSLError as exc:
                    raise CollectError(f"cannot load the peer CA {settings.peer_ca}: {exc.reason or exc}",
                                       exit_code=2) from None
            else:
                self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                self.context.check_hostname = False
                self.context.verify_mode = ssl.CERT_NONE
            self.context.minimum_version = ssl.TLSVersion.TLSv1_2

    def connect(self) -> http.client.HTTPConnection:
        timeout = min(30.0, self.remaining())
        if self.context is not None:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.peer.host, self.peer.port, timeout=timeout, context=self.context)
        else:
            conn = http.client.HTTPConnection(self.peer.host, self.peer.port, timeout=timeout)
        with self.errors("connect"):
            conn.connect()
        return conn

    @contextmanager
    def errors(self, what: str) -> Iterator[None]:
        label = self.peer.label
        try:
            yield
        except ssl.SSLCertVerificationError as exc:
            raise CollectError(
                f"peer {label}: its TLS certificate is not trusted ({exc.verify_message}); "
                "give it with --peer-ca FILE, or use --peer-insecure", exit_code=1) from None
        except ssl.SSLError as exc:
            raise CollectError(f"peer {label}: TLS failed during {what}: {exc.reason or exc}", exit_code=1) from None
        except TimeoutError:
            raise CollectError(f"peer {label}: no answer in time during {what}", exit_code=1) from None
        except ConnectionRefusedError:
            raise CollectError(f"cannot reach peer {label}: connection refused", exit_code=1) from None
        except socket.gaierror as exc:
            raise CollectError(f"cannot resolve peer {label}: {exc.strerror}", exit_code=1) from None
        except (http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise CollectError(f"peer {label}: {what} failed: {reason}", exit_code=1) from None

    def check_status(self, response: http.client.HTTPResponse, what: str) -> None:
        if response.status == 200:
            return
        if response.status == 404:
            hint = "wrong secret, or the peer's slapmonitor has no bench routes"
        elif response.status == 429:
            retry = response.getheader("Retry-After", "")
            if retry.isdigit() and int(retry) <= MAX_RETRY_AFTER:
                raise PeerBusy(int(retry))
            hint = "the peer is rate-limiting benchmarks; try again later"
        else:
            hint = response.reason
        raise CollectError(f"peer {self.peer.label} answered {response.status} to {what}: {hint}", exit_code=1)

    def download(self, conn: http.client.HTTPConnection, size: int) -> tuple[int, float]:
        """``GET bench/download?bytes=size``: (bytes received, seconds)."""
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        with self.errors("bench/download"):
            start = time.perf_counter()
            conn.request("GET", f"{self.peer.base_path}bench/download?bytes={size}")
            response = conn.getresponse()
            self.check_status(response, "bench/download")
            expected = response.length
            received = 0
            while n := response.readinto(view):
                received += n
            seconds = time.perf_counter() - start
        if received == 0 or (expected is not None and received != expected):
            raise CollectError(f"peer {self.peer.label}: bench/download sent {received} bytes, "
                               f"announced {expected}", exit_code=1)
        return received, seconds

    def upload(self, conn: http.client.HTTPConnection, size: int) -> tuple[int, float]:
        """``POST bench/upload`` of ``size`` bytes: (bytes the peer counted, seconds)."""
        chunk = os.urandom(CHUNK)
        with self.errors("bench/upload"):
            start = time.perf_counter()
            conn.putrequest("POST", f"{self.peer.base_path}bench/upload")
            conn.putheader("Content-Type", "application/octet-stream")
            conn.putheader("Content-Length", str(size))
            conn.endheaders()
            sent = 0
            try:
                while sent < size:
                    piece = chunk[: min(CHUNK, size - sent)]
                    conn.send(piece)
                    sent += len(piece)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the peer refused early: its answer says why
            response = conn.getresponse()
            self.check_status(response, "bench/upload")
            body = response.read()
            seconds = time.perf_counter() - start
        try:
            counted = int(json.loads(body)["bytes"])
        except (ValueError, KeyError, TypeError):
            raise CollectError(f"peer {self.peer.label}: bench/upload gave no byte count", exit_code=1) from None
        if counted != size:
            raise CollectError(f"peer {self.peer.label}: bench/upload counted {counted} of {size} bytes",
                               exit_code=1)
        return counted, seconds

    def latency(self, conn: http.client.HTTPConnection) -> float:
        """Median ms of ``GET /`` (the peer's OK probe) on a kept-alive connection."""
        samples = []
        with self.errors("GET /"):
            for i in range(LATENCY_SAMPLES + 1):
                start = time.perf_counter()
                conn.request("GET", "/")
                response = conn.getresponse()
                response.read()
                self.check_status(response, "GET /")
                if i:  # the first one may pay for a lazy set-up on the peer
                    samples.append((time.perf_counter() - start) * 1000)
        return statistics.median(samples)


def measure_net(settings: BenchSettings, remaining: Callable[[], float]) -> dict[str, list[float]]:
    client = PeerClient(settings, remaining)
    down, up, latency = [], [], []
    conn = client.connect()

    def with_retries(transfer, *args):
        # A peer serves one transfer at a time (429, Retry-After: 1): another
        # machine benchmarking it is no failure of ours. The time limit bounds this.
        nonlocal conn
        while True:
            try:
                return transfer(conn, *args)
            except PeerBusy as busy:
                conn.close()
                log.info("peer %s busy: retrying in %d s", client.peer.label, busy.retry_after)
                time.sleep(busy.retry_after)
                conn = client.connect()

    try:
        with_retries(client.download, 1)  # checks the secret and the routes before timing anything
        for _ in range(settings.repeat["net"]):
            latency.append(client.latency(conn))
            size, seconds = with_retries(client.download, settings.net_bytes)
            down.append(size / 1e6 / seconds)
            size, seconds = with_retries(client.upload, settings.net_bytes)
            up.append(size / 1e6 / seconds)
    finally:
        conn.close()
    return {"net_download": down, "net_upload": up, "net_latency": latency}


def measure(settings: BenchSettings) -> dict[str, list[float]]:
    """Every figure of the chosen benchmarks, all runs, within the time limit."""
    runs: dict[str, list[float]] = {}
    with time_limit(settings.timeout) as remaining:
        # net first: a bad peer fails fast, before seconds of CPU work.
        if "net" in settings.kinds:
            runs.update(measure_net(settings, remaining))
        if "cpu" in settings.kinds:
            runs.update(measure_cpu(settings))
        if "sqlite" in settings.kinds:
            runs.update(measure_sqlite(settings))
    return runs


# -- baseline, degradation, status ---------------------------------------------


def performance_ratio(name: str, value: float, baseline: float) -> float:
    """How the figure compares with its baseline, 1.0 = as good, lower = worse
    (inverted for latencies, where a higher figure is worse)."""
    higher_is_better = FIGURES[name][1]
    if higher_is_better:
        return value / baseline if baseline else 1.0
    return baseline / value if value else 1.0


def update_baselines(state: dict, figures: dict[str, float], day: str, baseline_days: int) -> dict:
    """Add this run's figures to the baselines still within their first
    ``baseline_days`` (counted from each figure's first run)."""
    today = Date.fromisoformat(day)
    for name, value in figures.items():
        entry = state.setdefault(name, {"since": day, "values": []})
        if today < Date.fromisoformat(entry["since"]) + timedelta(days=baseline_days):
            entry["values"].append(value)
    return state


def build_status(latest: dict[str, tuple[float, str, str, str]], baselines: dict, settings: BenchSettings,
                 day: str, recent: dict[str, list[float]] | None = None) -> dict:
    """The status of every figure: its latest value, or with ``confirm-runs``
    N > 1 the median of its latest N (``recent``), against its baseline."""
    benchmarks = {}
    for name in sorted(latest):
        if name not in FIGURES:
            continue
        value, unit, run_date, run_time = latest[name]
        entry = baselines.get(name, {})
        if name in settings.references:
            baseline, source = settings.references[name], "reference"
        elif entry.get("values"):
            baseline, source = statistics.median(entry["values"]), "store"
        else:
            continue
        compared = statistics.median((recent or {}).get(name) or [value])
        ratio = performance_ratio(name, compared, baseline)
        threshold = settings.thresholds.get(name, settings.threshold)
        complete = source == "reference" or (
            Date.fromisoformat(day) >= Date.fromisoformat(entry["since"]) + timedelta(days=settings.baseline_days))
        benchmarks[name] = {
            "value": value,
            "baseline": baseline,
            "ratio": round(ratio, 4),
            "unit": unit,
            "degraded": ratio < threshold,
            "threshold": threshold,
            "date": run_date,
            "time": run_time,
            "baseline_source": source,
            "baseline_runs": len(entry.get("values", [])) if source == "store" else 0,
            "baseline_complete": complete,
        }
        if settings.confirm_runs > 1:
            benchmarks[name]["compared"] = compared
            benchmarks[name]["compared_runs"] = len((recent or {}).get(name) or [value])
    worst = [f"{name} at {b['ratio'] * 100:.0f} % of its baseline (threshold {b['threshold'] * 100:.0f} %)"
             for name, b in sorted(benchmarks.items(), key=lambda item: item[1]["ratio"]) if b["degraded"]]
    return {
        "degraded": bool(worst),
        "threshold": settings.threshold,
        "benchmarks": benchmarks,
        "reason": ", ".join(worst),
    }


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
    write_atomic(settings.data_dir / STATUS_FILE, json.dumps(status, indent=1, sort_keys=True) + "\n")
    for name, value in medians.items():
        # The whole history, not just today: degradation shows over weeks.
        realtime.publish_line(settings.data_dir / f"benchmark_{name}.csv", f"{day} {clock}", f"{value:.6g}",
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
