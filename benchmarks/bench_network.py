"""The network part of a `collect` run: its cost, and the share of the traffic each mechanism catches.

Needs root. Everything happens in two network namespaces made here (a "node" and a "peer" at the
other end of a veth pair), removed at the end; nothing leaves them.

1. Cost: `traffic.measure` in steady state (the run before made the table / the baseline) for 10 and
   100 partitions, each with a uid and two addresses (nftables, sockets with 200 live TCP sockets in
   the namespace) or one interface (dummy interfaces): wall and CPU (nft's included) per run.
2. Share: the node downloads from the peer, (a) many short HTTP requests (one connection each), (b)
   one long transfer, while the three mechanisms measure side by side every 0.5 s. The reference is
   the veth's own counters (all the IP traffic of the namespace crosses it, nothing else does).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import results

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

SIZES = [10, 100]
RUNS = 15
INTERVAL = 0.5
SHORT_SECONDS = 6.0
LONG_BYTES = 256 << 20
LONG_RATE = 50 << 20  # bytes a second: the download spans about ten runs
TAG = os.environ.get("BENCH_NETWORK_TAG") or f"scb{os.getpid() % 100000}"
NODE, PEER, NODE_IF, PEER_IF = f"{TAG}-node", f"{TAG}-peer", f"{TAG}a", f"{TAG}b"
HOST4, PEER4, PART4 = "10.214.0.1", "10.214.0.2", "10.214.0.10"
PORT = 18480

SERVER = textwrap.dedent("""
    import http.server, socketserver, sys, threading
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            size = int(self.path.strip("/") or 0)
            self.send_response(200); self.send_header("Content-Length", str(size)); self.end_headers()
            block = b"x" * 65536
            while size > 0:
                self.wfile.write(block[:size]); size -= min(size, 65536)
        def log_message(self, *args): pass
    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        request_queue_size = 128
    Server((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
""")


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


def cpu_now() -> float:
    """CPU seconds of this process and its waited-for children (nft), at microsecond resolution."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


# -- inside the node namespace ------------------------------------------------------------------

def settings_for(n: int, mode: str, interfaces: bool = False):
    from slapos_collect_recipe.config import CollectSettings, Partition

    parts = [Partition(label=f"p{i}", uid=None if interfaces else 30000 + i) for i in range(n)]
    if interfaces:
        return CollectSettings(data_dir=Path("/tmp"), partitions=parts, network_accounting="no",
                               interfaces={f"p{i}": [interface_name(i)] for i in range(n)})
    return CollectSettings(data_dir=Path("/tmp"), partitions=parts, network_accounting=mode,
                           addresses={f"p{i}": [f"10.215.{i // 250}.{i % 250 + 1}", f"fd00:215::{i + 1:x}"]
                                      for i in range(n)})


def interface_name(i: int) -> str:
    """Both ends of veth pairs made in the node namespace (no dummy interfaces on every kernel)."""
    return f"{TAG}{'v' if i % 2 == 0 else 'w'}{i // 2}"


def cost(n: int, mode: str) -> tuple[float, float, float]:
    """Median wall and CPU seconds of one steady-state run, and the first run's wall."""
    from slapos_collect_recipe import nft, traffic

    settings = settings_for(n, mode, interfaces=mode == "interface")
    t0 = time.perf_counter()
    _, state, problems = traffic.measure(settings, None)
    first = time.perf_counter() - t0
    assert not problems, problems
    walls, cpus = [], []
    for _ in range(RUNS):
        w, c = time.perf_counter(), cpu_now()
        measured, state, _ = traffic.measure(settings, state)
        walls.append(time.perf_counter() - w)
        cpus.append(cpu_now() - c)
        assert len(measured) == n and all(f is not None for f, _ in measured.values()), measured
    if mode == "nftables":
        nft.remove()
    return statistics.median(walls), statistics.median(cpus), first


def live_sockets(count: int) -> list[socket.socket]:
    """``count`` established loopback TCP sockets (count/2 connections) that moved a little data."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(count)
    kept = [listener]
    for _ in range(count // 2):
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        client.sendall(b"x" * 1000)
        server.recv(1000)
        kept += [client, server]
    return kept


def share(kind: str) -> dict[str, float]:
    """Bytes each mechanism caught over the reference (the veth's counters), for one workload."""
    from slapos_collect_recipe import traffic
    from slapos_collect_recipe.config import CollectSettings, Partition

    base = dict(data_dir=Path("/tmp"), partitions=[Partition(label="part")], addresses={"part": [PART4]})
    by_nft = CollectSettings(**base, network_accounting="nftables")
    by_sockets = CollectSettings(**base, network_accounting="sockets")
    reference = CollectSettings(data_dir=Path("/tmp"), partitions=[Partition(label="part")],
                                network_accounting="no", interfaces={"part": [NODE_IF]})
    states: dict[str, dict | None] = {"nft": None, "sockets": None, "ref": None}
    totals = {"nft": 0, "sockets": 0, "ref": 0}
    runs = {"nft": by_nft, "sockets": by_sockets, "ref": reference}

    def one_run(count: bool) -> None:
        for name, settings in runs.items():
            measured, states[name], _ = traffic.measure(settings, states[name])
            figures, _ = measured["part"]
            if count and figures is not None:
                # The partition is in front of the veth here: its download is what the veth received.
                totals[name] += figures.net_out_bytes if name == "ref" else figures.net_in_bytes

    done = threading.Event()
    requests = [0]

    def short() -> None:
        import http.client

        while not done.is_set():
            conn = http.client.HTTPConnection(PEER4, PORT, source_address=(PART4, 0), timeout=10)
            conn.request("GET", "/20000")
            assert len(conn.getresponse().read()) == 20000
            conn.close()
            requests[0] += 1

    def long() -> None:
        with socket.create_connection((PEER4, PORT), source_address=(PART4, 0)) as conn:
            conn.sendall(f"GET /{LONG_BYTES} HTTP/1.0\r\n\r\n".encode())
            began, got = time.monotonic(), 0
            while chunk := conn.recv(1 << 20):
                got += len(chunk)
                ahead = got / LONG_RATE - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)  # the receiver paces the sender (TCP flow control)
        done.set()

    one_run(False)
    worker = threading.Thread(target=short if kind == "short" else long)
    started = time.monotonic()
    worker.start()
    while True:
        time.sleep(INTERVAL)
        one_run(True)
        if kind == "short" and time.monotonic() - started > SHORT_SECONDS:
            done.set()
        if done.is_set() and not worker.is_alive():
            break
    worker.join()
    one_run(True)
    traffic_nft_cleanup()
    return {"nftables": totals["nft"] / totals["ref"], "sockets": totals["sockets"] / totals["ref"],
            "reference_bytes": totals["ref"], "requests": requests[0], "seconds": time.monotonic() - started}


def traffic_nft_cleanup() -> None:
    from slapos_collect_recipe import nft

    nft.remove()


def inside() -> int:
    out: dict = {"cost": {}, "share": {}}
    kept = live_sockets(200)
    sh("ip", "link", "set", "lo", "up")
    batch = "".join(f"link add {interface_name(2 * k)} type veth peer name {interface_name(2 * k + 1)}\n"
                    for k in range(max(SIZES) // 2))
    subprocess.run(["ip", "-b", "-"], input=batch, text=True, check=True, capture_output=True)
    try:
        for n in SIZES:
            for mode in ("nftables", "sockets", "interface"):
                out["cost"][f"{mode} {n}"] = cost(n, mode)
        for kind in ("short", "long"):
            out["share"][kind] = share(kind)
    finally:
        for sock in kept:
            sock.close()
    print(json.dumps(out))
    return 0


# -- outside: namespaces, server, report -------------------------------------------------------

def main() -> int:
    if os.geteuid() != 0 or not shutil.which("nft"):
        print("bench_network needs root, iproute2 and nftables", file=sys.stderr)
        return 1
    scripts = Path(tempfile.mkdtemp(prefix="bench-network-"))
    server = None
    try:
        sh("ip", "netns", "add", NODE)
        sh("ip", "netns", "add", PEER)
        sh("ip", "-n", NODE, "link", "add", NODE_IF, "type", "veth", "peer", "name", PEER_IF, "netns", PEER)
        for ns, ifname in ((NODE, NODE_IF), (PEER, PEER_IF)):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", ifname, "up")
        sh("ip", "-n", NODE, "addr", "add", f"{HOST4}/24", "dev", NODE_IF)
        sh("ip", "-n", NODE, "addr", "add", f"{PART4}/24", "dev", NODE_IF)
        sh("ip", "-n", PEER, "addr", "add", f"{PEER4}/24", "dev", PEER_IF)
        (scripts / "server.py").write_text(SERVER)
        server = subprocess.Popen(["ip", "netns", "exec", PEER, sys.executable, str(scripts / "server.py"),
                                   PEER4, str(PORT)])
        for _ in range(100):
            if subprocess.run(["ip", "netns", "exec", NODE, sys.executable, "-c",
                               f"import socket; socket.create_connection(('{PEER4}', {PORT}), 1).close()"],
                              capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        proc = subprocess.run(["ip", "netns", "exec", NODE, sys.executable, __file__, "--inside"],
                              capture_output=True, text=True, timeout=600, env=dict(os.environ, BENCH_NETWORK_TAG=TAG))
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        data = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        if server is not None:
            server.kill()
            server.wait()
        for ns in (NODE, PEER):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(scripts, ignore_errors=True)

    rows = []
    for n in SIZES:
        row: list[object] = [n]
        for mode in ("nftables", "sockets", "interface"):
            wall, cpu, first = data["cost"][f"{mode} {n}"]
            row += [f"{wall * 1000:.1f} ms", f"{cpu * 1000:.1f} ms"]
        row.append(f"{data['cost'][f'nftables {n}'][2] * 1000:.0f} ms")
        rows.append(row)
    short, long = data["share"]["short"], data["share"]["long"]
    shares = [
        [f"short HTTP requests (20 kB each, one connection each; {short['requests']} in {short['seconds']:.0f} s)",
         f"{short['reference_bytes'] / 1e6:.1f} MB", f"{short['nftables'] * 100:.1f} %",
         f"{short['sockets'] * 100:.1f} %"],
        [f"one long transfer ({LONG_BYTES >> 20} MB at {LONG_RATE >> 20} MB/s, {long['seconds']:.1f} s)",
         f"{long['reference_bytes'] / 1e6:.0f} MB", f"{long['nftables'] * 100:.1f} %",
         f"{long['sockets'] * 100:.1f} %"],
    ]
    text = (
        "## Network: the cost of the per-partition traffic part of a run, and what each mechanism catches\n\n"
        f"Steady-state run of `traffic.measure` (median of {RUNS}; CPU includes the `nft` child): "
        "nftables and sockets with N partitions of a uid and two addresses each (200 live TCP sockets in the "
        "namespace), interface with N interfaces (veth ends). `first nft run` creates the table.\n\n"
        + results.table(["N", "nftables wall", "nftables CPU", "sockets wall", "sockets CPU", "interface wall",
                         "interface CPU", "first nft run"], rows)
        + f"\nShare of the traffic caught, measured every {INTERVAL} s side by side, against the veth's own "
        "counters (the whole traffic of the namespace, Ethernet headers taken off):\n\n"
        + results.table(["workload", "reference", "nftables", "sockets"], shares)
        + "\nThe sockets miss every connection opened and closed between two runs, and the last bytes of a "
        "connection that closes before the next run; nftables counts per packet as the IP stack sees it "
        "(segmentation offload merges segments: their headers are counted once).\n"
    )
    print(text)
    results.write_section("network", text)
    return 0


if __name__ == "__main__":
    sys.exit(inside() if sys.argv[1:] == ["--inside"] else main())
