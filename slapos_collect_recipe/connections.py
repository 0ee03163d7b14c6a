"""The slapmonitor's connections: its own accept loop, caps and timeouts.

Why its own accept loop: asyncio's prints a traceback for every accept that
fails for lack of descriptors and retries in a tight cycle, and it hands a TLS
connection to aiohttp only once the handshake is over, so a client that never
starts one is invisible to any cap. Here every accepted socket is a ``Conn``
from accept to close, in one phase at a time:

=========  ====================================================  ==============
handshake  TLS handshake under way                               handshake-timeout
head       a request's headers not complete yet (from the        header-timeout
           connection's start, or from a keep-alive request's
           first byte): a slow trickle does not extend it
idle       keep-alive between two requests                       idle-timeout
stalled    a response the peer does not read                     send-timeout
busy       a handler runs (its own limits apply)                 -
=========  ====================================================  ==============

Every phase but busy is *waiting*: the server may close such a connection.
When a new one finds its address at the per-address cap, or the server at its
total cap, a waiting connection is dropped to make room (that address's oldest,
or the one of all that has waited longest); only when none is waiting is the new
one refused.
Each waiting phase keeps its connections in arrival order (an OrderedDict), so
the watchdog and the eviction only ever look at the front: O(1) per connection.

Why one module of about 560 lines: it is one state machine. ``Gate`` (accept,
caps, phases, watchdog) and ``Handler`` (aiohttp's protocol, which reports each
connection's events to the gate) move a ``Conn`` between the phases together;
the gate builds the handlers and the handlers call the gate back, so split in
two they would import each other, and a phase change would be read in two
files.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import functools
import logging
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from .address import V4_MAPPED

log = logging.getLogger("slapos_collect")

HANDSHAKE, HEAD, IDLE, STALLED, BUSY, CLOSED = "handshake", "head", "idle", "stalled", "busy", "closed"
WAITING = (HANDSHAKE, HEAD, IDLE, STALLED)
# Reasons of slapmonitor_connections_dropped_total; all present from the start, so that
# the metrics thread can copy the dict while the event loop counts.
REASONS = ("header_timeout", "idle_timeout", "handshake_timeout", "send_timeout",
           "full", "per_address", "descriptors", "refused")
TIMEOUT_REASON = {HANDSHAKE: "handshake_timeout", HEAD: "header_timeout", IDLE: "idle_timeout",
                  STALLED: "send_timeout"}
# Worth a log line (an idle keep-alive closed on time is not).
ALARMS = ("header_timeout", "handshake_timeout", "send_timeout", "full", "per_address", "descriptors", "refused")
SHORTAGE = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_BATCH = 32  # accepts per readiness callback: other work runs between, and the sockets
# of connections dropped to make room (closed on the next loop turn) stay few
SHORTAGE_PAUSE = 0.05  # seconds without accepting after running out of descriptors
SHORTAGE_EVICT = 16  # waiting connections closed then, to give descriptors back
LINGER = 2.0
PER_ADDRESS_LOOK = 64  # connections of an address looked at for one to drop
TICK = 0.25  # watchdog period (seconds)
REPORT_EVERY = 60.0  # at most one log line a minute about refusals and drops
DEFAULT_PER_ADDRESS = 256
MAX_DEFAULT_CONNECTIONS = 10000


@dataclass
class Limits:
    """The ``[monitor]`` settings this module enforces (seconds, counts, bytes)."""

    header_timeout: float = 10.0
    idle_timeout: float = 30.0
    handshake_timeout: float = 5.0
    send_timeout: float = 60.0
    max_connections: int = 0  # 0: from the descriptor limit (default_max_connections)
    per_address: int = DEFAULT_PER_ADDRESS
    max_request_line: int = 8190
    max_header_field: int = 16384
    max_headers: int = 100
    max_header_bytes: int = 65536  # the whole request head: bounds what the parser holds per connection


def descriptor_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one; the soft limit then in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def default_max_connections(descriptors: int) -> int:
    """Connections at once that leave room for what requests open (files, the store,
    sendfile's duplicates, logs): an eighth of the descriptors, at least 64, is kept."""
    return max(8, min(MAX_DEFAULT_CONNECTIONS, descriptors - max(64, descriptors // 8)))


def address_key(peer: Any, family: int) -> Any:
    """Per-address caps count an IPv6 client's whole /64 as one address (one host's share);
    an IPv4-mapped one (``::ffff:a.b.c.d``, on a dual-stack socket) is its IPv4 address,
    not the /64 that every IPv4 client and ``::1`` would share."""
    if family == socket.AF_INET6:
        try:
            packed = socket.inet_pton(socket.AF_INET6, peer[0].partition("%")[0])
        except (OSError, TypeError, IndexError):
            return peer
        if packed[:12] == V4_MAPPED:
            return socket.inet_ntop(socket.AF_INET, packed[12:])
        return packed[:8]
    return peer[0] if isinstance(peer, tuple) else peer


def hard_close(transport: asyncio.BaseTransport) -> None:
    """Close now, and reset: what the kernel still holds for a peer that reads nothing is
    thrown away at once, not trickled out after the close."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class Conn:
    __slots__ = ("key", "address", "phase", "since", "transport", "task", "sock", "started", "line_seen",
                 "head_bytes", "tail", "body")

    def __init__(self, key: Any, address: Address, phase: str, now: float, sock: socket.socket) -> None:
        self.key = key
        self.address = address
        self.phase = phase
        self.since = now
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task | None = None
        self.sock: socket.socket | None = sock
        self.started = False
        self.line_seen = False
        self.head_bytes = 0  # of the request head so far; -1 once its end is seen
        self.tail = b""  # the last bytes received, for an end of head split across two reads
        self.body: Any = None  # an answered request's payload still arriving (not a new head)


class Address:
    """One client address's connections, oldest first (kept apart from the phases, so that a
    request costs no per-address bookkeeping)."""

    __slots__ = ("count", "conns")

    def __init__(self) -> None:
        self.count = 0
        self.conns: collections.OrderedDict[Conn, None] = collections.OrderedDict()


class Gate:
    """Accepts on the listening sockets and keeps every connection within the limits."""

    def __init__(self, handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]], limits: Limits,
                 max_connections: int, context: ssl.SSLContext | None, handler_kwargs: dict[str, Any]) -> None:
        self.loop = asyncio.get_running_loop()
        self.server = web.Server(handler, request_factory=self._request)
        self.limits = limits
        self.max_connections = max_connections
        self.context = context
        self.handler_kwargs = dict(handler_kwargs, max_line_size=limits.max_request_line,
                                   max_field_size=limits.max_header_field, max_headers=limits.max_headers,
                                   # aiohttp's own keep-alive close is only a backstop for the watchdog's
                                   keepalive_timeout=limits.idle_timeout + 5,
                                   # after an answer to a request whose body is left unread
                                   # (413, 408), how long to discard the body before closing
                                   lingering_time=LINGER)
        self.timeouts = {HANDSHAKE: limits.handshake_timeout, HEAD: limits.header_timeout,
                         IDLE: limits.idle_timeout, STALLED: limits.send_timeout}
        self.waiting: dict[str, collections.OrderedDict[Conn, None]] = {
            phase: collections.OrderedDict() for phase in WAITING}
        self.addresses: dict[Any, Address] = {}
        self.count = 0
        self.dropped = dict.fromkeys(REASONS, 0)
        self.cap_hits = 0
        self.shortages = 0
        self.listening: list[socket.socket] = []
        self.paused = False
        self.watchdog: asyncio.Task | None = None
        self.reported = dict(self.dropped, cap_hits=0, shortages=0)
        self.reported_at = -REPORT_EVERY
        self.error_logged_at = -REPORT_EVERY

    # -- accepting --------------------------------------------------------------

    def start(self, sockets: list[socket.socket]) -> None:
        self.listening = list(sockets)
        self._resume()
        self.watchdog = self.loop.create_task(self._watch())

    def stop_accepting(self) -> None:
        for sock in self.listening:
            self.loop.remove_reader(sock.fileno())
        self.listening = []
        if self.watchdog is not None:
            self.watchdog.cancel()

    def abort_all(self) -> None:
        """What shutdown left: connections still in their handshake, stragglers."""
        for od in self.waiting.values():
            for conn in list(od):
                self._close(conn)
        for handler in self.server.connections:
            if handler.transport is not None:
                handler.transport.abort()

    def _resume(self) -> None:
        self.paused = False
        for sock in self.listening:
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def _pause(self) -> None:
        self.paused = True
        for sock in self.listening:
            self.loop.remove_reader(sock.fileno())
        self.loop.call_later(SHORTAGE_PAUSE, self._resume_if_listening)

    def _resume_if_listening(self) -> None:
        if self.paused and self.listening:
            self._resume()

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in SHORTAGE:
                    # Out of descriptors: close the longest-waiting connections and wait
                    # a moment; never a busy loop, never a traceback.
                    self.shortages += 1
                    for _ in range(SHORTAGE_EVICT):
                        victim = self._oldest(self.waiting)
                        if victim is None:
                            break
                        self.drop(victim, "descriptors")
                    self._pause()
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # the client left before we accepted it
                now = self.loop.time()
                if now - self.error_logged_at >= REPORT_EVERY:
                    log.warning("accept on %s: %s (pausing)", listener.getsockname(), exc)
                    self.error_logged_at = now
                self._pause()
                return
            self._admit(sock, peer, listener.family)

    def _admit(self, sock: socket.socket, peer: Any, family: int) -> None:
        key = address_key(peer, family)
        address = self.addresses.get(key)
        if address is not None and address.count >= self.limits.per_address:
            self.cap_hits += 1
            victim = self._first_waiting(address.conns)
            if victim is None:
                self._refuse(sock)
                return
            self.drop(victim, "per_address")
        if self.count >= self.max_connections:
            victim = self._oldest(self.waiting)
            if victim is None:
                self._refuse(sock)
                return
            self.drop(victim, "full")
        try:
            sock.setblocking(False)
        except OSError:
            sock.close()
            return
        address = self.addresses.get(key)
        if address is None:
            address = self.addresses[key] = Address()
        conn = Conn(key, address, HANDSHAKE if self.context is not None else HEAD, self.loop.time(), sock)
        address.count += 1
        self.count += 1
        self.waiting[conn.phase][conn] = None
        address.conns[conn] = None
        conn.task = self.loop.create_task(self._open(conn, sock))

    def _refuse(self, sock: socket.socket) -> None:
        self.dropped["refused"] += 1
        sock.close()

    async def _open(self, conn: Conn, sock: socket.socket) -> None:
        conn.started = True
        factory = functools.partial(Handler, self, conn, self.server, loop=self.loop, **self.handler_kwargs)
        try:
            if self.context is None:
                await self.loop.connect_accepted_socket(factory, sock)
            else:
                # asyncio's own handshake timeout backs the watchdog's up.
                await self.loop.connect_accepted_socket(
                    factory, sock, ssl=self.context, ssl_handshake_timeout=self.limits.handshake_timeout + 1,
                    ssl_shutdown_timeout=5.0)
        except asyncio.CancelledError:
            pass  # dropped by the watchdog or an eviction: counted there
        except OSError:  # includes ssl.SSLError: a failed handshake, closed by asyncio
            if conn.phase == HANDSHAKE:
                self.forget(conn)
        finally:
            conn.task = None
            conn.sock = None

    # -- phases -------------------------------------------------------------------

    def enter(self, conn: Conn, phase: str) -> None:
        """Into ``phase``, at the end of its queue (on every request: two dict operations at most)."""
        old = conn.phase
        if old == CLOSED or (old == phase == BUSY):
            return
        if old != BUSY:
            del self.waiting[old][conn]
        conn.phase = phase
        conn.since = self.loop.time()
        if phase != BUSY:
            self.waiting[phase][conn] = None
            if phase == HEAD:
                conn.line_seen = False
                conn.head_bytes = 0
                conn.tail = b""

    def forget(self, conn: Conn) -> None:
        phase = conn.phase
        if phase == CLOSED:
            return
        conn.phase = CLOSED
        address = conn.address
        if phase != BUSY:
            del self.waiting[phase][conn]
        del address.conns[conn]
        address.count -= 1
        if address.count == 0:
            del self.addresses[conn.key]
        self.count -= 1

    def drop(self, conn: Conn, reason: str) -> None:
        if conn.phase == CLOSED:
            return
        self.dropped[reason] += 1
        self._close(conn)

    def _close(self, conn: Conn) -> None:
        # An idle connection may still be delivering its last answer: closed gently. The
        # others owe nothing to a peer that sends or reads too slowly: reset.
        reset = conn.phase != IDLE
        self.forget(conn)
        if conn.transport is not None:
            if reset:
                hard_close(conn.transport)
            else:
                conn.transport.abort()  # no TLS close_notify dance with a peer that may never answer
        elif conn.task is not None:
            conn.task.cancel()
            if not conn.started and conn.sock is not None:
                conn.sock.close()  # the task never ran: nobody else owns the socket yet

    @staticmethod
    def _first_waiting(conns: collections.OrderedDict[Conn, None]) -> Conn | None:
        """The address's oldest connection not busy in a handler (a bounded look)."""
        for _, conn in zip(range(PER_ADDRESS_LOOK), conns, strict=False):
            if conn.phase != BUSY:
                return conn
        return None

    def _oldest(self, waiting: dict[str, collections.OrderedDict[Conn, None]]) -> Conn | None:
        best = None
        for od in waiting.values():
            conn = next(iter(od), None)
            if conn is not None and (best is None or conn.since < best.since):
                best = conn
        return best

    # -- events from the protocol and the handler ------------------------------

    def made(self, conn: Conn, transport: asyncio.Transport) -> None:
        conn.transport = transport
        if conn.phase == HANDSHAKE:
            self.enter(conn, HEAD)
        elif conn.phase == CLOSED:
            transport.abort()

    def done(self, conn: Conn, payload: Any) -> None:
        """The response is handed to the transport: the connection waits for the next request,
        once the rest of this one's body (if the handler left it unread) has arrived."""
        if conn.phase != CLOSED:
            self.enter(conn, IDLE)
            conn.body = None if payload.is_eof() else payload

    def stalled(self, conn: Conn, paused: bool) -> None:
        if paused and conn.phase not in (CLOSED, STALLED):
            self.enter(conn, STALLED)
        elif not paused and conn.phase == STALLED:
            self.enter(conn, BUSY)

    def _request(self, message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
        """aiohttp's request factory (called once a request's headers are complete): the
        connection is busy from here until its answer is written."""
        conn = getattr(protocol, "monitor_conn", None)
        if conn is not None:
            self.enter(conn, BUSY)
        return web.BaseRequest(message, payload, protocol, writer, task, self.loop)

    # -- the watchdog --------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                self._tick(self.loop.time())
            except Exception:  # a bug: said (at most once a minute), and the watch goes on
                now = self.loop.time()
                if now - self.error_logged_at >= REPORT_EVERY:
                    log.exception("connection watchdog")
                    self.error_logged_at = now

    def _tick(self, now: float) -> None:
        """Each waiting phase's queue is in deadline order: only its expired front is looked at."""
        for phase, od in self.waiting.items():
            limit = now - self.timeouts[phase]
            while od:
                conn = next(iter(od))
                if conn.since > limit:
                    break
                if phase == IDLE and conn.transport is not None and conn.transport.get_write_buffer_size():
                    self.enter(conn, IDLE)  # still sending the last response: not idle yet
                    continue
                self.drop(conn, TIMEOUT_REASON[phase])
        self._report(now)

    def _report(self, now: float) -> None:
        if now - self.reported_at < REPORT_EVERY:
            return
        current = dict(self.dropped, cap_hits=self.cap_hits, shortages=self.shortages)
        delta = {k: v - self.reported[k] for k, v in current.items()}
        if not any(delta[k] for k in (*ALARMS, "cap_hits", "shortages")):
            return
        dropped = {k: delta[k] for k in REASONS if k != "refused" and delta[k]}
        details = ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in dropped.items())
        since = "since start" if self.reported_at < 0 else f"in the last {now - self.reported_at:.0f} s"
        log.warning("connections %s: %d refused, %d dropped (%s), %d per-address cap hits, "
                    "%d descriptor shortages; %d open of at most %d",
                    since, delta["refused"], sum(dropped.values()), details or "none", delta["cap_hits"],
                    delta["shortages"], self.count, self.max_connections)
        self.reported = current
        self.reported_at = now

    def figures(self) -> dict[str, Any]:
        """For the metrics collector (called from its thread: copies only)."""
        return {"connections": self.count, "max": self.max_connections, "dropped": dict(self.dropped),
                "cap_hits": self.cap_hits, "shortages": self.shortages}


def head_end(tail: bytes, data: bytes) -> int:
    """Where in ``data`` the request head ends (an empty line), -1 if it does not; ``tail`` is
    the end of the previous read, for an empty line split across two reads."""
    end = data.find(b"\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")  # bare line feeds
    if end >= 0:
        return end
    edge = tail + data[:3]
    return 0 if b"\n\r\n" in edge or b"\n\n" in edge else -1


class Handler(web.RequestHandler):
    """aiohttp's connection protocol, telling the gate what the connection does."""

    def __init__(self, gate: Gate, conn: Conn, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.monitor_gate = gate
        self.monitor_conn = conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.monitor_gate.made(self.monitor_conn, transport)  # type: ignore[arg-type]
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.monitor_gate.forget(self.monitor_conn)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        conn = self.monitor_conn
        if conn.body is not None:  # the answered request's body: aiohttp's parser discards it
            super().data_received(data)
            if conn.body.is_eof():
                conn.body = None  # what comes next is a request
            return
        if conn.phase == IDLE:
            self.monitor_gate.enter(conn, HEAD)  # a new request starts: its headers are timed
        if conn.phase == HEAD and conn.head_bytes >= 0:
            if not conn.line_seen and b"\n" in data:
                conn.line_seen = True
            end = head_end(conn.tail, data)  # what follows is a body or the next request
            size = conn.head_bytes + (len(data) if end < 0 else end)
            if size > self.monitor_gate.limits.max_header_bytes:
                self._head_too_large()
                return
            conn.head_bytes = size if end < 0 else -1
            conn.tail = data[-3:]
        super().data_received(data)

    def _head_too_large(self) -> None:
        """431 without feeding the parser more: what it holds per connection stays bounded."""
        transport = self.transport
        if transport is None:
            return
        body = b"431: Request Header Fields Too Large\n"
        transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n"
                        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        self.force_close()  # the transport sends what it holds, then closes

    def pause_writing(self) -> None:
        super().pause_writing()
        self.monitor_gate.stalled(self.monitor_conn, True)

    def resume_writing(self) -> None:
        super().resume_writing()
        self.monitor_gate.stalled(self.monitor_conn, False)

    def log_access(self, request: web.BaseRequest, response: web.StreamResponse, time: float | None) -> None:
        # Called once the response is written (or the client left): the request is over.
        self.monitor_gate.done(self.monitor_conn, request.content)
        super().log_access(request, response, time)

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """Malformed or oversized requests: 400, 414 or 431, one line, no traceback in the log."""
        if status != 400 or not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        if isinstance(exc, LineTooLong):
            limit = exc.args[1] if len(exc.args) > 1 else None
            in_line = (limit == self.max_line_size if self.max_line_size != self.max_field_size
                       else not self.monitor_conn.line_seen)
            status, text = (414, "414: URI Too Long") if in_line else (431, "431: Request Header Fields Too Large")
        elif "Too many headers" in str(exc):
            status, text = 431, "431: Request Header Fields Too Large"
        else:
            text = "400: Bad Request"
        response = web.Response(status=status, text=text + "\n")
        response.force_close()
        return response
