"""The buildout recipes of the slapos-collect software release.

- ``slapos_collect_recipe`` (``Recipe``): one partition's collector and
  slapmonitor: config file, cron entries, logrotate config, service scripts,
  secret, port, and the monitor URLs as options for the profile to publish.
- ``slapos_collect_recipe:release`` (``Release``): where this egg's templates
  are, for ``software.cfg`` (upstream zc.buildout has no
  ``_profile_base_location_``).
- ``slapos_collect_recipe:slapconfiguration`` (``SlapConfiguration``, in
  slapconfiguration.py): the partition's parameters as string options.

The recipes only write files: they never import the sampling code. Their
options are read with settings.py's kinds (``from_options``), a bad one
failing buildout with one ``UserError`` line.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import socket
import string
import sys
from pathlib import Path

import zc.buildout

from . import config, schedule
from .atomic import write_atomic
from .datafiles import DB_NAME
from .settings import (
    Setting,
    SettingError,
    absolute_path,
    boolean,
    choice,
    from_options,
    integer,
    ip_address,
    label_and_path,
    lines,
    parse,
    words,
)

TEMPLATES = Path(__file__).resolve().parent / "templates"
DEFAULT_PORT_BASE = 9780
SECRET_FILE = "slapmonitor.secret"
PORT_FILE = "slapmonitor.port"


# --- files ----------------------------------------------------------------

def render(name: str, **values: object) -> str:
    """Fill ``templates/<name>`` (``string.Template``: ``${key}``, ``$$`` for ``$``)."""
    text = (TEMPLATES / name).read_text(encoding="utf-8")
    try:
        return string.Template(text).substitute({k: str(v) for k, v in values.items()})
    except KeyError as exc:  # a template/recipe mismatch: a bug, not user input
        raise zc.buildout.UserError(f"template {name} needs the value {exc}") from None


def make_dir(path: str | os.PathLike, mode: int = 0o750) -> None:
    """Create ``path`` and its parents; a new directory gets ``mode``."""
    path = Path(path)
    if not path.is_dir():
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        os.chmod(path, mode)


def port_is_free(port: int, hosts: list[str]) -> bool:
    """True when ``port`` can be bound on every address of ``hosts``."""
    for host in hosts:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


# --- options --------------------------------------------------------------------

def _reference(raw: str) -> str:
    value = raw.strip()
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
        raise ValueError(f"must be letters, digits, . _ -, not {value!r}")
    return value


PARTITION_ROOT = Setting("partition-root", absolute_path)
PARTITION_REFERENCE = Setting("partition-reference", _reference)
COLLECT_BINARY = Setting("slapos-collect-binary", absolute_path, required=True)
SLAPMONITOR_BINARY = Setting("slapmonitor-binary", absolute_path)
LOGROTATE_BINARY = Setting("logrotate-binary", absolute_path, "/usr/sbin/logrotate")
DCRON_BINARY = Setting("dcron-binary", absolute_path, "")
FREQUENCY = Setting("frequency", integer(1, 59), 1)
KEEP_DAYS = Setting("keep-days", integer(1, 3650), config.DEFAULT_KEEP_DAYS)
BENCH = Setting("bench", boolean, False)
LOGROTATE_KEEP = Setting("logrotate-keep", integer(1, 365), 7)
COLLECT = Setting("collect", choice("partition", "node"), "partition")
COLLECT_BY = Setting("collect-by", choice("auto", "user", "directory"), "auto")
USERS = Setting("users", words(), ())
PARTITIONS = Setting("partitions", lines(label_and_path("LABEL=/absolute/path")), ())
CGROUPS = Setting("cgroups", lines(label_and_path("LABEL = /absolute/path")), ())
CGROUP = Setting("cgroup", absolute_path, "")
SLAPOS_CFG = Setting("slapos-cfg", absolute_path, "/etc/opt/slapos/slapos.cfg")
IPV6 = Setting("ipv6", words(ip_address), ())
IPV4 = Setting("ipv4", words(ip_address), ())
NETWORK_ADDRESSES = Setting("network-addresses", words(ip_address), ())
PORT_BASE = Setting("port-base", integer(1024, 65000), DEFAULT_PORT_BASE)
PORT = Setting("port", integer(1, 65535))
DATA_DIR = Setting("data-dir")
# The same keys, kinds and defaults as in the collector's own config.
MEMORY_CYCLE, PROCESS_ACCOUNTING, NETWORK_MODE = config.MEMORY_CYCLE, config.PROCESS_ACCOUNTING, config.NETWORK_MODE


TEMPLATE_ATTRIBUTES = (
    "reference data_dir process_accounting slapos_cfg keep_days memory_cycle computer_id network_accounting "
    "addresses port collect_binary slapmonitor_binary logrotate_binary dcron_binary cron_d cron_log_dir rotate"
).split()


def partition_number(reference: str) -> int | None:
    """The N of a partition reference such as ``slappartN``."""
    match = re.search(r"(\d+)$", reference)
    return int(match.group(1)) if match else None


class Recipe:
    """One partition's slapos-collect: see README.md, "Deploying with SlapOS"."""

    def __init__(self, buildout, name: str, options) -> None:
        self.name = name
        self.options = options
        try:
            self._read_options(buildout, options)
        except SettingError as exc:
            raise zc.buildout.UserError(str(exc)) from None
        host = self.ipv6[0] if self.ipv6 else self.ipv4[0]
        netloc = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        base = f"https://{netloc}/"
        options["data-dir"] = str(self.data_dir)
        options["collector-db"] = str(self.data_dir / DB_NAME)
        options["config-file"] = str(self.paths["config_file"])
        options["secret-file"] = str(self.paths["secret_file"])
        options["cert"] = str(self.paths["cert"])
        options["key"] = str(self.paths["key"])
        options["cron-d"] = str(self.cron_d)
        options["host"] = " ".join(self.hosts)
        options["port"] = str(self.port)
        options["monitor-base-url"] = base
        options["monitor-url"] = f"{base}{self.secret}/server-log/"
        options["monitor-dashboard-url"] = f"{base}{self.secret}/"
        options["monitor-metrics-url"] = f"{base}{self.secret}/metrics"

    def _read_options(self, buildout, options) -> None:
        """Every option, checked (a bad one: SettingError), and the paths they imply."""
        def opt(setting: Setting, default: object = None):
            return from_options(setting, options, default)

        root = Path(parse(PARTITION_ROOT, options.get(PARTITION_ROOT.key, "").strip()
                          or buildout["buildout"]["directory"], f"option {PARTITION_ROOT.key}"))
        self.root = root
        self.reference = parse(PARTITION_REFERENCE, options.get(PARTITION_REFERENCE.key, "").strip() or root.name,
                               f"option {PARTITION_REFERENCE.key}")
        self.computer_id = opt(config.COMPUTER_ID)

        self.collect_binary = opt(COLLECT_BINARY)
        self.slapmonitor_binary = opt(SLAPMONITOR_BINARY, os.path.join(os.path.dirname(self.collect_binary),
                                                                       "slapmonitor"))
        self.logrotate_binary = opt(LOGROTATE_BINARY)
        self.dcron_binary = opt(DCRON_BINARY)

        self.frequency = opt(FREQUENCY)
        self.keep_days = opt(KEEP_DAYS)
        self.memory_cycle = opt(MEMORY_CYCLE)
        self.bench = opt(BENCH)
        self.rotate = opt(LOGROTATE_KEEP)

        # What to collect.
        collect = opt(COLLECT)
        self.users: list[str] = list(opt(USERS))
        self.partitions: list[str] = list(opt(PARTITIONS))
        # Partition accounting: cgroups to read (LABEL = /path per line; ``cgroup`` is this
        # partition's own) and kernel process accounting.
        self.cgroups: list[str] = [f"{label.strip()} = {path.strip()}"
                                   for label, _, path in (spec.partition("=") for spec in opt(CGROUPS))]
        own_cgroup = opt(CGROUP)
        self.process_accounting = opt(PROCESS_ACCOUNTING)
        self.slapos_cfg = ""
        if collect == "node":
            self.slapos_cfg = opt(SLAPOS_CFG)
        elif not self.users and not self.partitions:
            by = opt(COLLECT_BY)
            if by == "auto":
                by = "directory" if self._users_are_shared() else "user"
            if by == "user":
                self.users = [pwd.getpwuid(os.getuid()).pw_name]
            else:
                self.partitions = [f"{self.reference}={root}"]
        if own_cgroup:
            if collect == "node" or len(self.users) + len(self.partitions) != 1:
                raise zc.buildout.UserError("option cgroup names the cgroup of this partition alone: "
                                            "use cgroups (LABEL = /path per line) for several")
            label = self.users[0] if self.users else self.partitions[0].partition("=")[0].strip()
            self.cgroups.append(f"{label} = {own_cgroup}")

        # The slapmonitor: addresses, port, secret.
        self.ipv6 = list(opt(IPV6))
        self.ipv4 = list(opt(IPV4))
        self.hosts = self.ipv6 + self.ipv4
        self._network_options(opt, collect)
        if not self.hosts:
            raise zc.buildout.UserError("options ipv6 and ipv4 are both empty: slapmonitor needs an address")
        self.port_base = opt(PORT_BASE)

        # Paths.
        self.etc = root / "etc"
        self.cron_d = self.etc / "cron.d"
        self.service_d = self.etc / "service"
        self.log_dir = root / "var" / "log"
        self.cron_log_dir = self.log_dir / "cron"
        self.run_dir = root / "var" / "run"
        self.ssl_dir = self.etc / "ssl"
        self.data_dir = Path(opt(DATA_DIR, root / "srv" / "collect"))
        self.paths = {
            "config_file": self.etc / "slapos-collect.cfg",
            "secret_file": self.etc / SECRET_FILE,
            "port_file": self.etc / PORT_FILE,
            "cert": self.ssl_dir / "slapmonitor.crt",
            "key": self.ssl_dir / "slapmonitor.key",
            "collect_log": self.log_dir / "slapos-collect.log",
            "bench_log": self.log_dir / "slapos-collect-bench.log",
            "monitor_log": self.log_dir / "slapmonitor.log",
            "access_log": self.log_dir / "slapmonitor-access.log",
            "logrotate_conf": self.etc / "logrotate.conf",
            "logrotate_state": root / "var" / "logrotate.status",
            "cron_pid": self.run_dir / "crond.pid",
        }

        self.port = self._port(opt(PORT))
        self.secret = self._secret()

    def _network_options(self, opt, collect: str) -> None:
        """This partition's own addresses (ipv4, ipv6 and network-addresses) for its traffic figures."""
        self.network_accounting = opt(NETWORK_MODE)
        extra = opt(NETWORK_ADDRESSES)
        me = pwd.getpwuid(os.getuid()).pw_name
        # The label this partition has in its own config: its user, or its reference when by directory;
        # a node's collector takes the other partitions' addresses from the computer XML.
        if collect == "node" or me in self.users:
            label = me
        elif any(spec.partition("=")[0].strip() == self.reference for spec in self.partitions):
            label = self.reference
        else:
            label = ""
        own = [] if collect == "node" else self.ipv4 + self.ipv6
        own += [a for a in extra if a not in own]
        self.addresses = f"\n  {label} = {' '.join(own)}" if label and own else ""

    # -- state kept across buildout runs ---------------------------------

    def _users_are_shared(self) -> bool:
        """True when this user also owns the folder holding the partitions.

        On a SlapOS node each partition has its own user and the instance root
        belongs to root; on a test node or a local master one user owns all.
        """
        try:
            return self.root.parent.stat().st_uid == os.getuid()
        except OSError:
            return True

    def _port(self, requested: int | None) -> int:
        """The requested port, or the one chosen at first install and kept.

        Partitions of a test node share their addresses: the first choice is
        port-base + the partition number, then any free port.
        """
        self.port_requested = requested is not None
        if requested is not None:
            return requested
        stored = self._stored_port()
        if stored is not None:
            return stored
        number = partition_number(self.reference)
        first = self.port_base + (number % 1000 if number is not None else 0)
        candidates = [first] + [p for p in range(self.port_base, self.port_base + 1000) if p != first]
        # A sibling partition may have chosen its port without listening yet.
        claimed = self._sibling_ports()
        for port in candidates:
            if port not in claimed and port_is_free(port, self.hosts):
                return port
        raise zc.buildout.UserError(
            f"no free port from {self.port_base} to {self.port_base + 999} on {' '.join(self.hosts)}: set option port")

    def _sibling_ports(self) -> set[int]:
        """Ports kept by the other partitions of this folder (a test node)."""
        ports = set()
        try:
            siblings = [p for p in self.root.parent.iterdir() if p != self.root]
        except OSError:
            return ports
        for sibling in siblings:
            try:
                ports.add(int((sibling / "etc" / PORT_FILE).read_text().strip()))
            except (OSError, ValueError):
                continue
        return ports

    def _secret(self) -> str:
        """The slapmonitor secret: read back, or made now and written by install()."""
        try:
            value = self.paths["secret_file"].read_text().strip()
        except OSError:
            value = ""
        return value or secrets.token_urlsafe(32)

    def _keep_state(self) -> None:
        """Write the secret and the chosen port once: they outlive reinstalls."""
        make_dir(self.etc)
        secret_file = self.paths["secret_file"]
        if not secret_file.exists() or not secret_file.read_text().strip():
            write_atomic(secret_file, self.secret + "\n", 0o600)
        if not self.port_requested and self._stored_port() is None:
            write_atomic(self.paths["port_file"], f"{self.port}\n", 0o644)

    def _stored_port(self) -> int | None:
        try:
            return int(self.paths["port_file"].read_text().strip())
        except (OSError, ValueError):
            return None

    # -- install ---------------------------------------------------------

    def bench_minute(self) -> int:
        """A minute of the hour spread over computers and partitions."""
        return schedule.bench_minute(self.computer_id, self.reference)

    def install(self) -> list[str]:
        for directory in (self.etc, self.cron_d, self.service_d, self.ssl_dir, self.log_dir,
                          self.cron_log_dir, self.run_dir, self.root / "var", self.root / "srv"):
            make_dir(directory)
        make_dir(self.data_dir, 0o750)
        self._keep_state()

        values: dict[str, object] = dict(self.paths)
        # The templates' ${name} is this recipe's attribute of that name, or one of these:
        values.update({name: getattr(self, name) for name in TEMPLATE_ATTRIBUTES})
        values.update(
            users=" ".join(self.users),
            partitions="".join(f"\n  {spec}" for spec in self.partitions),
            cgroups="".join(f"\n  {spec}" for spec in self.cgroups),
            host=" ".join(self.hosts),
            crontabs=self.etc / "crontabs",
            cron_stamps=self.root / "var" / "cron-stamps",
            schedule="* * * * *" if self.frequency == 1 else f"*/{self.frequency} * * * *",
            minute=self.bench_minute(),
        )
        files: list[tuple[Path, str, int]] = [
            (self.paths["config_file"], render("slapos-collect.cfg.in", **values), 0o640),
            (self.cron_d / "slapos-collect", render("cron-collect.in", **values), 0o644),
            (self.cron_d / "logrotate", render("cron-logrotate.in", **{**values, "minute": 5}), 0o644),
            (self.paths["logrotate_conf"], render("logrotate.conf.in", **values), 0o644),
            (self.service_d / "slapmonitor", render("service-slapmonitor.in", **values), 0o750),
        ]
        if self.bench:
            files.append((self.cron_d / "slapos-collect-bench", render("cron-bench.in", **values), 0o644))
        else:
            self._remove(self.cron_d / "slapos-collect-bench")
        if self.dcron_binary:
            make_dir(self.etc / "crontabs")
            make_dir(self.root / "var" / "cron-stamps")
            files.append((self.service_d / "crond", render("service-dcron.in", **values), 0o750))
        else:
            files.append((self.service_d / "crond", render("service-cron.in", **values), 0o750))
        for path, text, mode in files:
            write_atomic(path, text, mode)
        # The secret, the port, the data and the logs are not returned: buildout
        # would delete them when a changed parameter reinstalls the part.
        return [str(path) for path, _, _ in files]

    def update(self) -> list[str]:
        return self.install()

    @staticmethod
    def _remove(path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


class Release:
    """Where the release's templates and sources are, for ``software.cfg``."""

    def __init__(self, buildout, name: str, options) -> None:
        options["templates"] = str(TEMPLATES)
        # The folder that holds the package: a checkout for a develop egg.
        options["source"] = str(Path(__file__).resolve().parent.parent)
        options["python"] = sys.executable
        try:
            for setting in (LOGROTATE_BINARY, DCRON_BINARY):
                from_options(setting, options)
        except SettingError as exc:
            raise zc.buildout.UserError(str(exc)) from None

    def install(self) -> list[str]:
        return []

    update = install
