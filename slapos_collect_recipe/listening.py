"""Where slapmonitor listens and who may talk to it: the URL secret, the TLS pair
and context, the listening sockets and the URLs they answer on."""

from __future__ import annotations

import datetime
import errno
import ipaddress
import logging
import re
import secrets
import socket
import ssl
from pathlib import Path

from .atomic import write_atomic
from .errors import CollectError

log = logging.getLogger("slapos_collect")

MIN_SECRET = 22  # characters of the URL-safe alphabet: >= 128 bits
SECRET_RE = re.compile(r"[A-Za-z0-9_-]+")


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
