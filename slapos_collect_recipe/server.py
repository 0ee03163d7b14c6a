"""slapmonitor: the HTTPS server of a partition (``slapos-collect serve``).

This module is the command: its flags and ``[monitor]`` settings, and the
run that wires the parts together. The parts:

- ``listening``: the URL secret, the TLS pair and context, the sockets;
- ``connections``: the accept loop, its caps and timeouts;
- ``routes``: what each path answers (``Monitor``);
- ``file_responses``: a file's answer (validators, ranges, the in-memory cache,
  sendfile, collector.db's copies);
- ``bench_peer``: the benchmark peer routes (and the client that calls them);
- ``access_log``: the combined-format access log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from . import metrics
from .access_log import AccessLogFile, CombinedAccessLogger
from .config import setup_logging
from .connections import Gate, Limits, default_max_connections, descriptor_limit
from .datafiles import CERT_NAME, KEY_NAME, SECRET_NAME
from .errors import CollectError
from .file_responses import cleanup_snapshots
from .listening import bind_sockets, check_secret, ensure_certificate, load_or_create_secret, ssl_context, url_of
from .routes import Monitor
from .settings import (
    COLLECT,
    CONFIG,
    DATA_DIR,
    LOG_FILE,
    Kind,
    Resolved,
    Setting,
    add_flags,
    boolean,
    integer,
    load_config,
    number,
    resolve,
    text,
    words,
)

log = logging.getLogger("slapos_collect")

MONITOR = "monitor"
DEFAULT_PORT = 9443
DEFAULT_HOSTS = ("127.0.0.1", "::1")


# -- settings -----------------------------------------------------------------


def _monitor(key: str, kind: Kind = text, default: Any = None, **declared: Any) -> Setting:
    """A setting of the ``[monitor]`` section, with its flag ``--<key>``."""
    return Setting(key, kind, default, sections=(MONITOR,), **{"flag": f"--{key}", **declared})


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
LIMITS_GROUP = "limits (see README: slapmonitor, Connections under load)"
LIMITS = tuple(
    _monitor(key, number(above=0, unit="seconds") if key.endswith("-timeout") else integer(1), default,
             metavar="SECONDS" if key.endswith("-timeout") else "N", group=LIMITS_GROUP,
             help=f"{what} (default {'from the descriptor limit' if default is None else f'{default:g}'})")
    for key, what, default in LIMIT_FLAGS
)
HOSTS = _monitor("host", words(), flag="--host", many="replace", metavar="ADDR",
                 help="address to listen on (repeatable; default 127.0.0.1 and ::1)")
PORT = _monitor("port", integer(0, 65535), DEFAULT_PORT, metavar="N",
                help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one, printed at start)")
SECRET = Setting("secret", flag="--secret", metavar="S", exclusive="secret",
                 help="the URL secret (at least 22 characters of A-Z a-z 0-9 _ -); "
                      "local users can read it in ps: prefer --secret-file")
SECRET_FILE = _monitor("secret-file", metavar="F", exclusive="secret",
                       help=f"file holding the secret, generated when missing (default DATA_DIR/{SECRET_NAME})")
CERT = _monitor("cert", metavar="F", help="TLS certificate (PEM); generated self-signed when missing")
KEY = _monitor("key", metavar="F", help="TLS private key (PEM); generated when missing")
NO_TLS = _monitor("no-tls", boolean, False, switch=True, help="plain HTTP (local use only)")
ACCESS_LOG = _monitor("access-log", metavar="F", help="combined-format access log file")
SERVE_LOG_FILE = replace(LOG_FILE, sections=(MONITOR, COLLECT))
SERVE_SETTINGS = (CONFIG, DATA_DIR, SERVE_LOG_FILE, HOSTS, PORT, SECRET, SECRET_FILE, CERT, KEY, NO_TLS, ACCESS_LOG,
                  *LIMITS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, SERVE_SETTINGS)


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


def limit_settings(got: Resolved) -> tuple[Limits, float]:
    """The limits (flags over ``[monitor]``) and the upload's body timeout, from resolved settings."""
    values = {key: got[key] for key, _, _ in LIMIT_FLAGS if got.given(key)}
    body_timeout = float(values.pop("body-timeout", BODY_TIMEOUT))
    names = {"max-connections-per-address": "per_address"}
    limits = Limits(**{names.get(k, k.replace("-", "_")): v for k, v in values.items()})
    return limits, body_timeout


def serve_settings(args: argparse.Namespace) -> ServeSettings:
    """Flags over the ``[monitor]`` section of ``-c CONFIG``."""
    got = resolve(SERVE_SETTINGS, args, load_config(args))
    data_dir = Path(got[DATA_DIR.key]).expanduser().absolute()
    if not data_dir.is_dir():
        raise CollectError(f"data dir {data_dir} does not exist")
    if not os.access(data_dir, os.R_OK | os.X_OK):
        raise CollectError(f"data dir {data_dir} is not readable")

    hosts = [h.strip("[]") for h in got[HOSTS.key]] or list(DEFAULT_HOSTS)
    # Unlike other flags, a blank --secret is refused rather than taken as not given: it must never
    # fall back silently to a secret file.
    flag_secret = vars(args).get(SECRET.attribute)
    if flag_secret is not None:
        secret = check_secret(flag_secret.strip(), SECRET.option)
    else:
        secret_file = got[SECRET_FILE.key]
        secret = load_or_create_secret(Path(secret_file) if secret_file else data_dir / SECRET_NAME)

    no_tls, cert, key = got[NO_TLS.key], got[CERT.key] or None, got[KEY.key] or None
    if bool(cert) != bool(key):
        raise CollectError("give both --cert and --key, or neither")
    if not no_tls and not cert:
        cert, key = str(data_dir / CERT_NAME), str(data_dir / KEY_NAME)
    limits, body_timeout = limit_settings(got)
    return ServeSettings(
        limits=limits,
        body_timeout=body_timeout,
        data_dir=data_dir,
        hosts=hosts,
        hosts_given=got.given(HOSTS.key),
        port=got[PORT.key],
        secret=secret,
        tls=not no_tls,
        cert=Path(cert) if cert else None,
        key=Path(key) if key else None,
        access_log=got[ACCESS_LOG.key] or None,
        log_file=got[SERVE_LOG_FILE.key] or None,
    )


# -- running ------------------------------------------------------------------


async def serve(settings: ServeSettings, sockets: list[socket.socket], context: ssl.SSLContext | None,
                descriptors: int) -> None:
    monitor = Monitor(settings.data_dir, settings.secret, settings.limits.send_timeout, settings.body_timeout)
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
