"""slapmonitor's routes: the probe, the secret prefix, the data dir, the dashboard,
``metrics``, ``api/partitions`` and the benchmark peer routes.

``/`` answers ``OK`` (the availability probe); everything else lives under
``/<secret>/``. A wrong secret gets the same 404 as any unknown path. One
handler (``Monitor.handle``) dispatches on the path, with no router nor
middleware: the probe's fast path. What a file's answer is (validators,
ranges, sendfile) is ``file_responses``'s.
"""

from __future__ import annotations

import asyncio
import datetime
import hmac
import html
import importlib.resources
import json
import logging
import os
import sqlite3
import stat
import urllib.parse
from pathlib import Path
from typing import Any

from aiohttp import web

from . import latest, metrics
from .bench_peer import BenchRoutes
from .datafiles import DB_NAME, DB_SIDE_FILES
from .errors import CollectError
from .file_responses import SECURITY_HEADERS, FileSender, content_type, etag_matches

log = logging.getLogger("slapos_collect")

DASHBOARD_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
NOT_FOUND_BODY = b"404: Not Found"


class Monitor:
    """The route handlers for one data dir (the file cache is its ``FileSender``'s, the
    benchmark slot and rate limits its ``BenchRoutes``')."""

    def __init__(self, data_dir: Path, secret: str, send_timeout: float | None, body_timeout: float) -> None:
        self.data_dir = data_dir
        self.root = os.path.realpath(data_dir)
        self.secret = secret.encode()
        self.files = FileSender(self.root, send_timeout)
        self.registry = metrics.build_registry(data_dir)
        self.bench = BenchRoutes(body_timeout)
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
            return await self.bench.upload(request)
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
            return await self.bench.download(request)
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
            if not part or part[0] == "." or part in DB_SIDE_FILES or "\x00" in part:
                return None
        real = os.path.realpath(os.path.join(self.root, *parts))
        if real == self.root:
            return real, []
        if not real.startswith(self.root + os.sep):
            return None  # a symlink pointing outside
        inside = real[len(self.root) + 1:].split(os.sep)
        if any(p[0] == "." or p in DB_SIDE_FILES for p in inside):
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
            return await self.files.send_db_copy(request, real)
        response = await self.files.send(request, real, st)
        return response if response is not None else self.not_found()

    def listing(self, request: web.BaseRequest, real: str, rel: str) -> web.Response:
        entries = []
        try:
            scan = list(os.scandir(real))
        except OSError:
            return self.not_found()
        for entry in scan:
            name = entry.name
            if name[0] == "." or name in DB_SIDE_FILES:
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
            store = latest.open_store(self.data_dir)
            if store is None:
                return {"date": None, "time": None, "partitions": []}
            with store:
                return latest.current_partitions(store)

        try:
            body = json.dumps(await asyncio.to_thread(read)).encode()
        except sqlite3.Error as exc:
            log.warning("cannot read the store: %s", exc)
            return web.Response(status=503, text="the store cannot be read right now\n",
                                headers={"Retry-After": "60"})
        return web.Response(body=body, headers={"Content-Type": "application/json",
                                                "Cache-Control": "no-store", **SECURITY_HEADERS})
