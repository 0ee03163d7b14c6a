"""slapmonitor: the HTTPS server of a partition (``slapos-collect serve``).

``/`` answers ``OK`` (the availability probe); everything else lives under
``/<secret>/``: the data dir (``server-log/``), the dashboard, Prometheus
``metrics`` and two rate-limited benchmark helpers (``bench/download``,
``bench/upload``). A wrong secret gets the same 404 as any unknown path.

Speed: small files come from an in-memory cache keyed by (inode, size, mtime)
with their headers precomputed; large ones go out with ``sendfile`` (the
kernel copies, on worker threads so that every core serves); the access log
is written in combined format through a buffer flushed every second.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import errno
import hmac
import html
import importlib.resources
import ipaddress
import json
import logging
import mimetypes
import os
import re
import secrets
import signal
import socket
import sqlite3
import ssl
import stat
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from . import metrics
from .atomic import write_atomic
from .config import SECTION, add_common_arguments, get_bool, get_int, get_list, load_config, setup_logging
from .connections import Gate, Limits, default_max_connections, descriptor_limit, hard_close
from .errors import CollectError
from .store import DB_NAME

log = logging.getLogger("slapos_collect")

MONITOR = "monitor"
DEFAULT_PORT = 9443
DEFAULT_HOSTS = ("127.0.0.1", "::1")
SECRET_NAME = ".slapmonitor.secret"
CERT_NAME = ".slapmonitor.crt"
KEY_NAME = ".slapmonitor.key"
MIN_SECRET = 22  # characters of the URL-safe alphabet: >= 128 bits
SECRET_RE = re.compile(r"[A-Za-z0-9_-]+")

SMALL_FILE = 512 * 1024  # served from memory up to this size
CACHE_BYTES = 32 * 1024 * 1024
SNAPSHOTS_AT_ONCE = 2  # concurrent collector.db copies
BENCH_MAX_BYTES = 256 * 1024 * 1024
BENCH_PER_MINUTE = 30  # per client address
BENCH_CHUNK = 1024 * 1024
COPY_CHUNK = 256 * 1024  # file reads under TLS
# Never listed nor served: live SQLite side files (collector.db is served as a copy).
HIDDEN = frozenset({f"{DB_NAME}-wal", f"{DB_NAME}-shm", f"{DB_NAME}-journal"})

TYPES = {
    ".csv": "text/csv; charset=utf-8",
    ".gz": "application/gzip",
    ".tgz": "application/gzip",
    ".json": "application/json",
    ".xml": "application/xml",
    ".txt": "text/plain; charset=utf-8",
    ".log": "text/plain; charset=utf-8",
    ".db": "application/vnd.sqlite3",
    ".uploaded": "text/plain; charset=utf-8",
}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
DASHBOARD_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
NOT_FOUND_BODY = b"404: Not Found"


# -- settings -----------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--host", action="append", default=[], metavar="ADDR",
                        help="address to listen on (repeatable; default 127.0.0.1 and ::1)")
    parser.add_argument("--port", type=int, metavar="N",
                        help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one, printed at start)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--secret", metavar="S", help="the URL secret (at least 22 characters of A-Z a-z 0-9 _ -); "
                       "local users can read it in ps: prefer --secret-file")
    group.add_argument("--secret-file", metavar="F",
                       help=f"file holding the secret, generated when missing (default DATA_DIR/{SECRET_NAME})")
    parser.add_argument("--cert", metavar="F", help="TLS certificate (PEM); generated self-signed when missing")
    parser.add_argument("--key", metavar="F", help="TLS private key (PEM); generated when missing")
    parser.add_argument("--no-tls", action="store_true", default=None, help="plain HTTP (local use only)")
    parser.add_argument("--access-log", metavar="F", help="combined-format access log file")
    limits = parser.add_argument_group("limits (see README: slapmonitor, Connections under load)")
    for flag, what, default in LIMIT_FLAGS:
        kind = "SECONDS" if flag.endswith("-timeout") else "N"
        shown = f"{default:g}" if default is not None else "from the descriptor limit"
        limits.add_argument(f"--{flag}", type=float if kind == "SECONDS" else int, metavar=kind,
                            help=f"{what} (default {shown})")


_DEFAULTS = Limits()
BODY_TIMEOUT = 10.0  # seconds an upload's body may pause (its own pace, not the gate's)
# (flag and [monitor] key, help, default); the key with "-" is the Limits field with "_"
LIMIT_FLAGS: tuple[tuple[str, str, float | int | None], ...] = (
    ("header-timeout", "seconds for a request's headers to arrive", _DEFAULTS.header_timeout),
    ("idle-timeout", "seconds a keep-alive connection may wait for its next request", _DEFAULTS.idle_timeout),
    ("handshake-timeout", "seconds for a TLS handshake", _DEFAULTS.handshake_timeout),
    ("body-timeout", "seconds an upload's body may pause", BODY_TIMEOUT),
    ("send-timeout", "seconds a client may leave a response unread", _DEFAULTS.send_timeout),
    ("max-connections", "connections at once", None),
    ("max-connections-per-address", "connections at once from one address (IPv6: one /64)",
     _DEFAULTS.per_address),
    ("max-request-line", "bytes of the request line (414 beyond)", _DEFAULTS.max_request_line),
    ("max-header-field", "bytes of one header line (431 beyond)", _DEFAULTS.max_header_field),
    ("max-headers", "headers per request (431 beyond)", _DEFAULTS.max_headers),
    ("max-header-bytes", "bytes of the whole request head (431 beyond)", _DEFAULTS.max_header_bytes),
)


@dataclass
class ServeSettings:
    data_dir: Path
    hosts: list[str]
    hosts_given: bool
    port: int
    secret: str
    tls: bool
    cert: Path | None
    key: Path | None
    access_log: str | None
    log_file: str | None
    limits: Limits = field(default_factory=Limits)
    body_timeout: float = BODY_TIMEOUT


def limit_settings(args: argparse.Namespace, cp: Any) -> tuple[Limits, float]:
    """The limits (flags over ``[monitor]``) and the upload's body timeout."""
    values: dict[str, float | int] = {}
    for flag, _, _ in LIMIT_FLAGS:
        given = getattr(args, flag.replace("-", "_"), None)
        raw = str(given) if given is not None else cp.get(MONITOR, flag, fallback="").strip()
        if not raw:
            continue
        seconds = flag.endswith("-timeout")
        try:
            value: float | int = float(raw) if seconds else int(raw)
        except ValueError:
            raise CollectError(f"{flag} must be a {'number of seconds' if seconds else 'whole number'}, "
                               f"not {raw!r}") from None
        if not (value > 0 if seconds else value >= 1) or value != value or value == float("inf"):
            raise CollectError(f"{flag} must be {'above 0' if seconds else 'at least 1'}, not {raw}")
        values[flag] = value
    body_timeout = float(values.pop("body-timeout", BODY_TIMEOUT))
    names = {"max-connections-per-address": "per_address"}
    limits = Limits(**{names.get(k, k.replace("-", "_")): v for k, v in values.items()})
    return limits, body_timeout


def serve_settings(args: argparse.Namespace) -> ServeSettings:
    """Flags over the ``[monitor]`` section of ``-c CONFIG``."""
    cp = load_config(args)
    raw_dir = args.data_dir or cp.get(SECTION, "data-dir", fallback="").strip() or "var/data-log"
    data_dir = Path(raw_dir).expanduser().absolute()
    if not data_dir.is_dir():
        raise CollectError(f"data dir {data_dir} does not exist")
    if not os.access(data_dir, os.R_OK | os.X_OK):
        raise CollectError(f"data dir {data_dir} is not readable")

    hosts = list(args.host or []) or get_list(cp, MONITOR, "host")
    hosts_given = bool(hosts)
    hosts = [h.strip("[]") for h in hosts] or list(DEFAULT_HOSTS)
    port = args.port if args.port is not None else get_int(cp, MONITOR, "port", DEFAULT_PORT)
    if not 0 <= port <= 65535:
        raise CollectError(f"port must be between 0 and 65535, not {port}")

    if args.secret is not None:
        secret = check_secret(args.secret.strip(), "--secret")
    else:
        secret_file = args.secret_file or cp.get(MONITOR, "secret-file", fallback="").strip()
        secret = load_or_create_secret(Path(secret_file) if secret_file else data_dir / SECRET_NAME)

    no_tls = args.no_tls if args.no_tls is not None else get_bool(cp, MONITOR, "no-tls", False)
    cert = args.cert or cp.get(MONITOR, "cert", fallback="").strip() or None
    key = args.key or cp.get(MONITOR, "key", fallback="").strip() or None
    if bool(cert) != bool(key):
        raise CollectError("give both --cert and --key, or neither")
    if not no_tls and not cert:
        cert, key = str(data_dir / CERT_NAME), str(data_dir / KEY_NAME)
    limits, body_timeout = limit_settings(args, cp)
    return ServeSettings(
        limits=limits,
        body_timeout=body_timeout,
        data_dir=data_dir,
        hosts=hosts,
        hosts_given=hosts_given,
        port=port,
        secret=secret,
        tls=not no_tls,
        cert=Path(cert) if cert else None,
        key=Path(key) if key else None,
        access_log=args.access_log or cp.get(MONITOR, "access-log", fallback="").strip() or None,
        log_file=(args.log_file or cp.get(MONITOR, "log-file", fallback="").strip()
                  or cp.get(SECTION, "log-file", fallback="").strip() or None),
    )


def check_secret(secret: str, origin: str) -> str:
    if len(secret) < MIN_SECRET or not SECRET_RE.fullmatch(secret):
        raise CollectError(f"{origin}: the secret must be at least {MIN_SECRET} characters of A-Z a-z 0-9 _ -")
    return secret


def load_or_create_secret(path: Path) -> str:
    """The secret kept in ``path``; generated (256 random bits) when missing or empty."""
    for _ in range(2):
        try:
            text = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            text = ""
        except (OSError, UnicodeDecodeError) as exc:
            raise CollectError(f"cannot read secret file {path}: {exc}") from None
        if text:
            return check_secret(text, f"secret file {path}")
        if not path.parent.is_dir():
            raise CollectError(f"secret file {path}: directory {path.parent} does not exist")
        try:
            empty = path.exists()
            if write_atomic(path, (secrets.token_urlsafe(32) + "\n").encode(), 0o600, replace=empty):
                log.info("generated a new secret in %s", path)
        except OSError as exc:
            raise CollectError(f"cannot write secret file {path}: {exc.strerror}") from None
    raise CollectError(f"secret file {path} stays empty")


def ensure_certificate(cert: Path, key: Path, hosts: list[str]) -> None:
    """Generate a self-signed pair (EC P-256, 10 years) unless both files exist."""
    if cert.exists() and key.exists():
        return
    if cert.exists() or key.exists():
        present, missing = (cert, key) if cert.exists() else (key, cert)
        raise CollectError(f"TLS: {present} exists but {missing} does not")
    for path in (cert, key):
        if not path.parent.is_dir():
            raise CollectError(f"TLS: directory {path.parent} does not exist")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "slapmonitor")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    key_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    try:
        write_atomic(key, key_pem, 0o600, replace=True)
        write_atomic(cert, certificate.public_bytes(serialization.Encoding.PEM), 0o644, replace=True)
    except OSError as exc:
        raise CollectError(f"TLS: cannot write the self-signed pair: {exc}") from None
    log.info("generated a self-signed certificate %s", cert)


def ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except FileNotFoundError as exc:
        raise CollectError(f"TLS: {exc.filename or cert} does not exist") from None
    except PermissionError as exc:
        raise CollectError(f"TLS: cannot read {exc.filename or cert}: permission denied") from None
    except (OSError, ssl.SSLError) as exc:
        raise CollectError(f"TLS: cannot load certificate {cert} and key {key}: {exc}") from None
    return context


def bind_sockets(hosts: list[str], port: int, hosts_given: bool) -> list[socket.socket]:
    """Listening sockets, one per address, all on one port (the first one's when 0).

    Binding here (not in aiohttp) gives one clear error for a taken port and
    lets ``--port 0`` share the picked port across addresses."""
    sockets: list[socket.socket] = []
    try:
        for host in hosts:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            except socket.gaierror as exc:
                raise CollectError(f"cannot listen on {host}: {exc.strerror}") from None
            family, kind, proto, _, address = infos[0]
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address[:2] if family == socket.AF_INET else (address[0], port, *address[2:]))
                sock.listen(1024)
                sock.setblocking(False)
            except OSError as exc:
                sock.close()
                if not hosts_given and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    continue  # no IPv6 on this machine: the default skips it
                raise CollectError(f"cannot listen on {host} port {port}: {exc.strerror}") from None
            sockets.append(sock)
            if port == 0:
                port = sock.getsockname()[1]
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    if not sockets:
        raise CollectError("no address to listen on")
    return sockets


def url_of(sock: socket.socket, tls: bool) -> str:
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if sock.family == socket.AF_INET6 else host
    return f"{'https' if tls else 'http'}://{host}:{port}/"


# -- access log ---------------------------------------------------------------

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class AccessLogFile:
    """Combined-format lines into a buffered file, flushed every second and on
    exit; reopened when logrotate moves it away (inode changed)."""

    def __init__(self, path: str, secret: str) -> None:
        self.path = path
        self.secret = secret
        self._second = -1
        self._stamp = ""
        try:
            self.handle = self._open()
        except OSError as exc:
            raise CollectError(f"cannot open access log {path}: {exc.strerror}") from None

    def _open(self):
        return open(self.path, "a", buffering=256 * 1024, encoding="utf-8", errors="backslashreplace")

    def stamp(self) -> str:
        now = int(time.time())
        if now != self._second:
            t = time.gmtime(now)
            self._stamp = (f"{t.tm_mday:02d}/{MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
                           f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000")
            self._second = now
        return self._stamp

    def write(self, line: str) -> None:
        self.handle.write(line)

    def flush(self) -> None:
        try:
            self.handle.flush()
            try:
                moved = os.stat(self.path).st_ino != os.fstat(self.handle.fileno()).st_ino
            except FileNotFoundError:
                moved = True
            if moved:
                self.handle.close()
                self.handle = self._open()
        except OSError as exc:
            log.warning("access log %s: %s", self.path, exc)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.handle.close()


def _quoted(value: str | None) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"') if value else "-"


class CombinedAccessLogger(AbstractAccessLogger):
    """aiohttp hands it the AccessLogFile as ``logger``. The secret never reaches the log."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        sink: AccessLogFile = self.logger  # type: ignore[assignment]
        target = request.raw_path
        if request.path[1:].partition("/")[0] == sink.secret:
            # The first segment is the secret, perhaps percent-encoded: log it as <secret>.
            ends = [i for i in (target.find("/", 1), target.find("?")) if i != -1]
            target = "/<secret>" + target[min(ends) if ends else len(target):]
        if sink.secret in target:
            target = target.replace(sink.secret, "<secret>")
        headers = request.headers
        size = response.content_length if request.method != "HEAD" else 0
        sink.write(
            f'{request.remote or "-"} - - [{sink.stamp()}] "{request.method} {_quoted(target)} '
            f'HTTP/{request.version.major}.{request.version.minor}" {response.status} '
            f'{size or "-"} "{_quoted(headers.get("Referer"))}" '
            f'"{_quoted(headers.get("User-Agent"))}"\n'
        )


# -- files --------------------------------------------------------------------


def content_type(name: str) -> str:
    suffix = os.path.splitext(name)[1].lower()
    known = TYPES.get(suffix)
    if known:
        return known
    guessed = mimetypes.guess_type(name, strict=False)[0]
    if guessed and guessed.startswith("text/"):
        return guessed + "; charset=utf-8"
    return guessed or "application/octet-stream"


def parse_range(header: str, size: int) -> tuple[int, int] | bool | None:
    """One ``bytes=`` range as (start, end inclusive); False when unsatisfiable;
    None to ignore it (malformed or several ranges: the whole file is sent)."""
    if not header.startswith("bytes="):
        return None
    spec = header[6:].strip()
    if "," in spec:
        return None
    first, dash, last = spec.partition("-")
    first, last = first.strip(), last.strip()
    if not dash or (first and not first.isdigit()) or (last and not last.isdigit()) or not (first or last):
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            return False
        return max(0, size - suffix), size - 1
    start = int(first)
    if start >= size:
        return False
    end = int(last) if last else size - 1
    if end < start:
        return None
    return start, min(end, size - 1)


def etag_matches(header: str, etag: str) -> bool:
    """Weak comparison (If-None-Match)."""
    if header.strip() == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == bare for tag in header.split(","))


@dataclass
class CachedFile:
    key: tuple[int, int, int]
    body: bytes
    headers: dict[str, str]
    etag: str
    last_modified: str
    mtime: int


def file_headers(name: str, st: os.stat_result) -> tuple[dict[str, str], str, str]:
    etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
    last_modified = formatdate(st.st_mtime, usegmt=True)
    headers = {
        "Content-Type": content_type(name),
        "ETag": etag,
        "Last-Modified": last_modified,
        "Accept-Ranges": "bytes",
        "Cache-Control": "no-cache",
        **SECURITY_HEADERS,
    }
    return headers, etag, last_modified


async def send_file_threaded(sock_fd: int, file_fd: int, offset: int, count: int,
                             stall: float | None = None) -> None:
    """``sendfile`` on a worker thread, so that large files go out on every core
    (the kernel copy runs without the GIL), waiting for room on the event loop.

    The socket is non-blocking: a thread never waits on a slow client. It works
    on a duplicate of the transport's descriptor, so that the number can never
    be reused under it, and closes it only once no thread uses it. A client that
    reads nothing for ``stall`` seconds is treated as gone."""
    loop = asyncio.get_running_loop()
    try:
        fd = os.dup(sock_fd)
    except OSError as exc:  # out of descriptors: the gate is closing connections to make room
        raise ConnectionResetError(f"cannot send the file: {exc.strerror}") from None
    pending: asyncio.Future | None = None
    try:
        end = offset + count
        while offset < end:
            pending = loop.run_in_executor(None, _sendfile_some, fd, file_fd, offset, end - offset)
            sent = await asyncio.shield(pending)
            pending = None
            if sent is None:  # the socket buffer is full: wait for room
                room = loop.create_future()
                loop.add_writer(fd, _wake, room)
                try:
                    async with asyncio.timeout(stall):
                        await room
                except TimeoutError:
                    raise ConnectionResetError("the client reads nothing") from None
                finally:
                    loop.remove_writer(fd)
            elif sent == 0:
                raise ConnectionResetError("file shrank while sent")
            else:
                offset += sent
    finally:
        if pending is not None and not pending.done():
            pending.add_done_callback(lambda _: os.close(fd))
        else:
            os.close(fd)


def _wake(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _sendfile_some(sock_fd: int, file_fd: int, offset: int, count: int) -> int | None:
    try:
        return os.sendfile(sock_fd, file_fd, offset, count)
    except BlockingIOError:
        return None


# -- the application ------------------------------------------------------------


class Monitor:
    """The handlers and their state (cache, rate limits) for one data dir."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.root = os.path.realpath(settings.data_dir)
        self.secret = settings.secret.encode()
        self.cache: collections.OrderedDict[str, CachedFile] = collections.OrderedDict()
        self.cache_bytes = 0
        self.snapshots = asyncio.Semaphore(SNAPSHOTS_AT_ONCE)
        self.registry = metrics.build_registry(settings.data_dir)
        self.bench_busy = False
        self.bench_clients: dict[str, collections.deque[float]] = {}
        self.assets = self._load_assets()
        self.not_found_headers = {"Content-Type": "text/plain; charset=utf-8", **SECURITY_HEADERS}

    # -- routing ----------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/":
            if request.method in ("GET", "HEAD"):
                return web.Response(body=b"OK", headers={"Content-Type": "text/plain; charset=utf-8"})
            return self.not_allowed("GET, HEAD")
        return await self.dispatch(request)

    def not_found(self) -> web.Response:
        return web.Response(status=404, body=NOT_FOUND_BODY, headers=self.not_found_headers)

    async def dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if "\x00" in path or "\\" in path:
            return self.not_found()
        given, slash, rest = path[1:].partition("/")
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self.secret):
            return self.not_found()
        method = request.method
        if not slash:
            return self.redirect(request, request.rel_url.raw_path + "/")
        if rest.startswith("server-log/"):
            if method not in ("GET", "HEAD"):
                return self.not_allowed("GET, HEAD")
            return await self.server_log(request, rest[len("server-log/"):])
        if method == "POST" and rest == "bench/upload":
            return await self.bench_upload(request)
        if method not in ("GET", "HEAD"):
            return self.not_found()
        if rest == "":
            return self.asset(request, "dashboard.html")
        if rest == "metrics":
            return await self.metrics(request)
        if rest == "server-log":
            return self.redirect(request, request.rel_url.raw_path + "/")
        if rest == "api/partitions":
            return await self.partitions(request)
        if rest == "bench/download":
            return await self.bench_download(request)
        if rest.startswith("assets/"):
            return self.asset(request, rest[len("assets/"):])
        return self.not_found()

    def redirect(self, request: web.BaseRequest, location: str) -> web.Response:
        if request.query_string:
            location += "?" + request.query_string
        return web.Response(status=301, headers={"Location": location, **SECURITY_HEADERS})

    def not_allowed(self, allow: str) -> web.Response:
        return web.Response(status=405, text="405: Method Not Allowed", headers={"Allow": allow})

    # -- the data dir ---------------------------------------------------------

    def resolve(self, rel: str) -> tuple[str, list[str]] | None:
        """The real path of ``rel`` inside the data dir, or None when it must not be served."""
        parts = rel.split("/")
        for part in parts:
            if not part or part[0] == "." or part in HIDDEN or "\x00" in part:
                return None
        real = os.path.realpath(os.path.join(self.root, *parts))
        if real == self.root:
            return real, []
        if not real.startswith(self.root + os.sep):
            return None  # a symlink pointing outside
        inside = real[len(self.root) + 1:].split(os.sep)
        if any(p[0] == "." or p in HIDDEN for p in inside):
            return None  # a symlink to a hidden file
        return real, inside

    async def server_log(self, request: web.BaseRequest, rel: str) -> web.StreamResponse:
        directory = rel == "" or rel.endswith("/")
        found = self.resolve(rel.rstrip("/")) if rel else (self.root, [])
        if found is None:
            return self.not_found()
        real, inside = found
        try:
            st = os.stat(real)
        except OSError:
            return self.not_found()
        if stat.S_ISDIR(st.st_mode):
            if not directory:
                return self.redirect(request, request.rel_url.raw_path + "/")
            return self.listing(request, real, rel)
        if directory or not stat.S_ISREG(st.st_mode):
            return self.not_found()
        if inside == [DB_NAME]:
            return await self.send_db_copy(request, real)
        if st.st_size <= SMALL_FILE:
            return self.send_small(request, real, st)
        try:
            handle = open(real, "rb")
        except OSError:
            return self.not_found()
        with handle:
            st = os.fstat(handle.fileno())
            headers, etag, last_modified = file_headers(real, st)
            return await self.send_large(request, handle, st, headers, etag, last_modified)

    def listing(self, request: web.BaseRequest, real: str, rel: str) -> web.Response:
        entries = []
        try:
            scan = list(os.scandir(real))
        except OSError:
            return self.not_found()
        for entry in scan:
            name = entry.name
            if name[0] == "." or name in HIDDEN:
                continue
            try:
                if entry.is_symlink() and self.resolve(rel + name) is None:
                    continue
                st = entry.stat()
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                kind = "directory"
            elif stat.S_ISREG(st.st_mode):
                kind = "file"
            else:
                continue
            entries.append({
                "name": name,
                "type": kind,
                "size": st.st_size if kind == "file" else None,
                "mtime": datetime.datetime.fromtimestamp(st.st_mtime, datetime.UTC)
                .strftime("%Y-%m-%dT%H:%M:%SZ"),
                "url": urllib.parse.quote(name) + ("/" if kind == "directory" else ""),
            })
        entries.sort(key=lambda e: (e["type"] != "directory", e["name"]))
        headers = {"Cache-Control": "no-cache", **SECURITY_HEADERS}
        accept = request.headers.get("Accept", "")
        if "application/json" in accept or request.query.get("format") == "json":
            body = json.dumps({"path": "/" + rel, "entries": entries}).encode()
            return web.Response(body=body, headers={"Content-Type": "application/json", **headers})
        title = html.escape("server-log/" + rel)
        rows = [] if not rel else ['<tr><td><a href="../">../</a></td><td></td><td></td></tr>']
        for e in entries:
            shown = html.escape(e["name"] + ("/" if e["type"] == "directory" else ""))
            size = "" if e["size"] is None else str(e["size"])
            rows.append(f'<tr><td><a href="{html.escape(e["url"])}">{shown}</a></td>'
                        f'<td class="n">{size}</td><td>{e["mtime"]}</td></tr>')
        page = (
            f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>"
            "<link rel=\"icon\" href=\"data:,\">"
            "<style>body{font-family:sans-serif}td{padding:0 1em}.n{text-align:right}</style></head>"
            f"<body><h1>{title}</h1><table><thead><tr><th>Name</th><th>Size</th><th>Modified (UTC)</th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table></body></html>\n"
        )
        headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
        return web.Response(body=page.encode(), headers={"Content-Type": "text/html; charset=utf-8", **headers})

    def _conditional(self, request: web.BaseRequest, etag: str, mtime: int) -> bool:
        """True when the client's copy is current (answer 304)."""
        headers = request.headers
        match = headers.get("If-None-Match")
        if match is not None:
            return etag_matches(match, etag)
        if "If-Modified-Since" in headers:
            since = request.if_modified_since
            return since is not None and mtime <= since.timestamp()
        return False

    def _range(self, request: web.BaseRequest, size: int, etag: str, last_modified: str):
        header = request.headers.get("Range")
        if header is None:
            return None
        if_range = request.headers.get("If-Range")
        if if_range is not None and if_range.strip() not in (etag, last_modified):
            return None
        return parse_range(header, size)

    def send_small(self, request: web.BaseRequest, real: str, st: os.stat_result) -> web.StreamResponse:
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self.cache.get(real)
        if cached is None or cached.key != key:
            cached = self._load(real, st)
            if cached is None:
                return self.not_found()
        else:
            self.cache.move_to_end(real)
        if cached.etag and self._conditional(request, cached.etag, cached.mtime):
            return web.Response(status=304, headers={"ETag": cached.etag, "Last-Modified": cached.last_modified})
        span = self._range(request, len(cached.body), cached.etag, cached.last_modified)
        if span is None:
            return web.Response(body=cached.body, headers=cached.headers)
        size = len(cached.body)
        if span is False:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{size}", **SECURITY_HEADERS})
        start, end = span
        headers = dict(cached.headers, **{"Content-Range": f"bytes {start}-{end}/{size}"})
        return web.Response(status=206, body=cached.body[start:end + 1], headers=headers)

    def _load(self, real: str, st: os.stat_result) -> CachedFile | None:
        try:
            with open(real, "rb") as handle:
                fst = os.fstat(handle.fileno())
                body = handle.read(SMALL_FILE + 1)
        except OSError:
            return None
        if len(body) != fst.st_size:
            # Changed while read (a CSV being appended): serve what was read, without
            # validators a client could later match against the grown file, and uncached.
            headers = dict(file_headers(real, fst)[0], **{"Cache-Control": "no-store"})
            headers.pop("ETag", None)
            headers.pop("Last-Modified", None)
            return CachedFile((fst.st_ino, len(body), fst.st_mtime_ns), body, headers, "", "", int(fst.st_mtime))
        headers, etag, last_modified = file_headers(real, fst)
        entry = CachedFile((fst.st_ino, len(body), fst.st_mtime_ns), body, headers, etag, last_modified,
                           int(fst.st_mtime))
        old = self.cache.pop(real, None)
        if old is not None:
            self.cache_bytes -= len(old.body)
        self.cache[real] = entry
        self.cache_bytes += len(body)
        while self.cache_bytes > CACHE_BYTES and self.cache:
            _, evicted = self.cache.popitem(last=False)
            self.cache_bytes -= len(evicted.body)
        return entry

    async def send_large(self, request: web.BaseRequest, handle: Any, st: os.stat_result,
                         headers: dict[str, str], etag: str | None, last_modified: str | None,
                         ranges: bool = True) -> web.StreamResponse:
        """Headers from Python, the body by the kernel (sendfile; a thread under TLS)."""
        if etag and last_modified:
            if self._conditional(request, etag, int(st.st_mtime)):
                return web.Response(status=304, headers={"ETag": etag, "Last-Modified": last_modified})
        size = st.st_size
        span = self._range(request, size, etag or "", last_modified or "") if ranges else None
        if span is False:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{size}", **SECURITY_HEADERS})
        status, start, count = 200, 0, size
        if span:
            start, end = span
            status, count = 206, end - start + 1
            headers = dict(headers, **{"Content-Range": f"bytes {start}-{end}/{size}"})
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = count
        try:
            await response.prepare(request)
            if count and request.method != "HEAD":
                transport = request.transport
                if transport is None:
                    raise ConnectionResetError("connection lost")
                if transport.get_extra_info("sslcontext") is None:
                    sock = transport.get_extra_info("socket")
                    if sock is not None and transport.get_write_buffer_size() == 0:
                        await send_file_threaded(sock.fileno(), handle.fileno(), start, count,
                                                 self.settings.limits.send_timeout)
                    else:
                        await asyncio.get_running_loop().sendfile(transport, handle, start, count)
                else:  # no sendfile through TLS: read in a thread, encrypt here
                    await self._copy(response, handle, start, count)
            await response.write_eof()
        except ConnectionError:
            # The client left mid-transfer or reads nothing: nothing to answer, nothing to
            # log, and the truncated answer must not look complete on a kept connection.
            if request.transport is not None:
                hard_close(request.transport)
        return response

    @staticmethod
    async def _copy(response: web.StreamResponse, handle: Any, start: int, count: int) -> None:
        def chunk(offset: int, size: int) -> bytes:
            return os.pread(handle.fileno(), size, offset)

        offset, end = start, start + count
        while offset < end:
            data = await asyncio.to_thread(chunk, offset, min(COPY_CHUNK, end - offset))
            if not data:
                raise ConnectionResetError("file shrank while sent")
            await response.write(data)
            offset += len(data)

    async def send_db_copy(self, request: web.BaseRequest, real: str) -> web.StreamResponse:
        """collector.db as a consistent copy (backup API), never the live file."""
        async with self.snapshots:  # copies at once, not the slow clients that read them
            try:
                tmp = await asyncio.to_thread(self._snapshot, real)
            except (sqlite3.Error, OSError) as exc:
                log.warning("cannot copy %s: %s", real, exc)
                return web.Response(status=503, text="the store cannot be copied right now\n",
                                    headers={"Retry-After": "60"})
            try:
                handle = open(tmp, "rb")
            finally:
                os.unlink(tmp)  # the open handle keeps the copy readable until sent
        with handle:
            st = os.fstat(handle.fileno())
            headers = {
                "Content-Type": TYPES[".db"],
                "Cache-Control": "no-store",
                "Last-Modified": formatdate(st.st_mtime, usegmt=True),
                **SECURITY_HEADERS,
            }
            return await self.send_large(request, handle, st, headers, None, None, ranges=False)

    def _snapshot(self, real: str) -> str:
        from .store import Store

        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".collector.db.serve-")
        os.close(fd)
        try:
            with Store(real, readonly=True) as store:
                store.backup_to(tmp)
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp

    # -- dashboard, metrics ---------------------------------------------------

    def _load_assets(self) -> dict[str, tuple[bytes, dict[str, str]]]:
        own = importlib.resources.files("slapos_collect_recipe") / "assets"
        sources = {
            "dygraph.js": importlib.resources.files("dygraphs") / "assets" / "dygraph-combined.js",
            "dashboard.html": own / "dashboard.html",
            "dashboard.js": own / "dashboard.js",
            "dashboard.css": own / "dashboard.css",
        }
        assets = {}
        for name, source in sources.items():
            try:
                body = source.read_bytes()
            except OSError as exc:
                raise CollectError(f"cannot read the dashboard asset {name}: {exc}") from None
            headers = {
                "Content-Type": content_type(name) if not name.endswith(".js") else "text/javascript; charset=utf-8",
                "ETag": f'"{len(body):x}-{hash(body) & 0xFFFFFFFF:x}"',
                "Cache-Control": "no-cache",
                "Content-Security-Policy": DASHBOARD_CSP,
                **SECURITY_HEADERS,
            }
            assets[name] = (body, headers)
        return assets

    def asset(self, request: web.BaseRequest, name: str) -> web.Response:
        found = self.assets.get(name)
        if found is None:
            return self.not_found()
        body, headers = found
        match = request.headers.get("If-None-Match")
        if match is not None and etag_matches(match, headers["ETag"]):
            return web.Response(status=304, headers={"ETag": headers["ETag"]})
        return web.Response(body=body, headers=headers)

    async def metrics(self, request: web.BaseRequest) -> web.Response:
        body = await asyncio.to_thread(metrics.render, self.registry)
        return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE,
                                                "Cache-Control": "no-store", **SECURITY_HEADERS})

    async def partitions(self, request: web.BaseRequest) -> web.Response:
        def read() -> dict[str, Any]:
            store = metrics.open_store(self.settings.data_dir)
            if store is None:
                return {"date": None, "time": None, "partitions": []}
            with store:
                return metrics.current_partitions(store)

        try:
            body = json.dumps(await asyncio.to_thread(read)).encode()
        except sqlite3.Error as exc:
            log.warning("cannot read the store: %s", exc)
            return web.Response(status=503, text="the store cannot be read right now\n",
                                headers={"Retry-After": "60"})
        return web.Response(body=body, headers={"Content-Type": "application/json",
                                                "Cache-Control": "no-store", **SECURITY_HEADERS})

    # -- benchmark helpers ----------------------------------------------------

    def _bench_refused(self, request: web.BaseRequest) -> web.Response | None:
        """429 while another transfer runs or past BENCH_PER_MINUTE for this client."""
        if self.bench_busy:
            return web.Response(status=429, text="busy: one benchmark transfer at a time\n",
                                headers={"Retry-After": "1"})
        now = time.monotonic()
        client = request.remote or "-"
        recent = self.bench_clients.setdefault(client, collections.deque())
        while recent and recent[0] < now - 60:
            recent.popleft()
        if len(recent) >= BENCH_PER_MINUTE:
            wait = max(1, int(recent[0] + 60 - now) + 1)
            return web.Response(status=429, text=f"at most {BENCH_PER_MINUTE} transfers a minute\n",
                                headers={"Retry-After": str(wait)})
        recent.append(now)
        if len(self.bench_clients) > 10000:  # forget idle clients
            for key in [k for k, v in self.bench_clients.items() if not v or v[-1] < now - 60]:
                del self.bench_clients[key]
        return None

    async def bench_download(self, request: web.BaseRequest) -> web.StreamResponse:
        raw = request.query.get("bytes", "")
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 12 or int(raw) > BENCH_MAX_BYTES:
            return web.Response(status=400, text=f"bytes must be a whole number from 0 to {BENCH_MAX_BYTES}\n")
        refused = self._bench_refused(request)
        if refused is not None:
            return refused
        total = int(raw)
        self.bench_busy = True
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream",
                                               "Cache-Control": "no-store"})
        response.content_length = total
        try:
            await response.prepare(request)
            async with asyncio.timeout(BENCH_TRANSFER_SECONDS):
                if request.method != "HEAD":
                    block = memoryview(BENCH_BLOCK)
                    left = total
                    while left > 0:
                        chunk = block[:min(left, BENCH_CHUNK)]
                        await response.write(chunk)
                        left -= len(chunk)
                await response.write_eof()
        except (ConnectionError, TimeoutError):
            pass  # the client left or stalled: the slot is freed below
        finally:
            self.bench_busy = False
        return response

    async def bench_upload(self, request: web.BaseRequest) -> web.Response:
        if request.content_length is not None and request.content_length > BENCH_MAX_BYTES:
            return closing(web.Response(status=413, text=f"at most {BENCH_MAX_BYTES} bytes\n"))
        refused = self._bench_refused(request)
        if refused is not None:
            return refused
        self.bench_busy = True
        try:
            started = time.perf_counter()
            received = 0
            pause = self.settings.body_timeout  # the body's pace: some bytes this often
            while True:
                left = started + BENCH_TRANSFER_SECONDS - time.perf_counter()
                try:
                    async with asyncio.timeout(max(0.0, min(left, pause))):
                        chunk = await request.content.readany()
                except ConnectionError:
                    return web.Response(status=400, text="upload interrupted\n")
                except TimeoutError:
                    return closing(web.Response(status=408, text="upload too slow\n"))
                if not chunk:
                    break
                received += len(chunk)
                if received > BENCH_MAX_BYTES:
                    return closing(web.Response(status=413, text=f"at most {BENCH_MAX_BYTES} bytes\n"))
            seconds = time.perf_counter() - started
        finally:
            self.bench_busy = False
        body = json.dumps({"bytes": received, "seconds": round(seconds, 6)}).encode()
        return web.Response(body=body, headers={"Content-Type": "application/json", "Cache-Control": "no-store"})


def closing(response: web.Response) -> web.Response:
    """The rest of the body is not read: the connection closes after the answer."""
    response.force_close()
    return response


BENCH_BLOCK = os.urandom(BENCH_CHUNK)
# A benchmark transfer holds the only bench slot: a stalled peer gives it back after this.
BENCH_TRANSFER_SECONDS = 60.0


# -- running ------------------------------------------------------------------


def cleanup_snapshots(root: Path) -> None:
    """Copies of collector.db left by a killed server."""
    for leftover in root.glob(".collector.db.serve-*"):
        with contextlib.suppress(OSError):
            leftover.unlink()


async def serve(settings: ServeSettings, sockets: list[socket.socket], context: ssl.SSLContext | None,
                descriptors: int) -> None:
    monitor = Monitor(settings)
    access = AccessLogFile(settings.access_log, settings.secret) if settings.access_log else None
    limits = settings.limits
    # The connections are the Gate's (its own accept loop, caps, timeouts); aiohttp's
    # low-level server (one handler, no router nor middleware: the probe's fast path)
    # parses and answers; its runner shuts down gracefully.
    most = limits.max_connections or default_max_connections(descriptors)
    gate = Gate(monitor.handle, limits, most, context,
                {"access_log_class": CombinedAccessLogger, "access_log": access})
    runner = web.ServerRunner(gate.server, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    monitor.registry.register(metrics.ConnectionsCollector(gate.figures))
    try:
        gate.start(sockets)
        urls = " ".join(url_of(sock, context is not None) for sock in sockets)
        figures = (f"{descriptors} descriptors, at most {most} connections, "
                   f"{limits.per_address} per address")
        log.info("listening on %s (%s)", urls, figures)
        print(f"slapmonitor: listening on {urls} ({figures})", file=sys.stderr, flush=True)
        if most > descriptors - 32:
            log.warning("max-connections %d leaves almost no descriptors of %d for files: "
                        "accepting will pause when they run out", most, descriptors)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            if access:
                access.flush()
        log.info("stopping")
    finally:
        gate.stop_accepting()
        await runner.cleanup()
        gate.abort_all()
        if access:
            access.flush()
            access.close()


def run(args: argparse.Namespace) -> int:
    settings = serve_settings(args)
    setup_logging(settings.log_file, long_running=True)
    for name, level in (("aiohttp", logging.WARNING), ("asyncio", logging.ERROR)):
        # asyncio warns "socket.send() raised exception." for every TLS record
        # still queued when a client goes away: normal for a file server.
        other = logging.getLogger(name)
        other.handlers = list(log.handlers)
        other.propagate = False
        other.setLevel(level)
    context = None
    if settings.tls:
        assert settings.cert and settings.key
        ensure_certificate(settings.cert, settings.key, settings.hosts)
        context = ssl_context(settings.cert, settings.key)
    sockets = bind_sockets(settings.hosts, settings.port, settings.hosts_given)
    cleanup_snapshots(settings.data_dir)
    descriptors = descriptor_limit()
    try:
        asyncio.run(serve(settings, sockets, context, descriptors))
    finally:
        for sock in sockets:
            sock.close()
    return 0
