"""slapmonitor over real sockets: the real console script, real clients (http.client, aiohttp)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import socket
import sqlite3
import ssl
import stat
import threading
import time
from email.utils import formatdate
from pathlib import Path

import aiohttp
import pytest
from conftest import run_cli
from monitor_helpers import SECRET, has_ipv6, running_server, start_server

from slapos_collect_recipe.store import Store

IPV6 = has_ipv6()
needs_ipv6 = pytest.mark.skipif(not IPV6, reason="no IPv6 loopback here")
CSV = "time,entry\n2026-11-29 09:00:00,12.5\n2026-11-29 09:01:00,15\n"


def fill(data_dir: Path) -> dict[str, bytes]:
    """A data dir like the collector's, with what must never be served next to it."""
    store = Store(data_dir / "collector.db")
    with store.transaction():
        store.insert("user", [("slappart0", 1, "1-1", 2.5, 10.0, 3, 1.0, 1e6, 1000, 10)], "2026-11-29", "09:00:00")
        store.insert("system", [(0.5, 12.0, 1e9, 2e9, 100, 0, 0, 200, 0, 0)], "2026-11-29", "09:00:00")
        store.insert_usage([("slappart0", 10.0, 16.7, 1, 0, 1e6, 1000, 10, "children", None, None, None, None, None,
                             None, None)], "2026-11-29", "09:00:00")
    store.close()
    files = {
        "system_cpu_percent.csv": CSV.encode(),
        "small.bin": os.urandom(1000),
        "big.bin": os.urandom(3 * 1024 * 1024 + 17),
        "2026-11-28.tar.gz": os.urandom(2000),
        "consumption-report/2026-11-28.xml": b"<journal/>\n",
    }
    for name, body in files.items():
        (data_dir / name).parent.mkdir(exist_ok=True)
        (data_dir / name).write_bytes(body)
    (data_dir / ".collect.lock").write_text("123\n")
    (data_dir / ".hidden-dir").mkdir()
    (data_dir / ".hidden-dir" / "inside.txt").write_text("hidden\n")
    os.symlink("/etc/passwd", data_dir / "passwd-link")
    os.symlink("/etc", data_dir / "etc-link")
    os.symlink(".collect.lock", data_dir / "lock-link")
    os.symlink("system_cpu_percent.csv", data_dir / "cpu-link.csv")
    return files


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("served")
    files = fill(data_dir)
    access_log = data_dir.parent / "access.log"
    hosts = ("127.0.0.1", "::1") if IPV6 else ("127.0.0.1",)
    with running_server(data_dir, "--access-log", str(access_log), hosts=hosts) as server:
        server.files = files
        server.access_log = access_log
        yield server


@pytest.fixture(scope="module")
def served_tls(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("served-tls")
    files = fill(data_dir)
    hosts = ("127.0.0.1", "::1") if IPV6 else ("127.0.0.1",)
    with running_server(data_dir, hosts=hosts, tls=True, command="slapmonitor") as server:
        server.files = files
        yield server


def path(server, rest: str) -> str:
    return f"/{server.secret}/{rest}"


# -- routes ------------------------------------------------------------------


def test_root_answers_ok(served):
    status, headers, body = served.get("/")
    assert (status, body) == (200, b"OK")
    assert headers["Content-Type"].startswith("text/plain")
    status, headers, body = served.get("/", method="HEAD")
    assert status == 200 and body == b""


@needs_ipv6
def test_listens_on_ipv4_and_ipv6(served):
    assert any("[::1]" in url for url in served.urls) and any("127.0.0.1" in url for url in served.urls)
    for host in ("127.0.0.1", "::1"):
        status, _, body = served.get(path(served, "server-log/system_cpu_percent.csv"), host=host)
        assert (status, body) == (200, CSV.encode())


def test_listing_html_and_json(served):
    status, headers, body = served.get(path(served, "server-log/"))
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    for name in ("system_cpu_percent.csv", "collector.db", "2026-11-28.tar.gz", "consumption-report/"):
        assert f">{name}<" in page
    status, headers, body = served.get(path(served, "server-log/"), {"Accept": "application/json"})
    assert status == 200 and headers["Content-Type"] == "application/json"
    entries = {e["name"]: e for e in json.loads(body)["entries"]}
    assert set(entries) == {"system_cpu_percent.csv", "small.bin", "big.bin", "2026-11-28.tar.gz",
                            "consumption-report", "collector.db", "cpu-link.csv"}
    assert entries["small.bin"]["size"] == 1000 and entries["small.bin"]["type"] == "file"
    assert entries["consumption-report"] == {**entries["consumption-report"], "type": "directory",
                                             "url": "consumption-report/"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entries["small.bin"]["mtime"])


def test_folder_navigation(served):
    status, headers, _ = served.get(path(served, "server-log/consumption-report"))
    assert status == 301 and headers["Location"] == path(served, "server-log/consumption-report/")
    status, _, body = served.get(path(served, "server-log/consumption-report/"), {"Accept": "application/json"})
    assert status == 200
    assert [e["name"] for e in json.loads(body)["entries"]] == ["2026-11-28.xml"]
    status, headers, body = served.get(path(served, "server-log/consumption-report/2026-11-28.xml"))
    assert (status, body) == (200, b"<journal/>\n")
    assert headers["Content-Type"] == "application/xml"
    status, _, _ = served.get(path(served, "server-log"))
    assert status == 301
    status, headers, _ = served.get(f"/{served.secret}")
    assert status == 301 and headers["Location"] == f"/{served.secret}/"


def test_names_needing_quoting(data_dir):
    (data_dir / "with space").mkdir()
    (data_dir / "with space" / "é #1.txt").write_text("hi\n")
    with running_server(data_dir) as server:
        status, headers, _ = server.get(path(server, "server-log/with%20space"))
        assert status == 301 and headers["Location"] == path(server, "server-log/with%20space/")
        _, _, body = server.get(path(server, "server-log/with%20space/"), {"Accept": "application/json"})
        entry = json.loads(body)["entries"][0]
        assert (entry["name"], entry["url"]) == ("é #1.txt", "%C3%A9%20%231.txt")
        status, headers, body = server.get(path(server, "server-log/with%20space/" + entry["url"]))
        assert (status, body) == (200, b"hi\n") and headers["Content-Type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize("name,kind", [
    ("system_cpu_percent.csv", "text/csv; charset=utf-8"),
    ("2026-11-28.tar.gz", "application/gzip"),
    ("small.bin", "application/octet-stream"),
    ("big.bin", "application/octet-stream"),
])
def test_files_download_with_type_and_validators(served, name, kind):
    status, headers, body = served.get(path(served, f"server-log/{name}"))
    assert status == 200
    assert body == served.files[name]
    assert headers["Content-Type"] == kind
    assert int(headers["Content-Length"]) == len(body)
    st = os.stat(served.data_dir / name)
    assert headers["ETag"] == f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
    assert headers["Last-Modified"] == formatdate(st.st_mtime, usegmt=True)
    assert headers["Accept-Ranges"] == "bytes"
    status, head_headers, head_body = served.get(path(served, f"server-log/{name}"), method="HEAD")
    assert status == 200 and head_body == b"" and head_headers["Content-Length"] == str(len(body))


@pytest.mark.parametrize("name", ["small.bin", "big.bin"])
def test_conditional_requests(served, name):
    url = path(served, f"server-log/{name}")
    _, headers, _ = served.get(url)
    etag, modified = headers["ETag"], headers["Last-Modified"]
    status, headers304, body = served.get(url, {"If-None-Match": etag})
    assert (status, body) == (304, b"") and headers304["ETag"] == etag
    assert served.get(url, {"If-None-Match": f'W/{etag}, "other"'})[0] == 304
    assert served.get(url, {"If-None-Match": '"something-else"'})[0] == 200
    assert served.get(url, {"If-Modified-Since": modified})[0] == 304
    assert served.get(url, {"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"})[0] == 200


@pytest.mark.parametrize("name", ["small.bin", "big.bin"])
def test_ranges(served, name):
    url = path(served, f"server-log/{name}")
    data = served.files[name]
    size = len(data)
    status, headers, body = served.get(url, {"Range": "bytes=10-19"})
    assert (status, body) == (206, data[10:20])
    assert headers["Content-Range"] == f"bytes 10-19/{size}"
    status, headers, body = served.get(url, {"Range": "bytes=-7"})
    assert (status, body) == (206, data[-7:])
    status, headers, body = served.get(url, {"Range": f"bytes={size - 5}-"})
    assert (status, body) == (206, data[-5:])
    status, headers, body = served.get(url, {"Range": f"bytes={size + 10}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{size}"
    # several ranges or a stale If-Range: the whole file
    assert served.get(url, {"Range": "bytes=0-1,5-6"})[2] == data
    status, _, body = served.get(url, {"Range": "bytes=0-1", "If-Range": '"stale"'})
    assert (status, body) == (200, data)
    _, headers, _ = served.get(url)
    status, _, body = served.get(url, {"Range": "bytes=0-1", "If-Range": headers["ETag"]})
    assert (status, body) == (206, data[:2])


def test_changed_small_file_is_not_served_stale(served):
    target = served.data_dir / "changing.csv"
    target.write_text("time,entry\n1\n")
    url = path(served, "server-log/changing.csv")
    assert served.get(url)[2] == b"time,entry\n1\n"
    tmp = served.data_dir / "changing.tmp"
    tmp.write_text("time,entry\n1\n2\n")
    os.replace(tmp, target)  # how the publishers write: a new inode
    assert served.get(url)[2] == b"time,entry\n1\n2\n"
    target.unlink()
    assert served.get(url)[0] == 404


def test_dashboard_and_assets(served):
    status, headers, body = served.get(path(served, ""))
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    page = body.decode()
    assert 'src="assets/dygraph.js"' in page and 'src="assets/dashboard.js"' in page
    assert "http://" not in page and "https://" not in page
    import importlib.resources
    packaged = (importlib.resources.files("dygraphs") / "assets" / "dygraph-combined.js").read_bytes()
    status, headers, body = served.get(path(served, "assets/dygraph.js"))
    assert (status, body) == (200, packaged)
    assert headers["Content-Type"].startswith("text/javascript")
    assert served.get(path(served, "assets/dygraph.js"), {"If-None-Match": headers["ETag"]})[0] == 304
    for name in ("dashboard.js", "dashboard.css"):
        assert served.get(path(served, f"assets/{name}"))[0] == 200
    assert served.get(path(served, "assets/nothing.js"))[0] == 404


def test_metrics_route(served):
    status, headers, body = served.get(path(served, "metrics"))
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert "node_load1 0.5" in text
    assert 'slapos_partition_cpu_seconds_total{partition="slappart0"} 10.0' in text


def test_partitions_api(served):
    status, headers, body = served.get(path(served, "api/partitions"))
    assert status == 200 and headers["Content-Type"] == "application/json"
    report = json.loads(body)
    assert report["date"] == "2026-11-29" and report["time"] == "09:00:00"
    assert report["partitions"][0]["partition"] == "slappart0"
    assert report["partitions"][0]["processes"] == 1


def test_collector_db_is_a_copy(served):
    status, headers, body = served.get(path(served, "server-log/collector.db"))
    assert status == 200 and headers["Content-Type"] == "application/vnd.sqlite3"
    assert body.startswith(b"SQLite format 3\x00")
    assert headers["Cache-Control"] == "no-store"
    copy = served.data_dir.parent / "copy.db"
    copy.write_bytes(body)
    db = sqlite3.connect(copy)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert db.execute('SELECT partition FROM "user"').fetchall() == [("slappart0",)]
    db.close()
    assert not list(served.data_dir.glob(".collector.db.serve-*"))  # the temp copy is gone


def test_unreadable_store_is_a_503_not_a_crash(data_dir):
    (data_dir / "collector.db").write_bytes(b"this is not a database" * 100)
    with running_server(data_dir) as server:
        status, headers, _ = server.get(path(server, "server-log/collector.db"))
        assert status == 503 and headers["Retry-After"]
        assert server.get(path(server, "api/partitions"))[0] == 503
        status, _, body = server.get(path(server, "metrics"))
        assert status == 200 and b"slapos_partition" not in body
        assert server.get("/")[2] == b"OK"
    assert not list(data_dir.glob(".collector.db.serve-*"))
    assert not [x for x in server.stderr if "Traceback" in x]


# -- security ------------------------------------------------------------------


def not_found_signature(server, raw: str) -> tuple[int, str, bytes]:
    status, headers, body = server.get(raw)
    return status, headers["Content-Type"], body


@pytest.mark.parametrize("raw", [
    "/server-log/",
    "/server-log/system_cpu_percent.csv",
    "/metrics",
    "//server-log/",
    f"/{SECRET[:-1]}/server-log/",
    f"/{SECRET}x/server-log/",
    f"/{SECRET.upper()}/server-log/",
    f"/{SECRET[:-1]}X/server-log/",
    f"/x{SECRET}/metrics",
    f"/{SECRET}server-log/",
    f"/%20{SECRET}/metrics",
    "/nothing/here",
])
def test_wrong_or_missing_secret_is_a_plain_404(served, raw):
    assert not_found_signature(served, raw) == not_found_signature(served, "/unknown-path")
    assert not_found_signature(served, raw)[0] == 404


@pytest.mark.parametrize("rest", [
    "server-log/../../../../etc/passwd",
    "server-log/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "server-log/%2E%2E%2F%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "server-log/..%2f..%2f..%2fetc%2fpasswd",
    "server-log/..%5c..%5cetc%5cpasswd",
    "server-log//etc/passwd",
    "server-log/%2Fetc%2Fpasswd",
    "server-log/consumption-report/../../../etc/passwd",
    "server-log/system_cpu_percent.csv%00",
    "server-log/system%00_cpu_percent.csv",
    "server-log/passwd-link",
    "server-log/etc-link/passwd",
    "server-log/etc-link/",
    "server-log/lock-link",
    "server-log/.collect.lock",
    "server-log/.slapmonitor.secret",
    "server-log/.hidden-dir/inside.txt",
    "server-log/.hidden-dir/",
    "server-log/%2ecollect.lock",
    "server-log/collector.db-wal",
    "server-log/collector.db-shm",
    "server-log/./.collect.lock",
    "server-log/consumption-report/2026-11-28.xml/",
    "server-log/does-not-exist",
    "assets/../server-log/.collect.lock",
    "bench",
    "nothing",
])
def test_nothing_outside_the_data_dir_nor_hidden_is_served(served, rest):
    raw = path(served, rest)
    status, _, body = served.get(raw)
    assert status in (404, 301), (raw, status)
    if status == 301:  # only ever a redirect to a normalised path inside, which is then refused
        return
    assert not_found_signature(served, raw) == not_found_signature(served, "/unknown-path")
    assert b"root:" not in body and b"123" not in body


def test_symlink_inside_is_served(served):
    status, _, body = served.get(path(served, "server-log/cpu-link.csv"))
    assert (status, body) == (200, CSV.encode())


def test_absolute_form_and_unknown_methods(served):
    # absolute-form request target (proxy style) must not escape either
    status, _, body = served.get("http://127.0.0.1/etc/passwd")
    assert status == 404 and b"root:" not in body
    status, _, _ = served.get(path(served, "server-log/small.bin"), method="DELETE")
    assert status == 405
    status, _, _ = served.get(f"/{SECRET[:-1]}x/server-log/small.bin", method="DELETE")
    assert status == 404


def test_access_log_is_combined_and_hides_the_secret(served):
    served.get("/", {"User-Agent": 'agent "quoted"', "Referer": "http://example.invalid/"})
    served.get(path(served, "server-log/small.bin"))
    # The secret percent-encoded (its first letter as %XX) opens the same page; it is hidden too.
    encoded = f"%{ord(SECRET[0]):02X}" + SECRET[1:]
    assert served.get(f"/{encoded}/metrics")[0] == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = served.access_log.read_text() if served.access_log.exists() else ""
        if "small.bin" in text and "quoted" in text and "/metrics" in text:
            break
        time.sleep(0.2)
    assert SECRET not in text and SECRET[1:] not in text
    assert '"GET /<secret>/metrics HTTP/1.1" 200 ' in text
    line = next(x for x in text.splitlines() if "quoted" in x)
    assert re.fullmatch(
        r'127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "GET / HTTP/1\.1" 200 2 '
        r'"http://example\.invalid/" "agent \\"quoted\\""', line), line
    line = next(x for x in text.splitlines() if "small.bin" in x)
    assert '"GET /<secret>/server-log/small.bin HTTP/1.1" 200 1000 ' in line


def test_access_log_reopened_after_logrotate_moves_it(tmp_path, data_dir):
    log = tmp_path / "access.log"
    with running_server(data_dir, "--access-log", str(log)) as server:
        server.get("/?before")
        deadline = time.monotonic() + 10
        while "before" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        os.rename(log, tmp_path / "access.log.1")
        deadline = time.monotonic() + 15
        while "after" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, "the access log was not reopened"
            server.get("/?after")
            time.sleep(0.3)
    assert "before" in (tmp_path / "access.log.1").read_text()


# -- concurrency ---------------------------------------------------------------


@pytest.mark.parametrize("which", ["served", "served_tls"])
def test_200_concurrent_downloads_complete_and_match(request, which):
    served = request.getfixturevalue(which)
    names = ["big.bin", "small.bin", "system_cpu_percent.csv", "2026-11-28.tar.gz"]
    digests = {n: hashlib.sha256(served.files[n]).hexdigest() for n in names}

    async def main():
        connector = aiohttp.TCPConnector(limit=200, force_close=True, ssl=served.ssl_context() or False)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def one(i):
                name = names[i % len(names)]
                async with session.get(served.url(f"server-log/{name}")) as response:
                    assert response.status == 200
                    return name, hashlib.sha256(await response.read()).hexdigest()
            return await asyncio.gather(*(one(i) for i in range(200)))

    results = asyncio.run(main())
    assert len(results) == 200
    assert all(digest == digests[name] for name, digest in results)


def test_collector_db_copy_is_valid_while_a_writer_writes(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    Store(data_dir / "collector.db").close()
    stop = threading.Event()
    batch = 50

    def writer():
        store = Store(data_dir / "collector.db")
        n = 0
        while not stop.is_set():
            with store.transaction():
                store.insert("user", [("p", i, f"{i}-1", 1.0, 1.0, 1, 1.0, 1.0, 1, 1) for i in range(batch)],
                             "2026-11-29", f"{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}")
            n += 1
        store.close()

    thread = threading.Thread(target=writer)
    with running_server(data_dir) as server:
        thread.start()
        try:
            counts = []
            for i in range(15):
                status, _, body = server.get(path(server, "server-log/collector.db"))
                assert status == 200
                copy = tmp_path / f"copy{i}.db"
                copy.write_bytes(body)
                db = sqlite3.connect(copy)
                assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                count = db.execute('SELECT count(*) FROM "user"').fetchone()[0]
                db.close()
                assert count % batch == 0  # whole transactions only
                counts.append(count)
        finally:
            stop.set()
            thread.join()
    assert counts[-1] > 0 and counts == sorted(counts)


# -- TLS -------------------------------------------------------------------------


def test_tls_routes_with_verified_self_signed_certificate(served_tls):
    key = served_tls.data_dir / ".slapmonitor.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert any(url.startswith("https://") for url in served_tls.urls)
    hosts = ["127.0.0.1"] + (["::1"] if IPV6 else [])
    for host in hosts:
        assert served_tls.get("/", host=host)[2] == b"OK"
        status, _, body = served_tls.get(path(served_tls, "server-log/big.bin"), host=host)
        assert (status, body) == (200, served_tls.files["big.bin"])
        assert served_tls.get(path(served_tls, "metrics"), host=host)[0] == 200
        assert served_tls.get(path(served_tls, "server-log/collector.db"), host=host)[2][:6] == b"SQLite"
        for rest in ("", "server-log/", "server-log/consumption-report/", "assets/dygraph.js", "api/partitions",
                     "server-log/system_cpu_percent.csv", "bench/download?bytes=5"):
            assert served_tls.get(path(served_tls, rest), host=host)[0] == 200, rest
        status, _, body = served_tls.get(path(served_tls, "bench/upload"), method="POST", body=b"12345", host=host)
        assert (status, json.loads(body)["bytes"]) == (200, 5)
        status, _, body = served_tls.get(path(served_tls, "server-log/small.bin"), {"Range": "bytes=1-3"}, host=host)
        assert (status, body) == (206, served_tls.files["small.bin"][1:4])
        assert served_tls.get(f"/{SECRET[:-1]}x/server-log/", host=host)[0] == 404
    # the secret and the certificate files are never served
    for name in (".slapmonitor.key", ".slapmonitor.crt"):
        assert served_tls.get(path(served_tls, f"server-log/{name}"))[0] == 404


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.parametrize("which", ["served", "served_tls"])
def test_clients_leaving_mid_transfer_leave_no_error(request, which):
    served_tls = request.getfixturevalue(which)
    served_tls.get(path(served_tls, "server-log/big.bin"))
    before = open_fds(served_tls.proc.pid)
    for rest in ("server-log/big.bin", "server-log/big.bin", f"bench/download?bytes={100 * 1024 * 1024}"):
        conn = served_tls.connection()
        conn.request("GET", path(served_tls, rest))
        response = conn.getresponse()
        assert response.status == 200
        response.read(10000)
        conn.sock.close()
        conn.close()
    conn = served_tls.connection()
    conn.putrequest("POST", path(served_tls, "bench/upload"))
    conn.putheader("Content-Length", str(50 * 1024 * 1024))
    conn.endheaders()
    conn.send(b"x" * 100000)
    conn.close()
    deadline = time.monotonic() + 20
    while served_tls.get(path(served_tls, "bench/download?bytes=1"))[0] == 429:  # slot given back
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert served_tls.get(path(served_tls, "server-log/big.bin"))[2] == served_tls.files["big.bin"]
    assert served_tls.stderr == [x for x in served_tls.stderr if "listening on" in x]
    deadline = time.monotonic() + 10
    while open_fds(served_tls.proc.pid) > before:  # every socket and file given back
        assert time.monotonic() < deadline, (open_fds(served_tls.proc.pid), before)
        time.sleep(0.2)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_versions(served_tls):
    context = served_tls.ssl_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", served_tls.port)) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() == "TLSv1.2"
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(("127.0.0.1", served_tls.port)) as raw:
        with pytest.raises(ssl.SSLError):
            old.wrap_socket(raw, server_hostname="127.0.0.1")


def test_tls_pair_is_kept_and_given_pair_used(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with running_server(data_dir, tls=True) as server:
        assert server.get("/")[2] == b"OK"
    cert = (data_dir / ".slapmonitor.crt").read_bytes()
    with running_server(data_dir, tls=True) as server:
        assert server.get("/")[2] == b"OK"
    assert (data_dir / ".slapmonitor.crt").read_bytes() == cert
    # a given --cert/--key pair that does not exist yet is generated there
    own = tmp_path / "tls"
    own.mkdir()
    with running_server(data_dir, "--cert", str(own / "c.pem"), "--key", str(own / "k.pem"), tls=True) as server:
        context = ssl.create_default_context(cafile=str(own / "c.pem"))
        with socket.create_connection(("127.0.0.1", server.port)) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
    assert stat.S_IMODE((own / "k.pem").stat().st_mode) == 0o600


# -- secrets, config, signals, bad options -----------------------------------------


def test_secret_file_generated_once_and_kept(tmp_path, data_dir):
    secret_file = tmp_path / "slapmonitor.secret"
    with running_server(data_dir, "--secret-file", str(secret_file), secret=None) as server:
        secret = secret_file.read_text().strip()
        assert len(secret) >= 22 and re.fullmatch(r"[A-Za-z0-9_-]+", secret)
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        assert server.get(f"/{secret}/metrics")[0] == 200
        assert server.stderr == [x for x in server.stderr if "listening on" in x]
    with running_server(data_dir, "--secret-file", str(secret_file), secret=None) as server:
        assert secret_file.read_text().strip() == secret
        assert server.get(f"/{secret}/server-log/")[0] == 200


def test_config_file_and_slapmonitor_script(tmp_path, data_dir):
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    config = tmp_path / "monitor.cfg"
    config.write_text(
        f"[slapos-collect]\ndata-dir = {data_dir}\n\n"
        f"[monitor]\nhost = 127.0.0.1\nport = 0\nsecret-file = {secret_file}\nno-tls = yes\n"
        f"access-log = {tmp_path / 'access.log'}\nlog-file = {tmp_path / 'monitor.log'}\n"
    )
    with running_server(data_dir, "-c", str(config), hosts=(), secret=None, tls=None,
                        command="slapmonitor") as server:
        assert server.base.startswith("http://127.0.0.1:")
        assert server.get(f"/{SECRET}/server-log/")[0] == 200
        assert server.stop() == 0
    assert "listening on" in (tmp_path / "monitor.log").read_text()
    assert "/<secret>/server-log/" in (tmp_path / "access.log").read_text()


def test_sigterm_stops_cleanly_during_a_download(data_dir):
    (data_dir / "big.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    server = start_server(data_dir)
    try:
        conn = server.connection()
        conn.request("GET", path(server, "server-log/big.bin"))
        response = conn.getresponse()
        response.read(1024)
        assert server.stop(signal.SIGTERM) == 0
        conn.close()
        assert server.proc.poll() == 0
        assert not [x for x in server.stderr if "Traceback" in x or "Error" in x]
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def check_refused(proc, expected: str):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert expected in lines[0], lines[0]


def test_bad_options(tmp_path, data_dir):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        check_refused(run_cli("serve", "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(port),
                              "--secret", SECRET, "--no-tls", timeout=30), "Address already in use")
    finally:
        taken.close()
    base = ["serve", "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", "0"]
    check_refused(run_cli("serve", "--data-dir", str(tmp_path / "missing"), "--secret", SECRET),
                  "does not exist")
    garbage = tmp_path / "cert.pem"
    garbage.write_text("not a certificate\n")
    (tmp_path / "key.pem").write_text("not a key\n")
    check_refused(run_cli(*base, "--secret", SECRET, "--cert", str(garbage), "--key", str(tmp_path / "key.pem")),
                  "cannot load certificate")
    check_refused(run_cli(*base, "--secret", SECRET, "--cert", str(garbage), "--key", str(tmp_path / "nokey.pem")),
                  "nokey.pem does not")
    check_refused(run_cli(*base, "--secret", SECRET, "--cert", str(garbage)), "--cert and --key")
    check_refused(run_cli(*base, "--secret", "short"), "at least 22")
    check_refused(run_cli(*base, "--secret", " "), "at least 22")
    check_refused(run_cli(*base, "--secret", SECRET, "--port", "70000"), "between 0 and 65535")
    check_refused(run_cli(*base, "--secret", SECRET, "--host", "no-such-host.invalid"), "cannot listen")
    check_refused(run_cli(*base, "--secret", SECRET, "--access-log", str(tmp_path / "no" / "access.log"),
                          "--no-tls"), "cannot open access log")
    check_refused(run_cli(*base, "--secret-file", str(tmp_path / "no" / "secret")), "does not exist")
    bad_secret = tmp_path / "bad-secret"
    bad_secret.write_text("has spaces in it and is long enough\n")
    check_refused(run_cli(*base, "--secret-file", str(bad_secret)), "at least 22")
    config = tmp_path / "bad.cfg"
    config.write_text("[monitor]\nport = many\n")
    check_refused(run_cli(*base[:-2], "-c", str(config), "--secret", SECRET), "port must be a whole number")


# -- benchmark helpers ---------------------------------------------------------------


def test_bench_download_and_upload(served):
    status, headers, body = served.get(path(served, "bench/download?bytes=3000000"))
    assert status == 200 and len(body) == 3000000 and headers["Content-Length"] == "3000000"
    assert served.get(path(served, "bench/download?bytes=0"))[2] == b""
    for bad in ("abc", "-1", "1.5", str(256 * 1024 * 1024 + 1), "", "%EF%BC%91%EF%BC%92"):
        assert served.get(path(served, f"bench/download?bytes={bad}"))[0] == 400, bad
    payload = os.urandom(2 * 1024 * 1024)
    status, headers, body = served.get(path(served, "bench/upload"), method="POST", body=payload)
    assert status == 200 and headers["Content-Type"] == "application/json"
    answer = json.loads(body)
    assert answer["bytes"] == len(payload) and answer["seconds"] >= 0
    assert served.get(f"/{SECRET[:-1]}x/bench/download?bytes=10")[0] == 404
    assert served.get(f"/{SECRET[:-1]}x/bench/upload", method="POST", body=b"x")[0] == 404
    assert served.get(path(served, "bench/upload"))[0] == 404  # GET
    assert served.get(path(served, "bench/download?bytes=10"), method="POST", body=b"")[0] == 404


def test_bench_rate_limits(data_dir):
    with running_server(data_dir) as server:
        # one transfer at a time: a slow reader holds the slot
        conn = server.connection()
        conn.request("GET", path(server, f"bench/download?bytes={200 * 1024 * 1024}"))
        response = conn.getresponse()
        assert response.status == 200
        response.read(65536)
        status, headers, _ = server.get(path(server, "bench/download?bytes=10"))
        assert status == 429 and headers["Retry-After"]
        assert server.get(path(server, "bench/upload"), method="POST", body=b"x")[0] == 429
        conn.close()
        deadline = time.monotonic() + 20
        while server.get(path(server, "bench/download?bytes=10"))[0] == 429:
            assert time.monotonic() < deadline, "the slot was never given back"
            time.sleep(0.2)
        # at most 30 a minute per client: the attempts above count too
        statuses = [server.get(path(server, "bench/download?bytes=10"))[0] for _ in range(31)]
        assert statuses.count(429) >= 1 and statuses[-1] == 429
        assert statuses[0] == 200
        # the rest of the server is not affected
        assert server.get("/")[2] == b"OK"
