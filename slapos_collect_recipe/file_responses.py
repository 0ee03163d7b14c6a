"""HTTP responses for the data dir's files: content types, validators, one
conditional and range planner, and the two ways a body goes out.

``plan`` decides every answer from the request's headers and the file's
size and validators (200, 206, 304 or 416, with the byte range and the
headers); both send paths follow it:

- small files (up to ``SMALL_FILE``) come from an in-memory cache keyed by
  (inode, size, mtime), their headers precomputed;
- larger ones go out with ``sendfile`` on worker threads, so that concurrent
  downloads use every core (the socket stays non-blocking: a slow client
  never holds a thread); under TLS a thread reads them and the event loop
  encrypts.

``collector.db`` is never served live: a consistent copy is made with SQLite's
backup API (``Store.backup_to``), streamed, and deleted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import logging
import mimetypes
import os
import sqlite3
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import formatdate, parsedate
from pathlib import Path
from typing import Any

from aiohttp import web

from .connections import hard_close
from .datafiles import DB_COPY_PREFIX

log = logging.getLogger("slapos_collect")

SMALL_FILE = 512 * 1024  # served from memory up to this size
CACHE_BYTES = 32 * 1024 * 1024
SNAPSHOTS_AT_ONCE = 2  # concurrent collector.db copies
COPY_CHUNK = 256 * 1024  # file reads under TLS

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


def content_type(name: str) -> str:
    suffix = os.path.splitext(name)[1].lower()
    known = TYPES.get(suffix)
    if known:
        return known
    guessed = mimetypes.guess_type(name, strict=False)[0]
    if guessed and guessed.startswith("text/"):
        return guessed + "; charset=utf-8"
    return guessed or "application/octet-stream"


def file_headers(name: str, st: os.stat_result) -> tuple[dict[str, str], str, str]:
    """A file's response headers, its ETag and its Last-Modified."""
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


# -- the planner ----------------------------------------------------------------


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


def _http_date(value: str) -> float | None:
    """An HTTP date as a POSIX timestamp (UTC), None when it is not one."""
    parsed = parsedate(value)
    if parsed is None:
        return None
    try:
        return datetime.datetime(*parsed[:6], tzinfo=datetime.UTC).timestamp()
    except ValueError:
        return None


def is_current(request_headers: Mapping[str, str], etag: str, mtime: int) -> bool:
    """The client's copy is current (304): If-None-Match, else If-Modified-Since."""
    match = request_headers.get("If-None-Match")
    if match is not None:
        return etag_matches(match, etag)
    since = request_headers.get("If-Modified-Since")
    if since is not None:
        stamp = _http_date(since)
        return stamp is not None and mtime <= stamp
    return False


@dataclass(slots=True)  # not frozen: that costs a microsecond a request
class Plan:
    """What to answer: ``status`` with ``headers``, and for 200 and 206 the
    body's ``count`` bytes from ``start``."""

    status: int
    headers: Mapping[str, str]
    start: int = 0
    count: int = 0


def plan(request_headers: Mapping[str, str], size: int, headers: Mapping[str, str], etag: str,
         last_modified: str, mtime: int, ranges: bool = True) -> Plan:
    """The answer for a file of ``size`` bytes whose response ``headers``
    carry ``etag`` and ``last_modified`` ("" when it has none: no conditional
    then), modified at ``mtime`` (whole seconds).

    304 when the client's copy is current; with ``ranges``, one ``Range``
    (honoured only when ``If-Range`` is absent or names this ETag or date)
    gives 206, or 416 when unsatisfiable; malformed or multiple ranges are
    ignored (200, the whole file)."""
    if etag and last_modified and is_current(request_headers, etag, mtime):
        return Plan(304, {"ETag": etag, "Last-Modified": last_modified})
    header = request_headers.get("Range") if ranges else None
    if header is not None:
        if_range = request_headers.get("If-Range")
        # If-Range names a validator of this file; one without validators is sent whole.
        honoured = if_range is None or (if_range.strip() != "" and if_range.strip() in (etag, last_modified))
        span = parse_range(header, size) if honoured else None
        if span is False:
            return Plan(416, {"Content-Range": f"bytes */{size}", **SECURITY_HEADERS})
        if span:
            start, end = span
            return Plan(206, dict(headers, **{"Content-Range": f"bytes {start}-{end}/{size}"}), start,
                        end - start + 1)
    return Plan(200, headers, 0, size)


# -- sending ----------------------------------------------------------------------


@dataclass
class CachedFile:
    key: tuple[int, int, int]
    body: bytes
    headers: dict[str, str]
    etag: str
    last_modified: str
    mtime: int


class FileSender:
    """Sends the data dir's files: the small-file cache, sendfile, the store's copies."""

    def __init__(self, root: str, send_timeout: float | None) -> None:
        self.root = root
        self.send_timeout = send_timeout
        self.cache: collections.OrderedDict[str, CachedFile] = collections.OrderedDict()
        self.cache_bytes = 0
        self.snapshots = asyncio.Semaphore(SNAPSHOTS_AT_ONCE)

    async def send(self, request: web.BaseRequest, real: str, st: os.stat_result) -> web.StreamResponse | None:
        """The regular file ``real`` (``st`` its stat); None when it cannot be read (404)."""
        if st.st_size <= SMALL_FILE:
            return self.send_small(request, real, st)
        try:
            handle = open(real, "rb")
        except OSError:
            return None
        with handle:
            st = os.fstat(handle.fileno())
            headers, etag, last_modified = file_headers(real, st)
            return await self.send_large(request, handle, st, headers, etag, last_modified)

    def send_small(self, request: web.BaseRequest, real: str, st: os.stat_result) -> web.Response | None:
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self.cache.get(real)
        if cached is None or cached.key != key:
            cached = self._load(real)
            if cached is None:
                return None
        else:
            self.cache.move_to_end(real)
        body = cached.body
        answer = plan(request.headers, len(body), cached.headers, cached.etag, cached.last_modified, cached.mtime)
        if answer.status == 200:
            return web.Response(body=body, headers=answer.headers)
        if answer.status == 206:
            return web.Response(status=206, body=body[answer.start:answer.start + answer.count],
                                headers=answer.headers)
        return web.Response(status=answer.status, headers=answer.headers)

    def _load(self, real: str) -> CachedFile | None:
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
                         headers: dict[str, str], etag: str, last_modified: str,
                         ranges: bool = True) -> web.StreamResponse:
        """Headers from Python, the body by the kernel (sendfile; a thread under TLS)."""
        answer = plan(request.headers, st.st_size, headers, etag, last_modified, int(st.st_mtime), ranges)
        if answer.status not in (200, 206):
            return web.Response(status=answer.status, headers=answer.headers)
        start, count = answer.start, answer.count
        response = web.StreamResponse(status=answer.status, headers=answer.headers)
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
                        await send_file_threaded(sock.fileno(), handle.fileno(), start, count, self.send_timeout)
                    else:
                        await asyncio.get_running_loop().sendfile(transport, handle, start, count)
                else:  # no sendfile through TLS: read in a thread, encrypt here
                    await _copy(response, handle, start, count)
            await response.write_eof()
        except ConnectionError:
            # The client left mid-transfer or reads nothing: nothing to answer, nothing to
            # log, and the truncated answer must not look complete on a kept connection.
            if request.transport is not None:
                hard_close(request.transport)
        return response

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
            return await self.send_large(request, handle, st, headers, "", "", ranges=False)

    def _snapshot(self, real: str) -> str:
        from .store import Store

        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=DB_COPY_PREFIX)
        os.close(fd)
        try:
            with Store(real, readonly=True) as store:
                store.backup_to(tmp)
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp


def cleanup_snapshots(root: Path) -> None:
    """Copies of collector.db left by a killed server."""
    for leftover in root.glob(DB_COPY_PREFIX + "*"):
        with contextlib.suppress(OSError):
            leftover.unlink()


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
