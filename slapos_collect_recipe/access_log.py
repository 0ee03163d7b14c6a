"""The slapmonitor's access log: combined format, buffered, flushed every second,
reopened when logrotate moves the file; the URL secret never reaches it."""

from __future__ import annotations

import contextlib
import logging
import os
import time

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .errors import CollectError

log = logging.getLogger("slapos_collect")

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
