"""slapmonitor under hostile load: the real server under a 1,024-descriptor limit (prlimit), real
floods from loopback addresses, the probe asked while they are held.

Every flood is bounded (a fixed number of sockets, each connect with a timeout) and closed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import resource
import shutil
import socket
import ssl
import time
from collections.abc import Iterator

import aiohttp
import pytest
from conftest import run_cli
from monitor_helpers import SECRET, RunningServer, running_server

DESCRIPTORS = 1024
PRLIMIT = ("prlimit", f"--nofile={DESCRIPTORS}:{DESCRIPTORS}", "--")
HEADER_TIMEOUT = 2.0
HALF_REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n"  # and then nothing
needs_prlimit = pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) is missing")


@pytest.fixture(scope="module", autouse=True)
def client_descriptors() -> Iterator[None]:
    """The flood's sockets are this process's: room for them (root may raise the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 20000
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def open_flood(port: int, sources: list[str], per_source: int, payload: bytes | None,
               context: ssl.SSLContext | None = None) -> list[socket.socket]:
    """``per_source`` connections from each address, each sending ``payload`` (or nothing);
    with ``context`` the TLS handshake is made first. The server may close some at once."""
    held: list[socket.socket] = []
    for source in sources:
        for _ in range(per_source):
            sock = socket.socket()
            try:
                sock.bind((source, 0))
                sock.settimeout(5)
                sock.connect(("127.0.0.1", port))
                if context is not None:
                    sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
                if payload:
                    sock.sendall(payload)
            except OSError:  # refused or dropped while opening: the server's right
                sock.close()
                continue
            held.append(sock)
    return held


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.close()


def still_open(socks: list[socket.socket]) -> int:
    """How many the server has not closed yet. Read below TLS (its session tickets are not an
    answer): what arrived is discarded, these sockets serve nothing else."""
    count = 0
    for sock in socks:
        try:
            sock.setblocking(False)
            for _ in range(16):
                if not socket.socket.recv(sock, 65536):
                    break  # end of file: closed
            else:
                count += 1  # a stream of data: not a half-open request
        except BlockingIOError:
            count += 1
        except OSError:
            pass  # reset or closed
    return count


def probe(server: RunningServer, timeout: float = 5.0, source: str = "127.0.0.1") -> tuple[int, bytes, float]:
    """A fresh client's ``GET /``: (status, body, seconds)."""
    started = time.monotonic()
    if server.tls:
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", server.port, timeout=timeout, context=server.ssl_context(), source_address=(source, 0))
    else:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout, source_address=(source, 0))
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        return response.status, response.read(), time.monotonic() - started
    finally:
        conn.close()


def scrape(server: RunningServer) -> dict[str, float]:
    """The slapmonitor_* samples of /metrics: name{labels} -> value."""
    status, _, body = server.get(f"/{SECRET}/metrics")
    assert status == 200
    samples = {}
    for line in body.decode().splitlines():
        match = re.match(r"(slapmonitor_\S+) (\S+)$", line)
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def serves_as_before(server: RunningServer) -> None:
    """200 concurrent downloads of a file, every one complete and right."""
    body = (server.data_dir / "file.bin").read_bytes()

    async def main() -> list[bytes]:
        connector = aiohttp.TCPConnector(limit=200, force_close=True, ssl=server.ssl_context() or False)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def one() -> bytes:
                async with session.get(server.url("server-log/file.bin")) as response:
                    assert response.status == 200
                    return await response.read()
            return await asyncio.gather(*(one() for _ in range(200)))

    assert all(got == body for got in asyncio.run(main()))


def flood_server(data_dir, tls: bool, *args: str):
    (data_dir / "file.bin").write_bytes(os.urandom(100_000))
    return running_server(data_dir, "--header-timeout", str(HEADER_TIMEOUT), "--handshake-timeout",
                          str(HEADER_TIMEOUT), *args, tls=None if tls else False, prefix=PRLIMIT)


def later(server: RunningServer) -> list[str]:
    """What the server printed after its start line."""
    return [x for x in server.stderr if "listening on" not in x]


def check_log(server: RunningServer, at_most: int = 5) -> None:
    lines = later(server)
    assert not [x for x in lines if "Traceback" in x or "Error" in x], lines[:20]
    assert len(lines) <= at_most, lines[:20]


# -- floods ----------------------------------------------------------------------------------


@needs_prlimit
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_one_address_flood_of_half_open_requests(data_dir, tls):
    with flood_server(data_dir, tls) as server:
        assert f"({DESCRIPTORS} descriptors, at most 896 connections, 256 per address)" in start_line(server)
        before = open_fds(server.proc.pid)
        context = server.ssl_context()
        if tls:
            # never starting the handshake, and a few hundred slowloris requests inside TLS
            flood = open_flood(server.port, ["127.0.0.1"], 2500, None)
            flood += open_flood(server.port, ["127.0.0.1"], 300, HALF_REQUEST, context)
        else:
            flood = open_flood(server.port, ["127.0.0.1"], 3000, HALF_REQUEST)
        try:
            assert len(flood) > 2000
            # the per-address cap, once the server has accepted what the kernel queued
            wait_until(lambda: still_open(flood) <= 256, 10, "more than the per-address cap held")
            assert still_open(flood) > 0
            status, body, _ = probe(server)  # from the flooding address itself
            assert (status, body) == (200, b"OK")
            figures = scrape(server)
            assert figures['slapmonitor_connections_dropped_total{reason="per_address"}'] > 1000
            assert figures["slapmonitor_per_address_cap_hits_total"] > 1000
            # the held ones are closed after the header (or handshake) timeout
            wait_until(lambda: still_open(flood) == 0, HEADER_TIMEOUT + 20, "half-open connections kept")
        finally:
            close_all(flood)
        figures = scrape(server)
        # the newest 256 are held: under TLS the slowloris requests opened last
        assert figures['slapmonitor_connections_dropped_total{reason="header_timeout"}'] > 0
        wait_until(lambda: scrape(server)["slapmonitor_connections"] <= 1, 10, "connections left open")
        serves_as_before(server)
        wait_until(lambda: open_fds(server.proc.pid) <= before, 10, "descriptors not given back")
        check_log(server)


@needs_prlimit
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_many_addresses_flood_fills_the_server_and_the_probe_still_answers(data_dir, tls):
    sources = [f"127.0.0.{n}" for n in range(2, 22)]
    with flood_server(data_dir, tls) as server:
        flood = open_flood(server.port, sources, 250, None if tls else HALF_REQUEST)
        try:
            assert len(flood) > 4000
            # the total cap (below the descriptor limit), once the kernel's queue is accepted
            wait_until(lambda: still_open(flood) <= 896, 10, "more than the cap held")
            for _ in range(3):
                status, body, _ = probe(server)
                assert (status, body) == (200, b"OK")
            figures = scrape(server)
            assert figures['slapmonitor_connections_dropped_total{reason="full"}'] > 1000
            assert figures["slapmonitor_connections"] <= 896
            wait_until(lambda: still_open(flood) == 0, HEADER_TIMEOUT + 20, "half-open connections kept")
        finally:
            close_all(flood)
        reason = "handshake_timeout" if tls else "header_timeout"  # TLS: never started the handshake
        assert scrape(server)[f'slapmonitor_connections_dropped_total{{reason="{reason}"}}'] > 0
        wait_until(lambda: scrape(server)["slapmonitor_connections"] <= 1, 10, "connections left open")
        serves_as_before(server)
        check_log(server)


@needs_prlimit
def test_descriptor_shortage_pauses_and_is_logged_once(data_dir):
    """A cap set above the descriptor limit: accept runs out of descriptors, and copes."""
    with flood_server(data_dir, False, "--max-connections", "5000") as server:
        flood = open_flood(server.port, [f"127.0.0.{n}" for n in range(2, 12)], 300, HALF_REQUEST)
        try:
            status, body, _ = probe(server)
            assert (status, body) == (200, b"OK")
            figures = scrape(server)
            assert figures["slapmonitor_descriptor_shortages_total"] > 0
            assert figures['slapmonitor_connections_dropped_total{reason="descriptors"}'] > 0
        finally:
            close_all(flood)
        wait_until(lambda: scrape(server)["slapmonitor_connections"] <= 1, HEADER_TIMEOUT + 20,
                   "connections left open")
        serves_as_before(server)
        # the start warning, then one report line (the next could only come a minute later)
        check_log(server, at_most=3)
        assert len([x for x in server.stderr if "descriptor shortages" in x]) == 1, server.stderr


# -- timeouts ----------------------------------------------------------------------------------------


def closed_by_server(sock: socket.socket) -> bool:
    """Waits (the socket's timeout) for the server to close: end of file or reset, no data."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def test_idle_keep_alive_and_slow_headers_are_closed(data_dir):
    with running_server(data_dir, "--header-timeout", "1", "--idle-timeout", "1.5") as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"OK"
        slow = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        started = time.monotonic()
        try:
            for piece in (b"GET / HTTP/1.1\r\n", b"Host: x\r\n", b"X-A: 1\r\n", b"X-B: 2\r\n"):
                slow.sendall(piece)  # a trickle does not extend the header timeout
                time.sleep(0.3)
            assert closed_by_server(slow)  # no answer
            assert time.monotonic() - started >= 1.0
            conn.sock.settimeout(10)
            assert closed_by_server(conn.sock)  # the idle keep-alive too
        finally:
            slow.close()
            conn.close()
        figures = scrape(server)
        assert figures['slapmonitor_connections_dropped_total{reason="header_timeout"}'] == 1
        assert figures['slapmonitor_connections_dropped_total{reason="idle_timeout"}'] >= 1
        # one line (the report is at most once a minute, never one per connection)
        assert len(later(server)) <= 1 and "header timeout 1" in "".join(later(server)), server.stderr


def test_slow_upload_body_gets_408_and_the_connection_closes(data_dir):
    with running_server(data_dir, "--body-timeout", "1") as server:
        conn = server.connection()
        conn.putrequest("POST", f"/{SECRET}/bench/upload")
        conn.putheader("Content-Length", "1000")
        conn.endheaders()
        conn.send(b"x" * 10)
        response = conn.getresponse()
        assert response.status == 408 and response.getheader("Connection") == "close"
        conn.close()
        status, _, body = server.get(f"/{SECRET}/bench/upload", method="POST", body=b"12345")
        assert (status, json.loads(body)["bytes"]) == (200, 5)


# -- oversized requests ----------------------------------------------------------------------------


def raw_exchange(server: RunningServer, data: bytes) -> bytes:
    """Send ``data``, read the answer until the server closes (a socket timeout if it never does)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        answer = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
        return answer


def test_oversized_request_line_header_and_body(data_dir):
    with running_server(data_dir, "--max-request-line", "2000", "--max-header-field", "4000",
                        "--max-headers", "20", "--max-header-bytes", "10000") as server:
        answer = raw_exchange(server, b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert re.match(rb"HTTP/1\.[01] 414 ", answer), answer[:100]
        answer = raw_exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 5000 + b"\r\n\r\n")
        assert re.match(rb"HTTP/1\.[01] 431 ", answer), answer[:100]
        many = b"".join(b"X-%d: y\r\n" % i for i in range(30))
        answer = raw_exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        assert re.match(rb"HTTP/1\.[01] 431 ", answer), answer[:100]
        # each line allowed, the whole head not: 431 before the parser holds it all
        lines = b"".join(b"X-%d: %s\r\n" % (i, b"z" * 3000) for i in range(5))
        answer = raw_exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
        assert re.match(rb"HTTP/1\.[01] 431 ", answer), answer[:100]
        answer = raw_exchange(server, b"NOT HTTP AT ALL\r\n\r\n")
        assert re.match(rb"HTTP/1\.[01] 400 ", answer), answer[:100]
        # a long but allowed request still works
        status, _, body = server.get("/?" + "q" * 1900)
        assert (status, body) == (200, b"OK")
        # a head of 8,800 bytes, then a body of 3 MB in the same stream: the body is not counted
        payload = os.urandom(3 * 1024 * 1024)
        status, _, body = server.get(f"/{SECRET}/bench/upload", {f"X-Pad-{i}": "p" * 2900 for i in range(3)}, method="POST",
                                     body=payload)
        assert (status, json.loads(body)["bytes"]) == (200, len(payload))
        answer = raw_exchange(server, f"POST /{SECRET}/bench/upload HTTP/1.1\r\nHost: x\r\n"
                                 f"Content-Length: {300 * 1024 * 1024}\r\n\r\n".encode())
        assert re.match(rb"HTTP/1\.[01] 413 ", answer), answer[:100]
        assert later(server) == [], server.stderr  # no traceback per bad request


def test_a_body_left_unread_is_not_taken_for_the_next_request_head(data_dir):
    """A handler that answers without reading the body (405, 404): the body that arrives
    after the answer is the request's, not a new request's head (no 431 on top of the
    answer); the connection goes on to its next request."""
    body = b"x" * (1 << 20)  # far more than max-header-bytes
    with running_server(data_dir) as server:
        for path in ("/", f"/{SECRET}/nothing-here"):
            head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(head)
                time.sleep(0.2)  # answered by now: the body comes after the answer
                sock.sendall(body)
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            statuses = re.findall(rb"HTTP/1\.1 (\d+) ", answer)
            assert statuses == [b"405" if path == "/" else b"404", b"200"], answer
            assert answer.endswith(b"OK"), answer
        assert later(server) == [], server.stderr


# -- settings ------------------------------------------------------------------------------------


def test_limits_from_the_config_file_and_bad_values(tmp_path, data_dir):
    config = tmp_path / "monitor.cfg"
    config.write_text("[monitor]\nmax-connections = 50\nmax-connections-per-address = 7\n"
                      "header-timeout = 3.5\n")
    with running_server(data_dir, "-c", str(config)) as server:
        assert "at most 50 connections, 7 per address" in start_line(server)
        assert scrape(server)["slapmonitor_connections_max"] == 50
    if shutil.which("prlimit"):  # the soft descriptor limit is raised to the hard one
        with running_server(data_dir, prefix=("prlimit", "--nofile=256:2048", "--")) as server:
            assert "(2048 descriptors, at most 1792 connections, 256 per address)" in start_line(server)
    base = ["serve", "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", "0", "--secret", SECRET,
            "--no-tls"]
    for bad, expected in ((["--header-timeout", "0"], "header-timeout must be above 0"),
                          (["--max-connections", "0"], "max-connections must be at least 1")):
        proc = run_cli(*base, *bad, timeout=30)
        assert proc.returncode != 0 and expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    config.write_text("[monitor]\nidle-timeout = soon\n")
    proc = run_cli(*base, "-c", str(config), timeout=30)
    assert proc.returncode != 0 and "idle-timeout must be a number of seconds" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def start_line(server: RunningServer) -> str:
    return next(line for line in server.stderr if "listening on" in line)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_client_that_reads_nothing_is_dropped_after_the_send_timeout(data_dir, tls):
    size = 64 * 1024 * 1024  # more than the kernel buffers on both sides hold
    with running_server(data_dir, "--send-timeout", "1", tls=None if tls else False) as server:
        (data_dir / "big.bin").write_bytes(b"\0" * size)
        conn = server.connection()
        conn.request("GET", f"/{SECRET}/server-log/big.bin")
        time.sleep(4)  # reads nothing: the server's writes block, then it gives up
        conn.sock.settimeout(10)
        got = 0
        with contextlib.suppress(OSError, http.client.HTTPException):
            response = conn.getresponse()
            while chunk := response.read(1 << 20):
                got += len(chunk)
        conn.close()
        assert got < size  # cut (and reset: what the kernel held is not trickled out)
        if tls:  # through the transport (plain HTTP goes by sendfile, which times itself out)
            assert scrape(server)['slapmonitor_connections_dropped_total{reason="send_timeout"}'] == 1
        assert server.get("/")[2] == b"OK"
        assert later(server) == [] or all("send timeout" in x for x in later(server)), server.stderr


def test_per_address_key():
    from slapos_collect_recipe.connections import address_key

    assert address_key(("127.0.0.5", 4000), socket.AF_INET) == "127.0.0.5"
    one = address_key(("2001:db8:1:2::1", 4000, 0, 0), socket.AF_INET6)
    assert one == address_key(("2001:db8:1:2:ffff::9", 5000, 0, 0), socket.AF_INET6)  # one /64
    assert one != address_key(("2001:db8:1:3::1", 4000, 0, 0), socket.AF_INET6)
    # IPv4-mapped (a dual-stack socket): each its own IPv4 address, as on an IPv4 socket
    mapped = address_key(("::ffff:127.0.0.5", 4000, 0, 0), socket.AF_INET6)
    assert mapped == address_key(("127.0.0.5", 4000), socket.AF_INET)
    assert mapped != address_key(("::ffff:127.0.0.6", 4000, 0, 0), socket.AF_INET6)
    assert mapped != address_key(("::1", 4000, 0, 0), socket.AF_INET6)


def test_a_full_address_of_busy_connections_refuses_the_next_one(data_dir):
    (data_dir / "big.bin").write_bytes(b"\0" * (64 * 1024 * 1024))
    with running_server(data_dir, "--max-connections-per-address", "2") as server:
        busy = []
        try:
            for _ in range(2):  # downloads that read nothing: busy in their handler, not waiting
                conn = server.connection()
                conn.request("GET", f"/{SECRET}/server-log/big.bin")
                busy.append(conn)
            time.sleep(1)
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as third:
                third.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert closed_by_server(third)  # refused: nothing to drop
            assert probe(server, source="127.0.0.2")[:2] == (200, b"OK")  # other addresses are served
        finally:
            for conn in busy:
                conn.close()
        figures: dict[str, float] = {}

        def scraped() -> bool:  # from this address again, once the server has let the two go
            try:
                figures.update(scrape(server))
            except (OSError, http.client.HTTPException):
                return False
            return True

        wait_until(scraped, 10, "the address stays full")
        assert figures['slapmonitor_connections_dropped_total{reason="refused"}'] >= 1
        assert figures["slapmonitor_per_address_cap_hits_total"] >= 1
