"""Start a real slapmonitor for a test and talk to it (reusable by other test modules).

    with running_server(data_dir) as server:
        status, headers, body = server.get("/")           # -> 200, ..., b"OK"
        server.url("server-log/")                          # http://127.0.0.1:PORT/<secret>/server-log/

The server is the real console script in a subprocess, on ``--port 0``; the
port is read from the one line it prints at start
(``slapmonitor: listening on URL [URL...] (N descriptors, at most M connections, ...)``).
"""

from __future__ import annotations

import http.client
import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from conftest import SCRIPTS

SECRET = "test-secret-0123456789abcdefABCDEF"
LISTENING = re.compile(r"listening on (\S+://\S+(?: \S+://\S+)*)")  # then "(N descriptors, ...)"


def has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@dataclass
class RunningServer:
    proc: subprocess.Popen
    urls: list[str]
    secret: str
    data_dir: Path
    tls: bool
    stderr: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.urls[0].rsplit(":", 1)[1].strip("/"))

    @property
    def base(self) -> str:
        return self.urls[0]

    def url(self, path: str = "", base: str | None = None) -> str:
        """URL of ``path`` under the secret (``base`` picks another listening URL)."""
        return f"{base or self.base}{self.secret}/{path}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context trusting the server's self-signed certificate (hostname checked)."""
        if not self.tls:
            return None
        return ssl.create_default_context(cafile=str(self.data_dir / ".slapmonitor.crt"))

    def connection(self, host: str = "127.0.0.1") -> http.client.HTTPConnection:
        if self.tls:
            return http.client.HTTPSConnection(host, self.port, timeout=30, context=self.ssl_context())
        return http.client.HTTPConnection(host, self.port, timeout=30)

    def get(self, raw_path: str, headers: dict | None = None, method: str = "GET", host: str = "127.0.0.1",
            body: bytes | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One request with ``raw_path`` sent exactly as given (no client normalisation)."""
        conn = self.connection(host)
        try:
            conn.putrequest(method, raw_path, skip_accept_encoding=True)
            for name, value in (headers or {}).items():
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        finally:
            conn.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise


def start_server(data_dir: Path, *args: str, hosts: tuple[str, ...] = ("127.0.0.1",), tls: bool | None = False,
                 secret: str | None = SECRET, command: str = "slapos-collect", timeout: float = 30,
                 env: dict | None = None, prefix: tuple[str, ...] = ()) -> RunningServer:
    """``prefix``: a command the server runs under (``prlimit --nofile=1024:1024 --``)."""
    cmd = [*prefix, str(SCRIPTS / command)]
    if command == "slapos-collect":
        cmd.append("serve")
    cmd += ["--data-dir", str(data_dir), "--port", "0"]
    for host in hosts:
        cmd += ["--host", host]
    if secret is not None:
        cmd += ["--secret", secret]
    if tls is False:  # None: as the options or config file say
        cmd.append("--no-tls")
    cmd += list(args)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **(env or {})))
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    collected: list[str] = []
    try:
        while True:
            line = lines.get(timeout=timeout)
            if line is None:
                proc.wait(10)
                raise AssertionError(f"server exited ({proc.returncode}): {collected}")
            collected.append(line)
            match = LISTENING.search(line)
            if match:
                break
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        raise
    urls = match.group(1).split()
    server = RunningServer(proc, urls, secret or "", Path(data_dir), urls[0].startswith("https:"), collected)

    def keep() -> None:  # later lines (warnings) for assertions
        while (line := lines.get()) is not None:
            server.stderr.append(line)

    threading.Thread(target=keep, daemon=True).start()
    return server


@contextmanager
def running_server(data_dir: Path, *args: str, **kwargs) -> Iterator[RunningServer]:
    server = start_server(data_dir, *args, **kwargs)
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.stop()
