"""slapmonitor against `python3 -m http.server` and nginx, side by side, with wrk.

One folder (a 1 KB file, a 10 MB file, a day's worth of CSVs) served by the three
at once on loopback, measured one at a time, interleaved, in rounds; wrk with 100
connections for a few seconds per URL. Targets (issue 4): `/` >= 8x http.server, the 1 KB file >= 3x
http.server, the 10 MB file within 1.5x of nginx. slapmonitor runs as deployed
(access log on) but in plain HTTP, like the two others (sendfile needs it).

    .venv/bin/python benchmarks/bench_server.py [--seconds N] [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import table, write_section  # noqa: E402

SCRIPTS = Path(sys.executable).parent
SECRET = "bench-secret-0123456789abcdefABCDEF"
CONNECTIONS = 100
UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 20, context: ssl.SSLContext | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                response.read()
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def wait_tls(url: str, timeout: float = 30) -> None:
    """wait_http against a self-signed server (certificate not checked)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    wait_http(url, timeout, context)


def monitor_urls(base: str) -> dict[str, str]:
    return {
        "/": base + "/",
        "listing": f"{base}/{SECRET}/server-log/",
        "1 KB": f"{base}/{SECRET}/server-log/small.bin",
        "10 MB": f"{base}/{SECRET}/server-log/big.bin",
    }


def make_folder(root: Path) -> None:
    root.mkdir(mode=0o755)
    (root / "ok").write_bytes(b"OK")
    (root / "small.bin").write_bytes(os.urandom(1024))
    (root / "big.bin").write_bytes(os.urandom(10 * 1024 * 1024))
    for name in ("cpu_percent", "loadavg", "memory_used", "memory_free", "net_in_bytes", "net_out_bytes",
                 "net_in_errors", "net_out_errors", "net_in_dropped", "net_out_dropped",
                 "disk_memory_used__dev_sda1", "disk_memory_free__dev_sda1"):
        lines = ["time,entry"] + [f"2026-11-29 {m // 60:02d}:{m % 60:02d}:00,{m * 1.5}" for m in range(1440)]
        (root / f"system_{name}.csv").write_text("\n".join(lines) + "\n")
    for day in ("2026-11-26", "2026-11-27", "2026-11-28"):
        (root / f"{day}.tar.gz").write_bytes(os.urandom(50_000))
    for path in root.iterdir():
        path.chmod(0o644)


def nginx_write_config(work: Path, worker_connections: int, http: str) -> Path:
    """An nginx.conf in ``work`` (pid, logs, temp files there), ``http`` its http block's body."""
    user = "user root root;\n" if os.geteuid() == 0 else ""
    temp = "".join(f"    {kind}_temp_path {work / kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = work / "nginx.conf"
    conf.write_text(
        f"{user}daemon off;\nworker_processes auto;\npid {work / 'nginx.pid'};\n"
        f"error_log {work / 'nginx-error.log'};\n"
        f"events {{ worker_connections {worker_connections}; }}\n"
        f"http {{\n{temp}{http}}}\n"
    )
    return conf


def nginx_config(work: Path, root: Path, port: int) -> Path:
    return nginx_write_config(work, 4096, (
        f"    access_log {work / 'nginx-access.log'} combined buffer=64k flush=1s;\n"
        "    sendfile on; tcp_nopush on; keepalive_requests 1000000;\n"
        "    types { application/octet-stream bin; text/csv csv; application/gzip gz; }\n"
        f"    server {{ listen 127.0.0.1:{port}; root {root}; autoindex on; }}\n"))


def wrk(url: str, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "10s", url],
        capture_output=True, text=True, timeout=seconds + 60,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    amount, unit = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out).groups()
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": rps,
        "mbps": float(amount) * UNITS.get(unit, 1) / 1e6,
        "bad": int(bad.group(1)) if bad else 0,
        "errors": sum(int(n) for n in errors.groups()) if errors else 0,
    }


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def plain_urls(base: str) -> dict[str, str]:
    return {"/": base + "/ok", "listing": base + "/", "1 KB": base + "/small.bin", "10 MB": base + "/big.bin"}


def measure(servers: dict[str, dict[str, str]], seconds: int, rounds: int) -> dict[str, dict[str, list[dict]]]:
    """Every server on a URL, then the next URL, ``rounds`` times: name -> URL -> one figure per round."""
    results: dict[str, dict[str, list[dict]]] = {name: {} for name in servers}
    for target in ("/", "listing", "1 KB", "10 MB"):
        for _ in range(rounds):
            for name, urls in servers.items():
                wrk(urls[target], 1)  # warm-up (caches, connections)
                f = wrk(urls[target], seconds)
                print(f"{name:16} {target:8} {f['rps']:10.0f} req/s {f['mbps']:9.1f} MB/s"
                      f"{'  non-2xx ' + str(f['bad']) if f['bad'] else ''}"
                      f"{'  socket errors ' + str(f['errors']) if f['errors'] else ''}", flush=True)
                results[name].setdefault(target, []).append(f)
    return results


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            print(f"bench_server: {tool} is missing (apt-get install {tool})", file=sys.stderr)
            return 1
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    work = Path(tempfile.mkdtemp(prefix="bench-server-"))
    work.chmod(0o755)
    root = work / "data"
    make_folder(root)
    procs: list[subprocess.Popen] = []
    servers: dict[str, dict[str, str]] = {}
    try:
        # slapmonitor as deployed (access log on), in plain HTTP like the two others
        port = free_port()
        procs.append(subprocess.Popen(
            [str(SCRIPTS / "slapos-collect"), "serve", "--data-dir", str(root), "--host", "127.0.0.1",
             "--port", str(port), "--secret", SECRET, "--no-tls", "--access-log", str(work / "access.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_http(f"http://127.0.0.1:{port}/")
        servers["slapmonitor"] = monitor_urls(f"http://127.0.0.1:{port}")

        # the same over TLS (self-signed pair generated in the folder as dot files), for information
        port = free_port()
        procs.append(subprocess.Popen(
            [str(SCRIPTS / "slapos-collect"), "serve", "--data-dir", str(root), "--host", "127.0.0.1",
             "--port", str(port), "--secret", SECRET, "--access-log", str(work / "access-tls.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_tls(f"https://127.0.0.1:{port}/")
        servers["slapmonitor TLS"] = monitor_urls(f"https://127.0.0.1:{port}")

        port = free_port()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_http(f"http://127.0.0.1:{port}/ok")
        servers["http.server"] = plain_urls(f"http://127.0.0.1:{port}")

        port = free_port()
        procs.append(subprocess.Popen([nginx, "-c", str(nginx_config(work, root, port)), "-p", str(work)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_http(f"http://127.0.0.1:{port}/ok")
        servers["nginx"] = plain_urls(f"http://127.0.0.1:{port}")

        # Interleaved (every server on a URL, then the next URL), several rounds: the
        # machine is shared, so noise hits the servers of a round alike and the ratios hold.
        results = measure(servers, args.seconds, args.rounds)
    finally:
        for proc in procs:
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)

    mon, py, ngx = results["slapmonitor"], results["http.server"], results["nginx"]
    tls = results["slapmonitor TLS"]

    def med(figures: dict[str, list[dict]], target: str, key: str) -> float:
        return median([f[key] for f in figures[target]])

    def ratio(a: dict[str, list[dict]], b: dict[str, list[dict]], target: str, key: str) -> float:
        """Median over the rounds of a/b, each round's pair measured back to back."""
        return median([x[key] / y[key] for x, y in zip(a[target], b[target], strict=True)])

    rows = []
    for target in ("/", "listing", "1 KB", "10 MB"):
        unit = "MB/s" if target == "10 MB" else "req/s"
        key = "mbps" if target == "10 MB" else "rps"
        rows.append([f"`{target}` ({unit})", f"{med(mon, target, key):,.0f}", f"{med(py, target, key):,.0f}",
                     f"{med(ngx, target, key):,.0f}", f"{ratio(mon, py, target, key):.1f}x",
                     f"{ratio(mon, ngx, target, key):.2f}x", f"{med(tls, target, key):,.0f}"])
    checks = [
        ("`/` >= 8x http.server", ratio(mon, py, "/", "rps"), 8.0, True),
        ("1 KB file >= 3x http.server", ratio(mon, py, "1 KB", "rps"), 3.0, True),
        ("10 MB file within 1.5x of nginx (nginx / slapmonitor <= 1.5)", ratio(ngx, mon, "10 MB", "mbps"), 1.5,
         False),
    ]
    lines = []
    for label, ratio, target, at_least in checks:
        met = ratio >= target if at_least else ratio <= target
        lines.append(f"- {label}: {ratio:.2f} -> {'met' if met else 'NOT met'}")
        print(lines[-1])
    errors = sum(f["bad"] + f["errors"] for server in results.values() for runs in server.values() for f in runs)
    markdown = (
        "## slapmonitor (serving files)\n\n"
        f"wrk, {CONNECTIONS} connections, 2 threads, {args.seconds} s per URL after a 1 s warm-up, loopback, "
        f"plain HTTP, the servers side by side on the same folder, one measured at a time, interleaved, "
        f"{args.rounds} rounds; figures are medians, ratios the median of each round's back-to-back ratio. "
        "slapmonitor: `/` is its OK probe, the listing is "
        "`/<secret>/server-log/`, access log on; its TLS column (self-signed, TLS 1.3, keep-alive) is for information: no target applies, and files then go through a thread instead of `sendfile`. http.server and nginx: `/` is a 2-byte file, the listing their "
        "directory index (nginx `autoindex`, buffered access log).\n\n"
        + table(["URL", "slapmonitor", "http.server", "nginx", "vs http.server", "vs nginx",
                 "slapmonitor over TLS"], rows)
        + "\n" + "\n".join(lines) + "\n"
        + (f"\nwrk saw {errors} non-2xx answers or socket errors in all (http.server closes connections).\n"
           if errors else "")
    )
    write_section("server", markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
