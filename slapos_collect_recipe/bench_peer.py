"""Both ends of the network benchmark's peer protocol.

The server end (``BenchRoutes``, a slapmonitor's ``bench/download`` and
``bench/upload``) and the client end (``PeerClient``, used by
``slapos-collect bench net``) share their limits here: at most
``MAX_NET_BYTES`` a transfer, one transfer at a time (a busy peer answers 429
with ``Retry-After: BUSY_RETRY_AFTER``, which the client waits out since it is
at most ``MAX_RETRY_AFTER``), ``PER_MINUTE`` transfers a minute per client.

The client is the standard library's: aiohttp is imported only by the server
end's handlers, so the bench command does not load it.
"""

from __future__ import annotations

import asyncio
import collections
import http.client
import json
import logging
import os
import socket
import ssl
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .errors import CollectError

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("slapos_collect")

MAX_NET_BYTES = 256 * 1024 * 1024  # the most one transfer may move, either way
PER_MINUTE = 30  # transfers per client address
BUSY_RETRY_AFTER = 1  # seconds, in the 429 of a peer busy with another transfer
MAX_RETRY_AFTER = 5  # the longest Retry-After the client waits out
# A transfer holds the peer's only bench slot: a stalled client gives it back after this.
TRANSFER_SECONDS = 60.0
SERVER_CHUNK = 1024 * 1024  # bytes per write of bench/download
CLIENT_CHUNK = 256 * 1024  # the client's read buffer and upload writes
LATENCY_SAMPLES = 10


# -- the server end -----------------------------------------------------------------


class BenchRoutes:
    """``bench/download`` and ``bench/upload``: one transfer at a time, rate-limited per address."""

    def __init__(self, body_timeout: float) -> None:
        self.body_timeout = body_timeout  # an upload's body: some bytes this often
        self.busy = False
        self.clients: dict[str, collections.deque[float]] = {}
        self.block = os.urandom(SERVER_CHUNK)

    def _refused(self, request: web.BaseRequest) -> web.Response | None:
        """429 while another transfer runs or past PER_MINUTE for this client."""
        from aiohttp import web

        if self.busy:
            return web.Response(status=429, text="busy: one benchmark transfer at a time\n",
                                headers={"Retry-After": str(BUSY_RETRY_AFTER)})
        now = time.monotonic()
        client = request.remote or "-"
        recent = self.clients.setdefault(client, collections.deque())
        while recent and recent[0] < now - 60:
            recent.popleft()
        if len(recent) >= PER_MINUTE:
            wait = max(1, int(recent[0] + 60 - now) + 1)
            return web.Response(status=429, text=f"at most {PER_MINUTE} transfers a minute\n",
                                headers={"Retry-After": str(wait)})
        recent.append(now)
        if len(self.clients) > 10000:  # forget idle clients
            for key in [k for k, v in self.clients.items() if not v or v[-1] < now - 60]:
                del self.clients[key]
        return None

    async def download(self, request: web.BaseRequest) -> web.StreamResponse:
        from aiohttp import web

        raw = request.query.get("bytes", "")
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 12 or int(raw) > MAX_NET_BYTES:
            return web.Response(status=400, text=f"bytes must be a whole number from 0 to {MAX_NET_BYTES}\n")
        refused = self._refused(request)
        if refused is not None:
            return refused
        total = int(raw)
        self.busy = True
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream",
                                               "Cache-Control": "no-store"})
        response.content_length = total
        try:
            await response.prepare(request)
            async with asyncio.timeout(TRANSFER_SECONDS):
                if request.method != "HEAD":
                    block = memoryview(self.block)
                    left = total
                    while left > 0:
                        chunk = block[:min(left, SERVER_CHUNK)]
                        await response.write(chunk)
                        left -= len(chunk)
                await response.write_eof()
        except (ConnectionError, TimeoutError):
            pass  # the client left or stalled: the slot is freed below
        finally:
            self.busy = False
        return response

    async def upload(self, request: web.BaseRequest) -> web.Response:
        from aiohttp import web

        if request.content_length is not None and request.content_length > MAX_NET_BYTES:
            return _closing(web.Response(status=413, text=f"at most {MAX_NET_BYTES} bytes\n"))
        refused = self._refused(request)
        if refused is not None:
            return refused
        self.busy = True
        try:
            started = time.perf_counter()
            received = 0
            while True:
                left = started + TRANSFER_SECONDS - time.perf_counter()
                try:
                    async with asyncio.timeout(max(0.0, min(left, self.body_timeout))):
                        chunk = await request.content.readany()
                except ConnectionError:
                    return web.Response(status=400, text="upload interrupted\n")
                except TimeoutError:
                    return _closing(web.Response(status=408, text="upload too slow\n"))
                if not chunk:
                    break
                received += len(chunk)
                if received > MAX_NET_BYTES:
                    return _closing(web.Response(status=413, text=f"at most {MAX_NET_BYTES} bytes\n"))
            seconds = time.perf_counter() - started
        finally:
            self.busy = False
        body = json.dumps({"bytes": received, "seconds": round(seconds, 6)}).encode()
        return web.Response(body=body, headers={"Content-Type": "application/json", "Cache-Control": "no-store"})


def _closing(response: web.Response) -> web.Response:
    """The rest of the body is not read: the connection closes after the answer."""
    response.force_close()
    return response


# -- the client end -------------------------------------------------------------------


class PeerBusy(Exception):
    """The peer answered 429 with a short Retry-After: wait and try again."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


class PeerClient:
    """HTTP(S) to a peer slapmonitor with the standard library only.

    ``peer`` has ``scheme``, ``host``, ``port``, ``base_path`` ("/<secret>/")
    and ``label`` (host:port, never the secret). Every failure becomes one
    CollectError naming host:port (never the secret)."""

    def __init__(self, peer: Any, verify: bool, ca: str | None, remaining: Callable[[], float]) -> None:
        self.peer = peer
        self.remaining = remaining
        self.context: ssl.SSLContext | None = None
        if self.peer.scheme == "https":
            if verify:
                try:
                    self.context = ssl.create_default_context(cafile=ca)
                except ssl.SSLError as exc:
                    raise CollectError(f"cannot load the peer CA {ca}: {exc.reason or exc}",
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
        buffer = bytearray(CLIENT_CHUNK)
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
        chunk = os.urandom(CLIENT_CHUNK)
        with self.errors("bench/upload"):
            start = time.perf_counter()
            conn.putrequest("POST", f"{self.peer.base_path}bench/upload")
            conn.putheader("Content-Type", "application/octet-stream")
            conn.putheader("Content-Length", str(size))
            conn.endheaders()
            sent = 0
            try:
                while sent < size:
                    piece = chunk[: min(CLIENT_CHUNK, size - sent)]
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


def measure_net(client: PeerClient, repeat: int, size: int) -> dict[str, list[float]]:
    """``repeat`` runs of latency, download and upload of ``size`` bytes against the peer."""
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
        for _ in range(repeat):
            latency.append(client.latency(conn))
            size_got, seconds = with_retries(client.download, size)
            down.append(size_got / 1e6 / seconds)
            size_got, seconds = with_retries(client.upload, size)
            up.append(size_got / 1e6 / seconds)
    finally:
        conn.close()
    return {"net_download": down, "net_upload": up, "net_latency": latency}
