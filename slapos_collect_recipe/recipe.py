"""The buildout recipes of the slapos-collect software release.

- ``slapos_collect_recipe`` (``Recipe``): one partition's collector and
  slapmonitor: config file, cron entries, logrotate config, service scripts,
  secret, port, and the monitor URLs as options for the profile to publish.
- ``slapos_collect_recipe:release`` (``Release``): where this egg's templates
  are, for ``software.cfg`` (upstream zc.buildout has no
  ``_profile_base_location_``).
- ``slapos_collect_recipe:slapconfiguration`` (``SlapConfiguration``): the
  partition's parameters, validated against the instance JSON schema, as
  string options (upstream zc.buildout refuses slapos.cookbook's sets and
  dicts: "Option values must be strings").

The recipes only write files: they never import the sampling code. Their
options are read with settings.py's kinds (``from_options``), a bad one
failing buildout with one ``UserError`` line.

One module of about 680 lines: the three recipes are what the egg's
``zc.buildout`` entry points name, and they share its templates, option
kinds and file helpers; each is a class of its own.
"""

from __future__ import annotations

import ipaddress
import json
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
COMPUTER_ID = Setting("computer-id", default="")
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
MEMORY_CYCLE, PROCESS_ACCOUNTING, NETWORK_ACCOUNTING = config.MEMORY_CYCLE, config.PROCESS_ACCOUNTING, config.NETWORK_MODE


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
        self.computer_id = opt(COMPUTER_ID)

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
        self.network_accounting = opt(NETWORK_ACCOUNTING)
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


class SlapConfiguration:
    """The partition's parameters and addresses, validated, as string options.

    With ``url`` (the master's), they come from the master through slapos.slap's
    public client API, read as ``slapos.cookbook:slapconfiguration.serialised``
    reads them (same options, the partition's ``.slapos-resource`` included);
    without it (a test node), from the options ``parameters`` (JSON), ``ipv4``,
    ``ipv6`` and ``partition``. Every property of the schema ``jsonschema``
    becomes an option ``configuration.<name>`` (its default, or empty).
    An invalid parameter fails the instance with one readable message, also
    reported to the master.

    Not slapos.cookbook's own ``slapconfiguration.jsonschema`` (1.0.514): under
    upstream zc.buildout its base class fails before validating ("Option values
    must be strings": it sets lists, sets and dicts), it needs a master (no
    test-node path), it turns only ``True``/``False`` into booleans, leaves
    properties without a default unset, and words errors differently
    (``$['keep-days']: ...`` on lines of their own). README.md, "The buildout
    recipes".
    """

    def __init__(self, buildout, name: str, options) -> None:
        self.options = options
        schema_path = options.get("jsonschema", "").strip() or str(TEMPLATES / "instance-input-schema.json")
        try:
            schema = json.loads(Path(schema_path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise zc.buildout.UserError(f"cannot read the instance schema {schema_path}: {exc}") from None
        partition = None
        values: dict = {}
        if options.get("url", "").strip():
            partition = _master_partition(options)
            try:
                values = partition_values(partition.getInstanceParameterDict(), partition.getState(),
                                          partition.getInstanceGuid())
            except ValueError as exc:
                raise _refusal(partition, name, f"Invalid parameters: {exc}") from None
            instance_root = buildout["buildout"]["directory"]
            values["storage-dict"] = _storage_links(options.get("storage-home", "").strip(), instance_root,
                                                    values.get("slap-computer-partition-id", ""))
            for key, value in resource_values(instance_root).items():
                if key not in values and key not in options:  # the master's word first
                    values[key] = value
        else:
            for key in ("key", "cert", "computer"):  # a test node has no master to reach
                options.get(key, "")
            raw = options.get("parameters", "").strip() or "{}"
            try:
                parameters = json.loads(raw)
            except ValueError as exc:
                raise zc.buildout.UserError(f"option parameters is not JSON: {exc}") from None
            values = {"configuration": parameters, "ipv4": options.get("ipv4", "").split(),
                      "ipv6": options.get("ipv6", "").split(),
                      "slap-computer-partition-id": options.get("partition", "").strip()}
        parameters = values.get("configuration")
        if not isinstance(parameters, dict):
            parameters = {}
        try:
            parameters = validate(schema, parameters)
        except ValueError as exc:
            raise _refusal(partition, name, f"Invalid parameters: {exc}") from None
        values["configuration"] = parameters
        for key, value in values.items():
            if key == "configuration":
                continue
            options[key] = _option_string(value)
        options["configuration"] = json.dumps(parameters, sort_keys=True)
        for key in schema.get("properties", {}):
            options[f"configuration.{key}"] = _option_string(parameters.get(key, ""))
        ipv4, ipv6 = sorted(values.get("ipv4") or []), sorted(values.get("ipv6") or [])
        options["ipv4"], options["ipv6"] = " ".join(ipv4), " ".join(ipv6)
        options["ipv4-random"] = ipv4[0] if ipv4 else ""
        options["ipv6-random"] = ipv6[0] if ipv6 else ""

    def install(self) -> list[str]:
        return []

    update = install


# What the master sends next to the parameters, each published as an option
# (``_`` becoming ``-``), as slapos.cookbook's slapconfiguration does.
_MASTER_KEYS = ("slap_software_type", "slap_computer_partition_id", "slap_computer_id",
                "slap_software_release_url", "slave_instance_list", "timestamp")
_TITLES = (("instance_title", "UNKNOWN Instance"), ("root_instance_title", "UNKNOWN"),
           ("root_instance_short_title", "UNKNOWN"))
# slapos.format.Partition.resource_file: what ``slapos node format`` wrote of the partition.
RESOURCE_FILE = ".slapos-resource"


def _master_partition(options):
    """This partition, from the master (slapos.slap's public client API)."""
    import slapos.slap

    slap = slapos.slap.slap()
    slap.initializeConnection(options["url"].strip(), options.get("key", "").strip() or None,
                              options.get("cert", "").strip() or None)
    return slap.registerComputerPartition(options.get("computer", "").strip(),
                                          options.get("partition", "").strip())


def partition_values(parameter_dict: dict, state: str, guid: str) -> dict:
    """The options of a partition the master describes with ``parameter_dict``.

    ``configuration`` holds the requested parameters: the JSON under ``_``
    (``json-in-xml`` serialisation) or else the remaining keys as they came.
    ``ipv4``/``ipv6`` are sets of the partition's addresses.
    """
    parameters = dict(parameter_dict)
    values: dict = {"instance-state": state}
    for key in _MASTER_KEYS:
        if key in parameters:
            values[key.replace("_", "-")] = parameters.pop(key)
    for key, default in _TITLES:
        values[key.replace("_", "-")] = parameters.pop(key, default)
    values["instance-guid"] = guid
    ipv4, ipv6 = set(), set()
    for _interface, address in parameters.pop("ip_list", None) or []:
        try:
            version = ipaddress.ip_address(address).version
        except ValueError:
            continue
        (ipv4 if version == 4 else ipv6).add(address)
    values["ipv4"], values["ipv6"] = ipv4, ipv6
    for key in ("full_ip_list", "full_address_list"):  # routes: not used here
        parameters.pop(key, None)
    if "_" in parameters:
        try:
            values["configuration"] = json.loads(parameters["_"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the JSON under _ does not parse: {exc}") from None
    else:
        values["configuration"] = parameters
    return values


def resource_values(instance_root: str | os.PathLike) -> dict:
    """The partition's resource file (in ``instance_root`` or a parent) as flat options.

    Nested keys are joined with ``-`` and every ``_`` becomes ``-``:
    ``{"tap": {"ipv4_addr": ...}}`` gives ``tap-ipv4-addr``.
    """
    folder = Path(instance_root).resolve()
    for candidate in (folder, *folder.parents):
        path = candidate / RESOURCE_FILE
        if path.is_file():
            break
    else:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise zc.buildout.UserError(f"cannot read the partition's resource file {path}: {exc}") from None
    flat: dict = {}
    pending = [("", data if isinstance(data, dict) else {})]
    while pending:
        prefix, mapping = pending.pop()
        for key, value in mapping.items():
            name = prefix + str(key).replace("_", "-")
            if isinstance(value, dict):
                pending.append((name + "-", value))
            else:
                flat[name] = value
    return flat


def _refusal(partition, name: str, message: str) -> zc.buildout.UserError:
    """The error failing the instance with ``message``, reported to the master when there is one."""
    if partition is not None:
        try:
            partition.error(message, logger=_QuietReport(name))
        except Exception:  # reporting to the master is best effort
            pass
    return zc.buildout.UserError(message)


def _storage_links(storage_home: str, instance_root: str, partition_id: str) -> dict:
    """``DATA/<name>`` links to ``<storage-home>/<name>/<partition>``, for each such folder."""
    links: dict = {}
    if not storage_home or not os.path.isdir(storage_home):
        return links
    for name in sorted(os.listdir(storage_home)):
        target = os.path.join(storage_home, name, partition_id)
        if os.path.isdir(target):
            link = os.path.join(instance_root, "DATA", name)
            make_dir(os.path.dirname(link))
            if not os.path.lexists(link):
                os.symlink(target, link)
            links[name] = link
    return links


class _QuietReport:
    """A logger for slap's error(): one line when the master cannot take the report.

    (slap logs a traceback otherwise, e.g. for a master without that endpoint.)
    """

    def __init__(self, name: str) -> None:
        import logging

        self.log = logging.getLogger(name)

    def exception(self, *args: object, **kwargs: object) -> None:
        self.log.warning("the master did not take the error report")

    def __getattr__(self, attr: str):
        return getattr(self.log, attr)


def _option_string(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (set, frozenset)):
        return " ".join(sorted(str(v) for v in value))
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def validate(schema: dict, parameters: dict) -> dict:
    """``parameters`` checked against ``schema``, with its defaults filled in.

    Integers and booleans given as strings (a non-serialised request) are
    turned into numbers and booleans first. Raises ValueError with one line
    per problem.
    """
    import jsonschema

    properties = schema.get("properties", {})
    checked = dict(parameters)
    for key, spec in properties.items():
        value = checked.get(key)
        if isinstance(value, str):
            kind = spec.get("type")
            if kind == "integer" and re.fullmatch(r"\s*-?\d+\s*", value):
                checked[key] = int(value)
            elif kind == "boolean" and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
                checked[key] = value.strip().lower() in ("true", "yes", "1")
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(checked), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for error in errors:
            where = "/".join(str(p) for p in error.absolute_path)
            lines.append(f"{where}: {error.message}" if where else error.message)
        raise ValueError("; ".join(lines))
    for key, spec in properties.items():
        if key not in checked and "default" in spec:
            checked[key] = spec["default"]
    return checked
