"""The availability probe under connection floods: slapmonitor and nginx side by side.

Both run under the service limit of 1,024 open files (prlimit), plain HTTP and TLS, with their
default settings (nginx: Debian's `worker_processes auto`, `worker_connections 768`, 60 s header
timeout; slapmonitor: `serve` as deployed). For each flood, the attacker's connections are opened
in small batches, each sending its part as soon as it is connected (10 s at most), then, while they
are held, a fresh client asks `GET /` (a new
connection each time, 3 s timeout) `PROBES` times; the median and 99th percentile of the answered
probes and how many answered. Floods: half-open requests (`GET / HTTP/1.1\\r\\nHost: x\\r\\n` then
nothing; over TLS, connections that never start the handshake) from one loopback address, and from
20 addresses of 127.0.0.0/8. Target (issue 14): slapmonitor answers every probe under every flood.

    .venv/bin/python benchmarks/bench_flood.py [--probes N]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import http.client
import resource
import selectors
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_server import free_port, nginx_write_config, stop, wait_http, wait_tls  # noqa: E402
from results import table, write_section  # noqa: E402

SCRIPTS = Path(sys.executable).parent
SECRET = "bench-secret-0123456789abcdefABCDEF"
DESCRIPTORS = 1024
PRLIMIT = ["prlimit", f"--nofile={DESCRIPTORS}:{DESCRIPTORS}", "--"]
HALF_REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n"
FLOODS = {
    "none": [],
    "1 address x 3000": [("127.0.0.1", 3000)],
    "20 addresses x 250": [(f"127.0.0.{n}", 250) for n in range(2, 22)],
}
# TLS servers only: the handshake made, then the half request inside TLS (one address)
TLS_SLOWLORIS = "TLS handshake + half request, 1 address x 2000"
TLS_SLOWLORIS_COUNT = 2000
PROBE_TIMEOUT = 3.0
BATCH = 20
GIVE_UP = 3  # consecutive unanswered probes: the rest are counted unanswered without waiting


def open_flood(port: int, plan: list[tuple[str, int]], payload: bytes | None, seconds: float = 10.0
               ) -> tuple[list[socket.socket], int]:
    """Open them in batches of ``BATCH`` (non-blocking connects), each sending ``payload`` as soon as
    it is connected, so that the server has read it before the next batch comes (a steady attacker,
    not a burst); at most ``seconds`` in all. The sockets (to close) and how many connected."""
    socks: list[socket.socket] = []
    connected = 0
    deadline = time.monotonic() + seconds
    todo = [source for source, count in plan for _ in range(count)]
    with selectors.DefaultSelector() as selector:
        for first in range(0, len(todo), BATCH):
            if time.monotonic() > deadline:
                break
            pending = 0
            for source in todo[first:first + BATCH]:
                sock = socket.socket()
                socks.append(sock)
                sock.setblocking(False)
                try:
                    sock.bind((source, 0))
                    code = sock.connect_ex(("127.0.0.1", port))
                except OSError:
                    continue
                if code in (0, errno.EINPROGRESS):
                    selector.register(sock, selectors.EVENT_WRITE)
                    pending += 1
            until = min(deadline, time.monotonic() + 1.0)
            while pending and time.monotonic() < until:
                for key, _ in selector.select(timeout=0.05):
                    sock = key.fileobj
                    selector.unregister(sock)
                    pending -= 1
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                        connected += 1
                        if payload:
                            with contextlib.suppress(OSError):
                                sock.send(payload)
            for key in list(selector.get_map().values()):
                selector.unregister(key.fileobj)  # still connecting: left to the kernel
            time.sleep(0.005)
    return socks, connected


def open_tls_flood(port: int, count: int, context: ssl.SSLContext, seconds: float = 20.0
                   ) -> tuple[list[socket.socket], int]:
    """One after the other (each handshake costs both sides): connect, handshake, half request; a
    server that no longer accepts costs each at most 1 s, the whole at most ``seconds``."""
    socks: list[socket.socket] = []
    deadline = time.monotonic() + seconds
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        sock = socket.socket()
        socks.append(sock)
        try:
            sock.settimeout(1.0)
            sock.connect(("127.0.0.1", port))
            tls = context.wrap_socket(sock, server_hostname="127.0.0.1")
            socks[-1] = tls
            tls.sendall(HALF_REQUEST)
        except OSError:
            continue
    connected = sum(1 for sock in socks if isinstance(sock, ssl.SSLSocket))
    return socks, connected


def probe(port: int, context: ssl.SSLContext | None) -> float | None:
    """Seconds for a fresh client's `GET /` to answer OK; None without an answer."""
    started = time.perf_counter()
    if context is not None:
        conn: http.client.HTTPConnection = http.client.HTTPSConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT,
                                                                        context=context)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        if response.read() != b"OK":
            return None
        return time.perf_counter() - started
    except OSError:
        return None
    finally:
        conn.close()


def measure(port: int, context: ssl.SSLContext | None, probes: int) -> tuple[list[float], int]:
    answered: list[float] = []
    missed = streak = 0
    for _ in range(probes):
        if streak >= GIVE_UP:
            missed += 1
            continue
        seconds = probe(port, context)
        if seconds is None:
            missed += 1
            streak += 1
        else:
            answered.append(seconds)
            streak = 0
        time.sleep(0.02)
    return answered, missed


def nginx_config(work: Path, root: Path, port: int, tls_port: int, cert: Path, key: Path) -> Path:
    """Debian's defaults where they matter here (workers, connections per worker, timeouts)."""
    return nginx_write_config(work, 768, (
        f"    access_log {work / 'nginx-access.log'};\n"
        "    sendfile on; tcp_nopush on;\n"
        "    ssl_protocols TLSv1.2 TLSv1.3;\n"
        f"    server {{ listen 127.0.0.1:{port}; root {root}; location = / {{ try_files /ok =404; }} }}\n"
        f"    server {{ listen 127.0.0.1:{tls_port} ssl; ssl_certificate {cert}; ssl_certificate_key {key};\n"
        f"             root {root}; location = / {{ try_files /ok =404; }} }}\n"))


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=50)
    args = parser.parse_args()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists() or not shutil.which("prlimit"):
        print("bench_flood: nginx or prlimit is missing (apt-get install nginx util-linux)", file=sys.stderr)
        return 1
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    want = 20000
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))  # the flood's own sockets
    work = Path(tempfile.mkdtemp(prefix="bench-flood-"))
    work.chmod(0o755)
    root = work / "data"
    root.mkdir(mode=0o755)
    (root / "ok").write_bytes(b"OK")
    (root / "ok").chmod(0o644)
    procs: list[subprocess.Popen] = []
    results: dict[tuple[str, str], tuple[list[float], int]] = {}
    try:
        servers: dict[str, tuple[int, ssl.SSLContext | None]] = {}
        for tls in (False, True):
            port = free_port()
            cmd = [*PRLIMIT, str(SCRIPTS / "slapos-collect"), "serve", "--data-dir", str(root), "--host",
                   "127.0.0.1", "--port", str(port), "--secret", SECRET,
                   "--access-log", str(work / f"access-{tls}.log")] + ([] if tls else ["--no-tls"])
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(work / f"mon-{tls}.err", "w")))
            if tls:
                wait_tls(f"https://127.0.0.1:{port}/")
            else:
                wait_http(f"http://127.0.0.1:{port}/")
            servers["slapmonitor TLS" if tls else "slapmonitor"] = (port, client_context() if tls else None)
        port, tls_port = free_port(), free_port()
        conf = nginx_config(work, root, port, tls_port, root / ".slapmonitor.crt", root / ".slapmonitor.key")
        procs.append(subprocess.Popen([*PRLIMIT, nginx, "-c", str(conf), "-p", str(work)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_http(f"http://127.0.0.1:{port}/")
        wait_tls(f"https://127.0.0.1:{tls_port}/")
        servers["nginx"] = (port, None)
        servers["nginx TLS"] = (tls_port, client_context())

        for flood, plan in [*FLOODS.items(), (TLS_SLOWLORIS, [])]:
            for name, (port, context) in servers.items():
                if flood == TLS_SLOWLORIS:
                    if context is None:
                        continue
                    socks, connected = open_tls_flood(port, TLS_SLOWLORIS_COUNT, context)
                else:
                    socks, connected = open_flood(port, plan, None if context else HALF_REQUEST)
                try:
                    results[(flood, name)] = measure(port, context, args.probes)
                finally:
                    for sock in socks:
                        sock.close()
                answered, missed = results[(flood, name)]
                shown = (f"median {statistics.median(answered) * 1000:7.1f} ms, p99 "
                         f"{quantile(answered, 0.99) * 1000:7.1f} ms" if answered else "no answer")
                print(f"{flood:20} {name:16} {connected:5} connected  {shown}, "
                      f"{len(answered)}/{len(answered) + missed} answered", flush=True)
                time.sleep(3)  # the server lets the closed flood go
        logs = {name: (work / f"mon-{tls}.err").read_text(errors="replace").splitlines()
                for name, tls in (("slapmonitor", False), ("slapmonitor TLS", True))}
    finally:
        for proc in procs:
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)

    rows = []
    names = list(servers)
    for flood in [*FLOODS, TLS_SLOWLORIS]:
        row = [flood]
        for name in names:
            if (flood, name) not in results:
                row.append("-")
                continue
            answered, missed = results[(flood, name)]
            total = len(answered) + missed
            if answered:
                row.append(f"{statistics.median(answered) * 1000:.1f} / {quantile(answered, 0.99) * 1000:.1f}"
                           f" ({len(answered)}/{total})")
            else:
                row.append(f"no answer (0/{total})")
        rows.append(row)
    ours_ok = all(not missed for (_, name), (_, missed) in results.items() if name.startswith("slap"))
    verdict = (f"- slapmonitor answers every probe under every flood: {'met' if ours_ok else 'NOT met'}")
    print(verdict)
    log_lines = ", ".join(f"{name} {len(lines)}" for name, lines in logs.items())
    tracebacks = sum("Traceback" in line for lines in logs.values() for line in lines)
    markdown = (
        "## slapmonitor under connection floods (the availability probe)\n\n"
        f"Both servers under `prlimit --nofile={DESCRIPTORS}:{DESCRIPTORS}`, default settings (nginx: Debian's "
        "`worker_processes auto`, `worker_connections 768`, 60 s header timeout; slapmonitor: `serve` as "
        "deployed, header timeout 10 s, at most 896 connections, 256 per address). Each flood is opened "
        f"in batches of {BATCH} connections, each sending its half request as soon as it is connected (a "
        "steady attacker rather than one burst; 10 s at most) and held while a fresh client asks `GET /` "
        f"{args.probes} times (new connection each, {PROBE_TIMEOUT:.0f} s timeout; after {GIVE_UP} "
        "unanswered in a row the rest count unanswered). Half-open requests "
        "(`GET / HTTP/1.1\\r\\nHost: x\\r\\n` then nothing); over TLS, connections that never start the "
        f"handshake; and, for TLS only, {TLS_SLOWLORIS_COUNT} connections opened one after the other that make "
        "the handshake then send the half request inside TLS (20 s at most). Cells: median / 99th percentile of the answered probes in ms (answered/asked).\n\n"
        + table(["flood", *names], rows)
        + "\n" + verdict + "\n"
        + "- Why nginx holds some floods: out of connections, it closes those that have sent nothing yet "
        "(TLS connections that never start the handshake); a connection that has sent part of a request it "
        "keeps for its 60 s header timeout, and past 2 x 768 of those it answers nobody. slapmonitor drops "
        "the longest-waiting connection, whatever it has sent.\n"
        + f"- slapmonitor's stderr over the whole run, in lines (the start line, then at most one report a "
        f"minute): {log_lines}; {tracebacks} tracebacks.\n"
    )
    write_section("flood", markdown)
    return 0


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


if __name__ == "__main__":
    sys.exit(main())
