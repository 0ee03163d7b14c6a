"""Per-partition network traffic (``traffic.py``): real kernel, real traffic, in network namespaces made here.

The "node" namespace is the SlapOS node (the collector, its nftables table and
the partitions' processes and addresses live there); the "peer" namespace, at
the other end of a veth pair, is the rest of the world (a server) or, in the
interface case, the virtual machine behind the partition's interface. Only
addresses assigned inside these namespaces are used; nothing leaves them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import SCRIPTS, run_cli
from other_user import other_user_runtime, shared_dir

from slapos_collect_recipe import computer_xml, nft, sockdiag

needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"), reason="needs root and iproute2")
needs_nft = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"), reason="needs root and nft")

MB = 1 << 20
# IP + TCP headers (with timestamps) over 1448-byte segments are about 3.5 % of bulk TCP payload.
HEADROOM = 1.06
SLACK = 20_000  # handshakes, ACKs of the other direction, neighbour discovery

# The peer's server: per request line, "D n" sends n bytes, "U n" reads n bytes; then "ok".
SERVER = textwrap.dedent("""
    import socket, sys, threading
    def serve(conn):
        with conn:
          f = conn.makefile("rb")
          for line in f:
            kind, size = line.split()
            size = int(size)
            if kind == b"D":
                block = b"d" * 65536
                while size > 0:
                    conn.sendall(block[:size]); size -= min(size, 65536)
            else:
                while size > 0:
                    got = f.read(min(size, 65536))
                    if not got: break
                    size -= len(got)
            conn.sendall(b"ok")
    socks = []
    for family, host in ((socket.AF_INET, sys.argv[1]), (socket.AF_INET6, sys.argv[2])):
        s = socket.socket(family); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(sys.argv[3]))); s.listen(64); socks.append(s)
    print("ready", flush=True)
    def loop(s):
        while True:
            conn, _ = s.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()
    threading.Thread(target=loop, args=(socks[1],), daemon=True).start()
    loop(socks[0])
""")

# A partition's process: for each "SOURCE,HOST,D|U,n" argument, one connection bound to SOURCE.
# With --hold it keeps one connection open and reads its requests from stdin instead.
CLIENT = textwrap.dedent("""
    import socket, sys
    def connect(source, host, port):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family)
        s.bind((source, 0)); s.connect((host, port))
        return s
    def transfer(s, kind, size):
        s.sendall(f"{kind} {size}\\n".encode())
        if kind == "D":
            left = size
            while left > 0:
                got = s.recv(min(left, 65536))
                if not got: raise SystemExit("short download")
                left -= len(got)
        else:
            block = b"u" * 65536
            left = size
            while left > 0:
                s.sendall(block[:left]); left -= min(left, 65536)
        ok = b""
        while len(ok) < 2:
            got = s.recv(2 - len(ok))
            if not got: raise SystemExit("no ok")
            ok += got
    port = int(sys.argv[1])
    if sys.argv[2] == "--hold":
        source, host = sys.argv[3], sys.argv[4]
        s = connect(source, host, port)  # lives across collector runs
        for line in sys.stdin:
            if line.strip() == "quit": break
            kind, size = line.split()
            transfer(s, kind, int(size))
            print("done", flush=True)
        s.close()
        raise SystemExit(0)
    for spec in sys.argv[2:]:
        source, host, kind, size = spec.split(",")
        with connect(source, host, port) as s:
            transfer(s, kind, int(size))
    print("done", flush=True)
""")


@dataclass
class Net:
    node: str  # namespace names
    peer: str
    node_if: str  # veth ends
    peer_if: str
    host4: str  # the node's own address
    peer4: str
    peer6: str
    part4: list[str]  # partition addresses on the node
    part6: list[str]
    port: int
    scripts: Path

    def node_cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.node, *args]

    def peer_cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.peer, *args]


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def net():
    """Two namespaces and a veth pair, torn down whatever happens."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2")
    tag = f"scn{os.getpid() % 100000}"
    n = os.getpid() % 250 + 1
    node, peer = f"{tag}-node", f"{tag}-peer"
    net = Net(node=node, peer=peer, node_if=f"{tag}a", peer_if=f"{tag}b",
              host4=f"10.213.{n}.1", peer4=f"10.213.{n}.2", peer6=f"fd00:213:{n}::2",
              part4=[f"10.213.{n}.10", f"10.213.{n}.11"], part6=[f"fd00:213:{n}::10", f"fd00:213:{n}:1::11"],
              port=18000 + n, scripts=shared_dir("slapos-collect-traffic-"))
    try:
        _sh("ip", "netns", "add", node)
        _sh("ip", "netns", "add", peer)
        _sh("ip", "-n", node, "link", "add", net.node_if, "type", "veth", "peer", "name", net.peer_if,
            "netns", peer)
        for ns, ifname in ((node, net.node_if), (peer, net.peer_if)):
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            _sh("ip", "-n", ns, "link", "set", ifname, "up")
        _sh("ip", "-n", node, "addr", "add", f"{net.host4}/24", "dev", net.node_if)
        for address in net.part4:
            _sh("ip", "-n", node, "addr", "add", f"{address}/24", "dev", net.node_if)
        # The second partition's IPv6 is in a prefix of its own: the kernel never picks it as the source of
        # a neighbour solicitation for the peer (which would make that partition's figures not 0).
        for address in net.part6:
            _sh("ip", "-n", node, "addr", "add", f"{address}/64", "dev", net.node_if, "nodad")
        _sh("ip", "-n", peer, "addr", "add", f"{net.peer4}/24", "dev", net.peer_if)
        _sh("ip", "-n", peer, "addr", "add", f"{net.peer6}/64", "dev", net.peer_if, "nodad")
        (net.scripts / "server.py").write_text(SERVER)
        (net.scripts / "client.py").write_text(CLIENT)
        for path in net.scripts.iterdir():
            path.chmod(0o644)
        yield net
    finally:
        for ns in (node, peer):
            subprocess.run(["ip", "netns", "pids", ns], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(net.scripts, ignore_errors=True)


@pytest.fixture(scope="module")
def users(net):
    """Two real unprivileged partition users, removed at the end."""
    names = [f"{net.node_if[:-1]}u{i}" for i in range(2)]
    made = []
    try:
        for name in names:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                           check=True, capture_output=True)
            made.append(name)
        yield [pwd.getpwnam(name) for name in names]
    finally:
        for name in made:
            subprocess.run(["userdel", name], capture_output=True)


@contextlib.contextmanager
def serving(cmd: list[str]):
    """The test server started by ``cmd``, once it listens; killed at the end."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def server(net):
    with serving(net.peer_cmd(sys.executable, str(net.scripts / "server.py"), net.peer4, net.peer6,
                              str(net.port))) as proc:
        yield proc


@pytest.fixture
def table(net):
    """The collector's table in the node namespace is removed after each test."""
    yield
    subprocess.run(net.node_cmd("nft", "delete", "table", "inet", "slapos_collect"), capture_output=True)


def _as_user(user: pwd.struct_passwd, *cmd: str) -> list[str]:
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", *cmd]


def _python() -> str:
    return other_user_runtime().python


def workload(net: Net, user: pwd.struct_passwd | None, *specs: str, port: int | None = None) -> None:
    """Run the client as ``user`` in the node namespace (None: as root in the peer namespace); specs are
    SOURCE,HOST,D|U,BYTES."""
    client = [str(net.scripts / "client.py"), str(port or net.port), *specs]
    cmd = net.peer_cmd(sys.executable, *client) if user is None else net.node_cmd(*_as_user(user, _python(), *client))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr


def collect(net: Net, data_dir: Path, *args: str, expect: int = 0, as_user: pwd.struct_passwd | None = None
            ) -> subprocess.CompletedProcess:
    if as_user is None:
        cmd = net.node_cmd(str(SCRIPTS / "slapos-collect"), "collect", "--data-dir", str(data_dir), *args)
        env = None
    else:
        runtime = other_user_runtime()
        cmd = net.node_cmd(*_as_user(as_user, *runtime.command("collect", "--data-dir", str(data_dir), *args)))
        env = runtime.env()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == expect, proc.stderr
    return proc


def last_rows(data_dir: Path) -> dict[str, sqlite3.Row]:
    db = sqlite3.connect(data_dir / "collector.db")
    db.row_factory = sqlite3.Row
    try:
        rows = db.execute("SELECT * FROM partition_usage ORDER BY rowid").fetchall()
    finally:
        db.close()
    return {row["partition"]: row for row in rows}


def counters(data_dir: Path) -> dict[str, sqlite3.Row]:
    db = sqlite3.connect(data_dir / "collector.db")
    db.row_factory = sqlite3.Row
    try:
        return {r["partition"]: r for r in db.execute("SELECT * FROM partition_counters").fetchall()}
    finally:
        db.close()


def assert_close(measured: int | None, payload: int, what: str) -> None:
    """IP bytes: at least the payload, at most the payload plus its headers and a little slack."""
    assert measured is not None, f"{what}: NULL"
    print(f"{what}: {measured:.0f} IP bytes for {payload} of payload ({measured / payload:.4f})")
    assert payload <= measured <= payload * HEADROOM + SLACK, f"{what}: {measured} for a payload of {payload}"


def xml_value(value: object) -> str:
    """A value as slapformat's xml_marshaller writes it (what computer_xml reads)."""
    if value is None:
        return "<none/>"
    if isinstance(value, str):
        return f"<string>{value}</string>"
    if isinstance(value, int):
        return f"<int>{value}</int>"
    if isinstance(value, list):
        return '<list id="l">' + "".join(xml_value(v) for v in value) + "</list>"
    return '<dictionary id="d">' + "".join(xml_value(k) + xml_value(v) for k, v in value.items()) + "</dictionary>"


def node_files(tmp_path: Path, users: list[pwd.struct_passwd], partitions: list[dict]) -> Path:
    """A slapos.cfg naming a computer XML of ``partitions``."""
    xml = tmp_path / "slapos.xml"
    xml.write_text("<?xml version='1.0' encoding='utf-8'?>\n<marshal>" + xml_value(
        {"address": "10.0.0.1", "netmask": "255.255.255.0", "partition_list": partitions}) + "</marshal>\n")
    cfg = tmp_path / "slapos.cfg"
    base = users[0].pw_name[:-1]
    cfg.write_text(f"[slapos]\ninstance_root = {tmp_path}\ncomputer_id = COMP-1\n"
                   f"[slapformat]\npartition_amount = {len(users)}\nuser_base_name = {base}\n"
                   f"partition_base_name = slappart\ncomputer_xml = {xml}\n")
    return cfg


def xml_partition(i: int, user: pwd.struct_passwd, addresses: list[str], tap: str | None = None) -> dict:
    return {"reference": f"slappart{i}", "path": f"/srv/slapgrid/slappart{i}", "user": {"name": user.pw_name},
            "tap": {"name": tap} if tap else None, "address_list": [{"addr": a, "netmask": "x"} for a in addresses]}


# -- nftables ---------------------------------------------------------------------------------------------

@needs_nft
def test_nftables_partition_figures_from_the_computer_xml(net, users, server, table, tmp_path, data_dir) -> None:
    """A partition's process, as its own user and bound to its addresses, downloads and uploads over IPv4
    and IPv6: its figures are the payload plus headers; the other partition's stay 0."""
    # The second partition's tap was never created (a node without taps): skipped without a word.
    cfg = node_files(tmp_path, users, [xml_partition(0, users[0], [net.part4[0], net.part6[0]]),
                                       xml_partition(1, users[1], [net.part4[1], net.part6[1]], tap="scnnotap1")])
    args = ("--slapos-cfg", str(cfg))
    first = collect(net, data_dir, *args)
    rows = last_rows(data_dir)
    assert rows[users[0].pw_name]["net_source"] == "nftables"
    assert rows[users[0].pw_name]["net_in_bytes"] is None, "first run: no baseline, unknown"
    listing = subprocess.run(net.node_cmd("nft", "list", "ruleset"), capture_output=True, text=True).stdout
    assert "table inet slapos_collect" in listing and "drop" not in listing and "policy accept" in listing
    assert first.stderr == ""

    down4, up4, down6, up6 = 3 * MB, MB, 2 * MB, MB // 2
    p4, p6 = net.part4[0], net.part6[0]
    workload(net, users[0], f"{p4},{net.peer4},D,{down4}", f"{p4},{net.peer4},U,{up4}",
             f"{p6},{net.peer6},D,{down6}", f"{p6},{net.peer6},U,{up6}")
    collect(net, data_dir, *args)
    rows = last_rows(data_dir)
    mine, other = rows[users[0].pw_name], rows[users[1].pw_name]
    assert_close(mine["net_in_bytes"], down4 + down6, "in")
    assert_close(mine["net_out_bytes"], up4 + up6, "out")
    assert mine["net_in_packets"] > 0 and mine["net_out_packets"] > 0
    assert (other["net_in_bytes"], other["net_out_bytes"], other["net_in_packets"], other["net_out_packets"]) \
        == (0, 0, 0, 0)
    assert other["net_source"] == "nftables"
    # The running counters (the /metrics counters) add the interval.
    assert counters(data_dir)[users[0].pw_name]["net_in_bytes"] == mine["net_in_bytes"]

    # Unbound, the process still sends from the node's address: its uid counts it, both ways.
    workload(net, users[1], f"{net.host4},{net.peer4},D,{MB}", f"{net.host4},{net.peer4},U,{MB}")
    collect(net, data_dir, *args)
    rows = last_rows(data_dir)
    assert_close(rows[users[1].pw_name]["net_in_bytes"], MB, "in by uid")
    assert_close(rows[users[1].pw_name]["net_out_bytes"], MB, "out by uid")
    assert rows[users[0].pw_name]["net_in_bytes"] < SLACK


@needs_nft
def test_flushed_or_deleted_table_is_recreated_and_the_interval_unknown(net, users, server, table, data_dir
                                                                       ) -> None:
    args = ("--user", users[0].pw_name, "--address", f"{users[0].pw_name}={net.part4[0]}")
    spec = f"{net.part4[0]},{net.peer4},D,{MB}"
    collect(net, data_dir, *args)
    for how in (["flush", "table"], ["delete", "table"]):
        subprocess.run(net.node_cmd("nft", *how, "inet", "slapos_collect"), check=True)
        workload(net, users[0], spec)
        proc = collect(net, data_dir, *args, "--log-file", str(data_dir / "log"))
        row = last_rows(data_dir)[users[0].pw_name]
        assert row["net_in_bytes"] is None and row["net_source"] == "nftables", how
        log = (data_dir / "log").read_text()
        assert ("flushed?" if how[0] == "flush" else "deleted?") in log, log
        assert proc.returncode == 0
        workload(net, users[0], spec)
        collect(net, data_dir, *args, "--log-file", str(data_dir / "log"))
        assert_close(last_rows(data_dir)[users[0].pw_name]["net_in_bytes"], MB, f"after {how[0]}")
    # Said once: the runs since did not repeat it.
    assert (data_dir / "log").read_text().count("flushed?") == 1


@needs_nft
def test_a_statement_added_to_the_table_is_taken_out(net, users, table, data_dir) -> None:
    """The table only counts: a rule someone adds to its chains (one that marks packets, one that counts and
    drops) is taken out by the next run, which says so and stores NULL for that interval."""
    me = users[0].pw_name
    args = ("--user", me, "--address", f"{me}={net.part4[0]}", "--log-file", str(data_dir / "log"))
    collect(net, data_dir, *args)
    for rule in (["meta", "mark", "set", "1"], ["counter", "name", "ip", "daddr", "map", "@in4", "drop"]):
        subprocess.run(net.node_cmd("nft", "add", "rule", "inet", "slapos_collect", "input", *rule), check=True)
        collect(net, data_dir, *args)
        assert last_rows(data_dir)[me]["net_in_bytes"] is None, rule
        listing = subprocess.run(net.node_cmd("nft", "list", "table", "inet", "slapos_collect"),
                                 capture_output=True, text=True, check=True).stdout
        assert "mark" not in listing and "drop" not in listing, listing
        collect(net, data_dir, *args)
        assert last_rows(data_dir)[me]["net_in_bytes"] is not None, rule
    assert (data_dir / "log").read_text().count("changed by someone else") == 2


@needs_nft
def test_nftables_state_of_another_shape_is_a_new_baseline(net, users, server, table, data_dir) -> None:
    """Counter values of another shape in the kept state: that interval is NULL, the run never fails."""
    from slapos_collect_recipe.store import Store

    me = users[0].pw_name
    args = ("--user", me, "--address", f"{me}={net.part4[0]}")
    collect(net, data_dir, *args)
    with Store(data_dir / "collector.db") as store:
        state = store.get_state("network")
        state["nftables"]["counters"] = {name: ["1", None] for name in state["nftables"]["counters"]}
        with store.transaction():
            store.set_state("network", state)
    proc = collect(net, data_dir, *args)
    assert proc.stderr == "" and last_rows(data_dir)[me]["net_in_bytes"] is None
    workload(net, users[0], f"{net.part4[0]},{net.peer4},D,{MB}")
    collect(net, data_dir, *args)
    assert_close(last_rows(data_dir)[me]["net_in_bytes"], MB, "after a state of another shape")


@needs_nft
def test_partitions_added_and_removed_keep_the_others_measured(net, users, server, table, data_dir) -> None:
    one = ("--user", users[0].pw_name, "--address", f"{users[0].pw_name}={net.part4[0]}")
    two = (*one, "--user", users[1].pw_name, "--address", f"{users[1].pw_name}={net.part4[1]}")
    collect(net, data_dir, *one)
    workload(net, users[0], f"{net.part4[0]},{net.peer4},D,{MB}")
    collect(net, data_dir, *two)
    rows = last_rows(data_dir)
    assert_close(rows[users[0].pw_name]["net_in_bytes"], MB, "kept through the change")
    assert rows[users[1].pw_name]["net_in_bytes"] is None, "new partition: no baseline yet"
    collect(net, data_dir, *one)
    names = nft_counter_names(net)
    assert len(names) == 4 and all(name.startswith(users[0].pw_name) for name in names)


def nft_counter_names(net: Net) -> list[str]:
    out = subprocess.run(net.node_cmd("nft", "-j", "list", "table", "inet", "slapos_collect"),
                         capture_output=True, text=True, check=True).stdout
    return [i["counter"]["name"] for i in json.loads(out)["nftables"] if "counter" in i]


@needs_nft
def test_network_accounting_remove_leaves_no_table(net, users, table, data_dir) -> None:
    collect(net, data_dir, "--user", users[0].pw_name)
    shown = subprocess.run(net.node_cmd(str(SCRIPTS / "slapos-collect"), "network-accounting"),
                           capture_output=True, text=True)
    assert shown.returncode == 0 and "_in_" in shown.stdout
    for expected in ("removed table inet slapos_collect", "nothing to remove"):
        proc = subprocess.run(net.node_cmd(str(SCRIPTS / "slapos-collect"), "network-accounting", "--remove"),
                              capture_output=True, text=True)
        assert proc.returncode == 0 and expected in proc.stdout, proc.stderr
    tables = subprocess.run(net.node_cmd("nft", "list", "tables"), capture_output=True, text=True).stdout
    assert "slapos_collect" not in tables


RESTORED = """
from slapos_collect_recipe import nft
layout = nft.build_layout([("p", 0, ["192.0.2.1"])])
with nft.restored():
    nft.apply(layout, None)
    made = nft.read_table() is not None
print(made, nft.read_table() is None)
nft.apply(layout, None)
with nft.restored():
    pass
print(nft.read_table() is not None)
"""


@needs_nft
def test_restored_removes_only_a_table_it_did_not_find(net, table) -> None:
    """``nft.restored()``, around the suite and the root benchmarks: a table made inside is removed on
    leaving, one that was there before is kept (here in the node namespace, not the host's)."""
    proc = subprocess.run(net.node_cmd(sys.executable, "-c", RESTORED), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True", "True"]


@needs_nft
def test_without_nft_or_root_one_line(net, users, table, data_dir) -> None:
    """nft missing (hidden by a mount namespace of this test) or not root: ``network-accounting`` and its
    ``--remove`` say so in one line; ``collect`` falls back to the sockets and stores its run."""
    binary = os.path.realpath(shutil.which("nft"))
    no_nft = ["unshare", "--mount", "sh", "-c", 'mount --bind /dev/null "$0" && exec "$@"', binary,
              "env", "PATH=/usr/bin:/bin"]
    runtime = other_user_runtime()
    for args in (["network-accounting"], ["network-accounting", "--remove"]):
        for how, cmd, env in (("not installed", [*no_nft, str(SCRIPTS / "slapos-collect"), *args], None),
                              ("must be root", _as_user(users[0], *runtime.command(*args)), runtime.env())):
            proc = subprocess.run(net.node_cmd(*cmd), capture_output=True, text=True, timeout=60, env=env)
            assert proc.returncode == 2 and how in proc.stderr, (how, args, proc.stderr)
            assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == "", proc.stderr
    me = users[0].pw_name
    cmd = [*no_nft, str(SCRIPTS / "slapos-collect"), "collect", "--data-dir", str(data_dir), "--user", me]
    proc = subprocess.run(net.node_cmd(*cmd), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "the nft command is not installed" in proc.stderr, proc.stderr
    assert last_rows(data_dir)[me]["net_source"] == "sockets"


@needs_nft
def test_loopback_between_partitions_counts_once_per_side(net, users, table, data_dir) -> None:
    """Partition 1 serves on its address, partition 0 downloads from it over loopback: 0's in is 1's out."""
    args = ("--user", users[0].pw_name, "--user", users[1].pw_name,
            "--address", f"{users[0].pw_name}={net.part4[0]}", "--address", f"{users[1].pw_name}={net.part4[1]}")
    port = net.port + 1
    with serving(net.node_cmd(*_as_user(users[1], _python(), str(net.scripts / "server.py"), net.part4[1],
                                        net.part6[1], str(port)))):
        collect(net, data_dir, *args)
        workload(net, users[0], f"{net.part4[0]},{net.part4[1]},D,{2 * MB}", port=port)
        collect(net, data_dir, *args)
    rows = last_rows(data_dir)
    client, served = rows[users[0].pw_name], rows[users[1].pw_name]
    assert_close(client["net_in_bytes"], 2 * MB, "client in")
    assert_close(served["net_out_bytes"], 2 * MB, "server out")
    # Each side is counted once, by its own figure; they differ only by the headers of packets the
    # kernel splits between the sender's output and the receiver's input.
    for one, other in (("net_in_bytes", "net_out_bytes"), ("net_out_bytes", "net_in_bytes")):
        assert abs(client[one] - served[other]) <= 0.01 * served[other] + 2000, (one, client[one], served[other])


@needs_nft
def test_without_net_admin_nft_refuses_and_the_sockets_take_over(net, users, server, table, data_dir) -> None:
    """Root without CAP_NET_ADMIN (a container, say): nft is refused by the kernel; the run falls back, says it
    once, and still measures."""
    me = users[0]
    args = ("--user", me.pw_name, "--address", f"{me.pw_name}={net.part4[0]}", "--log-file", str(data_dir / "log"))
    cmd = net.node_cmd("setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", str(SCRIPTS / "slapos-collect"),
                       "collect", "--data-dir", str(data_dir), *args)
    with held_connection(net, me, net.part4[0]) as send:
        send("D 1000")
        for _ in range(2):
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
            send(f"D {MB}")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    row = last_rows(data_dir)[me.pw_name]
    assert row["net_source"] == "sockets"
    assert_close(row["net_in_bytes"], MB, "sockets after the fallback")
    log = (data_dir / "log").read_text()
    assert log.count("nftables unusable") == 1, log
    tables = subprocess.run(net.node_cmd("nft", "list", "tables"), capture_output=True, text=True).stdout
    assert "slapos_collect" not in tables


# -- interface ------------------------------------------------------------------------------------------

@needs_root
def test_interface_of_a_virtual_machine(net, data_dir, tmp_path) -> None:
    """The node's veth end is the partition's tap; the peer namespace is the machine behind it. What it
    downloads from a server of the node is the partition's incoming traffic."""
    port = net.port + 2
    args = ("--partition", f"vm={tmp_path}", "--interface", f"vm={net.node_if}", "--network-accounting", "no")
    with serving(net.node_cmd(sys.executable, str(net.scripts / "server.py"), net.host4, "::1", str(port))):
        collect(net, data_dir, *args)
        assert last_rows(data_dir)["vm"]["net_in_bytes"] is None
        workload(net, None, f"{net.peer4},{net.host4},D,{4 * MB}", f"{net.peer4},{net.host4},U,{MB}", port=port)
        collect(net, data_dir, *args)
    row = last_rows(data_dir)["vm"]
    assert row["net_source"] == "interface"
    assert_close(row["net_in_bytes"], 4 * MB, "into the machine")
    assert_close(row["net_out_bytes"], MB, "out of the machine")

    # With an address of its own too, the partition's figures add both parts.
    both = ("--partition", f"vm={tmp_path}", "--interface", f"vm={net.node_if}", "--address", f"vm={net.part4[1]}")
    with serving(net.node_cmd(sys.executable, str(net.scripts / "server.py"), net.part4[1], "::1", str(port))):
        collect(net, data_dir, *both)
        workload(net, None, f"{net.peer4},{net.part4[1]},D,{MB}", port=port)
        collect(net, data_dir, *both)
    row = last_rows(data_dir)["vm"]
    assert row["net_source"] == "interface+nftables"
    # The machine's download crosses the interface; the server's answer is sent from the partition's address.
    assert_close(row["net_in_bytes"], MB, "into the machine")
    assert_close(row["net_out_bytes"], MB, "from the partition's address")
    subprocess.run(net.node_cmd("nft", "delete", "table", "inet", "slapos_collect"), capture_output=True)

    # Re-created interface: a new baseline, that interval unknown.
    _sh("ip", "-n", net.node, "link", "del", net.node_if)
    try:
        _sh("ip", "-n", net.node, "link", "add", net.node_if, "type", "veth", "peer", "name", net.peer_if,
            "netns", net.peer)
        collect(net, data_dir, *args)
        assert last_rows(data_dir)["vm"]["net_in_bytes"] is None
        collect(net, data_dir, *args)
        assert last_rows(data_dir)["vm"]["net_in_bytes"] == 0
    finally:
        _restore_veth(net)


def _restore_veth(net: Net) -> None:
    for ns, ifname in ((net.node, net.node_if), (net.peer, net.peer_if)):
        subprocess.run(["ip", "-n", ns, "link", "set", ifname, "up"], capture_output=True)
    subprocess.run(["ip", "-n", net.node, "addr", "add", f"{net.host4}/24", "dev", net.node_if], capture_output=True)
    for address in net.part4:
        subprocess.run(["ip", "-n", net.node, "addr", "add", f"{address}/24", "dev", net.node_if],
                       capture_output=True)
    for address in net.part6:
        subprocess.run(["ip", "-n", net.node, "addr", "add", f"{address}/64", "dev", net.node_if, "nodad"],
                       capture_output=True)
    subprocess.run(["ip", "-n", net.peer, "addr", "add", f"{net.peer4}/24", "dev", net.peer_if], capture_output=True)
    subprocess.run(["ip", "-n", net.peer, "addr", "add", f"{net.peer6}/64", "dev", net.peer_if, "nodad"],
                   capture_output=True)
    # Wait for the addresses to be usable again.
    for _ in range(50):
        if subprocess.run(net.node_cmd("ping", "-c1", "-W1", net.peer4), capture_output=True).returncode == 0:
            return
        time.sleep(0.1)


# -- sockets --------------------------------------------------------------------------------------------

@pytest.fixture
def user_data_dir(users):
    """A data dir the first partition user owns, outside root's private directories."""
    path = shared_dir()
    os.chown(path, users[0].pw_uid, users[0].pw_gid)
    path.chmod(0o750)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@needs_root
def test_sockets_without_root_against_a_long_lived_connection(net, users, server, user_data_dir) -> None:
    """The collector as the partition's own user: no nftables, the live TCP socket's growth between runs."""
    data_dir = user_data_dir
    me = users[0]
    args = ("--user", me.pw_name, "--address", f"{me.pw_name}={net.part4[0]}")
    with held_connection(net, me, net.part4[0]) as send:
        # The connection exists (and has moved some bytes) before the first run.
        send(f"D {MB}")
        collect(net, data_dir, *args, "--log-file", str(data_dir / "log"), as_user=me)
        first = last_rows(data_dir)[me.pw_name]
        assert first["net_source"] == "sockets" and first["net_in_bytes"] is None
        send(f"D {3 * MB}")
        send(f"U {MB}")
        collect(net, data_dir, *args, "--log-file", str(data_dir / "log"), as_user=me)
    row = last_rows(data_dir)[me.pw_name]
    assert row["net_source"] == "sockets"
    assert_close(row["net_in_bytes"], 3 * MB, "socket in")
    assert_close(row["net_out_bytes"], MB, "socket out")
    assert "not root" in (data_dir / "log").read_text()


@contextlib.contextmanager
def held_connection(net: Net, user: pwd.struct_passwd, source: str):
    """One connection of ``user``'s process from ``source`` to the peer, living across collector runs;
    yields a function sending one request on it ("D n" or "U n") and waiting for its end."""
    client = subprocess.Popen(net.node_cmd(*_as_user(user, _python(), str(net.scripts / "client.py"), str(net.port),
                                                     "--hold", source, net.peer4)),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def send(command: str) -> None:
        client.stdin.write(command + "\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "done"

    try:
        yield send
    finally:
        client.stdin.write("quit\n")
        client.stdin.close()
        client.wait(timeout=30)


@needs_nft
def test_sockets_miss_connections_opened_and_closed_between_runs(net, users, server, table, tmp_path) -> None:
    """Side by side on the same traffic: nftables counts short connections, the sockets see none of them."""
    me = users[0]
    by_nft, by_sockets = tmp_path / "nft", tmp_path / "sockets"
    by_nft.mkdir()
    by_sockets.mkdir()
    args = ("--user", me.pw_name, "--address", f"{me.pw_name}={net.part4[0]}")
    for data, mode in ((by_nft, "nftables"), (by_sockets, "sockets")):
        collect(net, data, *args, "--network-accounting", mode)
    size, count = 20_000, 50
    workload(net, me, *[f"{net.part4[0]},{net.peer4},D,{size}"] * count)
    for data, mode in ((by_nft, "nftables"), (by_sockets, "sockets")):
        collect(net, data, *args, "--network-accounting", mode)
    counted = last_rows(by_nft)[me.pw_name]
    seen = last_rows(by_sockets)[me.pw_name]
    assert counted["net_source"] == "nftables" and seen["net_source"] == "sockets"
    assert_close(counted["net_in_bytes"], size * count, "nftables")
    print(f"sockets: {seen['net_in_bytes']:.0f} bytes of {size * count} ({seen['net_in_bytes'] / (size * count):.2%})")
    assert seen["net_in_bytes"] < 0.05 * size * count, "sockets cannot see connections gone before the run"


@needs_nft
def test_bad_input_is_one_line_and_the_others_are_measured(net, users, server, table, tmp_path, data_dir) -> None:
    good, bad = users[1].pw_name, users[0].pw_name
    args = ("--user", bad, "--user", good, "--address", f"{bad}=10.213.300.1", "--address", f"{good}={net.part4[1]}",
            "--interface", f"{good}=nosuchif0", "--address", "nobody=10.213.1.99")
    for _ in range(2):
        proc = collect(net, data_dir, *args, expect=1)
        workload(net, users[1], f"{net.part4[1]},{net.peer4},D,{MB}")
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for expected in ("'10.213.300.1' of partition", "is not an IP address", "'nosuchif0' of partition",
                     "does not exist", "'nobody', which is not a collected partition"):
        assert expected in lines[0], lines[0]
    collect(net, data_dir, *args, expect=1)
    rows = last_rows(data_dir)
    assert_close(rows[good]["net_in_bytes"], MB, "the good partition is still measured")
    # The partition with a bad address is still measured by its uid.
    assert rows[bad]["net_source"] == "nftables" and rows[bad]["net_in_bytes"] == 0

    for content, message in (("not xml at all <", "is not XML"), ("<marshal><list id='1'/></marshal>",
                                                                  "no partition_list")):
        cfg = node_files(tmp_path, users, [])
        (tmp_path / "slapos.xml").write_text(content)
        proc = collect(net, data_dir, "--slapos-cfg", str(cfg), expect=1)
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert last_rows(data_dir)[good]["net_source"] == "nftables"

    proc = collect(net, data_dir, "--user", good, "--network-accounting", "sometimes", expect=2)
    assert "invalid choice" in proc.stderr
    config = tmp_path / "collect.cfg"
    for text, message in (("network-accounting = sometimes", "network-accounting must be one of"),
                          ("addresses =\n  x", "address 'x' must be LABEL=VALUE")):
        config.write_text(f"[slapos-collect]\nusers = {good}\n{text}\n")
        proc = collect(net, data_dir, "-c", str(config), expect=2)
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@needs_nft
def test_two_partitions_of_one_uid(net, users, server, table, data_dir) -> None:
    """Two user names of one uid: the uid counts for the last one (as the processes do), the other is measured
    by its address, and the run says so in one line."""
    alias = f"{users[0].pw_name[:-1]}a"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "-o",
                    "-u", str(users[0].pw_uid), "-g", str(users[0].pw_gid), alias], check=True, capture_output=True)
    try:
        args = ("--user", alias, "--user", users[0].pw_name, "--address", f"{alias}={net.part4[1]}")
        for _ in range(2):
            proc = collect(net, data_dir, *args, expect=1)
            assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
            assert f"partition {alias} is also partition {users[0].pw_name}'s" in proc.stderr, proc.stderr
            workload(net, users[0], f"{net.part4[0]},{net.peer4},D,{MB}", f"{net.part4[1]},{net.peer4},D,{MB}")
        collect(net, data_dir, *args, expect=1)
    finally:
        subprocess.run(["userdel", alias], capture_output=True)
    rows = last_rows(data_dir)
    assert_close(rows[users[0].pw_name]["net_in_bytes"], 2 * MB, "by the uid")
    # Not counted twice: the uid rule took its packets before the address rule could (only packets of no
    # socket, as the ACK of a closed connection, count by address).
    assert rows[alias]["net_source"] == "nftables" and rows[alias]["net_in_bytes"] < SLACK


def test_computer_xml_reader(tmp_path) -> None:
    """slapformat's marshalled dictionary: references, taps, tuns, a partition without a user or tap."""
    xml = tmp_path / "slapos.xml"
    xml.write_text(
        "<?xml version='1.0' encoding='utf-8'?>\n<marshal><dictionary id='i2'>"
        "<string>address</string><string>10.0.0.1</string>"
        "<string>partition_list</string><list id='i3'>"
        "<dictionary id='i4'><string>address_list</string><list id='i5'>"
        "<dictionary id='i6'><string>addr</string><string>10.0.0.2</string><string>netmask</string>"
        "<string>255.255.255.0</string></dictionary>"
        "<dictionary id='i7'><string>addr</string><string>2001:db8::2</string><string>netmask</string>"
        "<string>ffff:ffff:ffff:ffff::</string></dictionary></list>"
        "<string>reference</string><string>slappart0</string>"
        "<string>tap</string><dictionary id='i8'><string>name</string><string>slaptap0</string>"
        "<string>ipv4_addr</string><string></string></dictionary>"
        "<string>tun</string><dictionary id='i9'><string>name</string><string>slaptun0</string></dictionary>"
        "<string>user</string><dictionary id='i10'><string>name</string><string>slapuser0</string></dictionary>"
        "</dictionary>"
        "<dictionary id='i11'><string>address_list</string><list id='i12'/>"
        "<string>reference</string><string>slappart1</string><string>tap</string><none/>"
        "<string>user</string><reference id='i10'/></dictionary>"
        "</list></dictionary></marshal>\n")
    first, second = computer_xml.read(str(xml))
    assert (first.reference, first.user, first.addresses, first.interfaces) == (
        "slappart0", "slapuser0", ["10.0.0.2", "2001:db8::2"], ["slaptap0", "slaptun0"])
    assert (second.reference, second.user, second.addresses, second.interfaces) == (
        "slappart1", "slapuser0", [], [])
    for content in ("", "<marshal/>", "<marshal><string>x</string></marshal>",
                    "<marshal><dictionary id='1'><string>k</string></dictionary></marshal>",
                    "<marshal><dictionary id='1'><list id='2'/><string>v</string></dictionary></marshal>",
                    "<marshal>" + "<list>" * 5000 + "</list>" * 5000 + "</marshal>"):
        xml.write_text(content)
        with pytest.raises(computer_xml.ComputerXmlError, match="computer XML"):
            computer_xml.read(str(xml))
    with pytest.raises(computer_xml.ComputerXmlError, match="No such file"):
        computer_xml.read(str(tmp_path / "missing.xml"))


def test_the_table_only_counts() -> None:
    """What the collector asks nft for: counters, accept policies, return; no verdict that drops or changes."""
    layout = nft.build_layout([("slapuser0", 1000, ["10.0.0.2", "2001:db8::2"]), ("dir", None, ["10.0.0.3"])])
    text = nft.ruleset(layout, ["old_in_0123456789"])
    assert text.count("policy accept;") == 2
    for word in ("drop", "reject", "queue", "mark", "limit", "nat", "redirect", "jump", "goto", "dup", "fwd",
                 "set ", "accept"):
        assert word not in text.replace("policy accept;", ""), word
    assert text.count("return") == 2  # the two uid rules
    assert text.count("add rule") == 6  # whatever the number of partitions
    assert len(layout.counters) == 2 * 3 + 2 * 1
    assert "delete counter inet slapos_collect old_in_0123456789" in text
    # Every statement names the collector's own table, and only it.
    assert all(line.split()[2:4] == ["inet", "slapos_collect"] for line in text.splitlines())


@pytest.mark.parametrize("family, host", [(2, "127.0.0.1"), (10, "::1")])
def test_sock_diag_sees_a_local_connection(family, host) -> None:
    """Any user may dump the TCP sockets (IPv4 and IPv6 in one dump); a connection's bytes appear on both of
    its sockets."""
    import socket

    with socket.socket(family) as listener:
        listener.bind((host, 0))
        listener.listen()
        with socket.create_connection(listener.getsockname()[:2]) as client:
            server_side, _ = listener.accept()
            with server_side:
                client.sendall(b"x" * 100_000)
                got = 0
                while got < 100_000:
                    got += len(server_side.recv(65536))
                ports = {client.getsockname()[1], server_side.getsockname()[1]}
                dump = sockdiag.tcp_sockets()
                found = [s for s in dump if s.local == host and s.family == family
                         and s.uid == os.getuid() and (s.bytes_sent == 100_000 or s.bytes_received == 100_000)]
    assert len(found) >= 2, (found, ports)
    assert len({s.cookie for s in dump}) == len(dump), "each socket once"
    assert all(s.segs_in > 0 and s.segs_out > 0 and s.header >= 40 for s in found)


needs_strace = pytest.mark.skipif(not shutil.which("strace"), reason="needs strace")


def traced_collect(net: Net, users: list[pwd.struct_passwd], data_dir: Path, calls: str, *args: str) -> list[str]:
    """One collect run of both partitions (a uid and two addresses each) under strace: the ``calls`` it made."""
    partitions = [arg for user, p4, p6 in zip(users, net.part4, net.part6, strict=True)
                  for arg in ("--user", user.pw_name, "--address", f"{user.pw_name}={p4}",
                              "--address", f"{user.pw_name}={p6}")]
    trace = data_dir.parent / "strace"
    proc = subprocess.run(net.node_cmd("strace", "-f", "-qq", "-e", f"trace={calls}", "-o", str(trace),
                                       str(SCRIPTS / "slapos-collect"), "collect", "--data-dir", str(data_dir),
                                       *partitions, *args), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return trace.read_text().splitlines()


@needs_nft
@needs_strace
def test_one_nft_call_a_run(net, users, table, data_dir) -> None:
    """nftables costs one ``nft`` a run once the table is made, whatever the number of partitions."""
    calls = [[line for line in traced_collect(net, users, data_dir, "execve") if '/nft", [' in line and "= 0" in line]
             for _ in range(3)]
    assert [len(c) for c in calls] == [2, 1, 1], calls  # list, then create; then list only


@needs_root
@needs_strace
def test_one_socket_dump_a_run(net, users, server, data_dir) -> None:
    """The sockets mechanism asks the kernel once a run, whatever the number of partitions and families."""
    with held_connection(net, users[0], net.part4[0]) as send:
        send(f"D {MB}")
        for _ in range(2):
            lines = traced_collect(net, users, data_dir, "sendto,sendmsg", "--network-accounting", "sockets")
            requests = [line for line in lines if "DIAG" in line]
            assert len(requests) == 1, requests
            send(f"D {MB}")
    assert_close(last_rows(data_dir)[users[0].pw_name]["net_in_bytes"], MB, "sockets, one dump")


def test_state_of_another_shape_is_a_new_baseline(tmp_path) -> None:
    """Whatever the previous run left (or a damaged state), a run measures and never fails: unknown, then known."""
    from slapos_collect_recipe import traffic
    from slapos_collect_recipe.config import CollectSettings, Partition

    settings = CollectSettings(data_dir=tmp_path, partitions=[Partition("me", uid=os.getuid())],
                               network_accounting="sockets", interfaces={"me": ["lo"]})
    import socket

    lo = socket.if_nametoindex("lo")
    for garbage in (None, [], {"interfaces": [1], "sockets": "x", "notes": 3},
                    {"interfaces": {"lo": "x"}, "sockets": {"sockets": {"1": 5}, "labels": "me"}},
                    {"interfaces": {"lo": [lo, 772, "a", "b", "c", "d"]}, "sockets": {"sockets": {}, "labels": [[1]]}},
                    {"interfaces": {"lo": [lo, "772", 0, 0, 0, 0]}, "sockets": {"sockets": {}, "labels": [{}]}}):
        measured, state, problems = traffic.measure(settings, garbage)
        assert measured["me"] == (None, "interface+sockets") and problems == []
    measured, _, _ = traffic.measure(settings, state)
    figures, source = measured["me"]
    assert figures is not None and figures.net_in_bytes >= 0 and source == "interface+sockets"


def test_one_interface_counts_for_one_partition(tmp_path, data_dir) -> None:
    """An interface given to two partitions is the first one's: never counted twice."""
    args = ("collect", "--data-dir", str(data_dir), "--partition", f"a={tmp_path}", "--partition", f"b={tmp_path}",
            "--interface", "a=lo", "--interface", "b=lo", "--network-accounting", "no")
    for _ in range(2):
        proc = run_cli(*args)
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "interface lo of partition b is already partition a's: ignored" in proc.stderr, proc.stderr
    rows = last_rows(data_dir)
    assert rows["a"]["net_source"] == "interface" and rows["a"]["net_in_bytes"] is not None
    assert rows["b"]["net_source"] is None and rows["b"]["net_in_bytes"] is None


@needs_nft
def test_labels_of_any_shape_make_a_table_nft_takes(net, users, server, table, tmp_path, data_dir) -> None:
    """Counter names come from labels: one beginning with a digit or made of other characters still gives a
    table nft accepts (else every partition would fall back to the sockets)."""
    labels = ["0app", "_x", "é-ü.1"]
    # The addresses written otherwise than nft prints them: IPv4-mapped, upper case and zeros written out.
    other_ways = [f"::ffff:{net.part4[0]}", net.part4[1],
                  ipaddress.IPv6Address(net.part6[0]).exploded.upper()]
    args = [arg for label, address in zip(labels, other_ways, strict=True)
            for arg in ("--partition", f"{label}={tmp_path}", "--address", f"{label}={address}")]
    collect(net, data_dir, *args)
    workload(net, users[0], f"{net.part4[0]},{net.peer4},D,{MB}", f"{net.part6[0]},{net.peer6},U,{MB}")
    collect(net, data_dir, *args)
    rows = last_rows(data_dir)
    assert [rows[label]["net_source"] for label in labels] == ["nftables"] * 3
    assert_close(rows["0app"]["net_in_bytes"], MB, "a label beginning with a digit, an IPv4-mapped address")
    assert_close(rows["é-ü.1"]["net_out_bytes"], MB, "an IPv6 address written out in upper case")
    assert rows["_x"]["net_in_bytes"] < SLACK


def test_an_address_written_two_ways_is_one_address(tmp_path) -> None:
    """Addresses are compared as nft prints them: two spellings of one address are one partition's."""
    from slapos_collect_recipe import traffic
    from slapos_collect_recipe.config import CollectSettings, Partition

    settings = CollectSettings(data_dir=tmp_path, partitions=[Partition(label) for label in "abc"],
                               addresses={"a": ["10.0.0.1", "fd00::1"], "b": ["::FFFF:10.0.0.1", "2001:DB8:0::0:1"],
                                          "c": ["FD00:0:0::0001", "2001:db8::1"]})
    notes = traffic.Notes(None)
    found = {t.label: t.addresses for t in traffic.targets(settings, notes)}
    assert found == {"a": ["10.0.0.1", "fd00::1"], "b": ["2001:db8::1"], "c": []}
    assert notes.problems == [
        "address 10.0.0.1 of partition b is already partition a's: ignored",
        "address fd00::1 of partition c is already partition a's: ignored",
        "address 2001:db8::1 of partition c is already partition b's: ignored",
    ]


NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 1234567    8910    0    0    0     0          0         0  1234567    8910    0    0    0     0       0          0
slaptap0: 500 5 0 0 0 0 0 0 70000 60 0 0 0 0 0 0
  bad: 1 2 3
"""


def test_interface_counters_from_a_proc_tree(tmp_path) -> None:
    """``/proc/net/dev`` read under any root: bytes and packets each way, a short line skipped, and a tree
    without the file giving nothing rather than failing the run."""
    from slapos_collect_recipe import traffic

    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "dev").write_text(NET_DEV)
    assert traffic.interface_counters(str(tmp_path)) == {"lo": (1234567, 8910, 1234567, 8910),
                                                         "slaptap0": (500, 5, 70000, 60)}
    assert traffic.interface_counters(str(tmp_path / "none")) == {}
