"""Settings: command-line flags over the INI config file over a node's slapos.cfg.

The INI file (``-c CONFIG``) has one section per subcommand family; every key
is documented in README.md ("Configuration file"). Flags override the file.
"""

from __future__ import annotations

import argparse
import configparser
import logging
import os
import pwd
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CollectError

SECTION = "slapos-collect"
DEFAULT_KEEP_DAYS = 3
DEFAULT_FOLDER_CYCLE = 86400
ACCOUNTING_MODES = ("auto", "yes", "no")
DEFAULT_MEMORY_CYCLE = 300
MAX_MEMORY_CYCLE = 86400  # the carried figure's stamp is a time of day


@dataclass(frozen=True)
class Partition:
    """A partition to collect: by Unix user, or by directory when users are shared.

    When ``uid`` is set a process belongs to the partition if it runs as that
    user; otherwise if its working directory or executable lies under ``path``.
    ``path``, when known, is also the folder whose size is measured.
    """

    label: str
    uid: int | None = None
    path: str | None = None


@dataclass
class CollectSettings:
    data_dir: Path
    partitions: list[Partition]
    log_file: str | None = None
    keep_days: int = DEFAULT_KEEP_DAYS
    folder_cycle: int = DEFAULT_FOLDER_CYCLE
    report_disk_usage: bool = True
    computer_id: str = ""
    # Network (issue 13): label -> addresses / interface names, as given (checked by traffic.py at
    # each run, so that one bad entry never stops the others); the node's computer XML, if any.
    addresses: dict[str, list[str]] = field(default_factory=dict)
    interfaces: dict[str, list[str]] = field(default_factory=dict)
    network_accounting: str = "auto"
    computer_xml: str | None = None
    # Partition accounting (issue 11): label -> cgroup directory; acct(2) auto|yes|no.
    cgroups: dict[str, str] = field(default_factory=dict)
    process_accounting: str = "auto"
    memory_cycle: int = DEFAULT_MEMORY_CYCLE
    # Node mode (--slapos-cfg): the data dir is 0755 and collector.db 0644, so
    # that the partitions' users can read it; new journals are also put in
    # xml_report_dir for `slapos node report`.
    shared: bool = False
    xml_report_dir: Path | None = None


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", metavar="CONFIG", help="INI configuration file")
    parser.add_argument("--data-dir", metavar="DIR", help="where collector.db, the CSVs and the dumps live")
    parser.add_argument("--log-file", metavar="FILE", help="log to FILE (default: warnings on stderr)")


def add_partition_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", action="append", default=[], metavar="NAME",
                        help="one partition per Unix user (repeatable)")
    parser.add_argument("--partition", action="append", default=[], metavar="LABEL=PATH",
                        help="one partition per directory, for partitions sharing a user (repeatable)")
    parser.add_argument("--slapos-cfg", metavar="FILE",
                        help="collect every partition of a SlapOS node described by its slapos.cfg")
    parser.add_argument("--cgroup", action="append", default=[], metavar="LABEL=PATH",
                        help="the cgroup directory holding partition LABEL's processes, read for exact "
                             "CPU and IO (repeatable; never changed)")
    parser.add_argument("--process-accounting", choices=ACCOUNTING_MODES, default=None,
                        help="kernel process accounting for the CPU of ended processes: auto (on when "
                             "root, the default), yes, no")


NETWORK_ACCOUNTING = ("auto", "nftables", "sockets", "no")


def add_network_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", action="append", default=[], metavar="LABEL=ADDR",
                        help="an IP address of partition LABEL whose traffic is its own (repeatable)")
    parser.add_argument("--interface", action="append", default=[], metavar="LABEL=IFNAME",
                        help="a tap/tun interface of partition LABEL, the machine behind it being the partition "
                             "(repeatable)")
    parser.add_argument("--network-accounting", choices=NETWORK_ACCOUNTING, default=None,
                        help="per-address traffic: nftables counters (root), live TCP sockets, or none "
                             "(default: auto, nftables when possible)")


def label_values(lines: list[str], what: str) -> dict[str, list[str]]:
    """``LABEL = value value`` lines (or ``LABEL=value`` flags) merged into label -> values."""
    result: dict[str, list[str]] = {}
    for line in lines:
        label, sep, values = line.partition("=")
        label = label.strip()
        if not sep or not label or not values.split():
            raise CollectError(f"{what} {line.strip()!r} must be LABEL=VALUE")
        known = result.setdefault(label, [])
        for value in values.split():
            if value not in known:
                known.append(value)
    return result


def read_ini(path: str | os.PathLike) -> configparser.ConfigParser:
    """Read an INI file, turning every failure into one clear CollectError."""
    # " ; comment" after a value is a comment (as in the README's examples);
    # a ";" with no space before it stays part of the value.
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",))
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except FileNotFoundError:
        raise CollectError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CollectError(f"cannot read config file {path}: {exc}") from None
    except configparser.Error as exc:
        message = str(exc).replace("\n", " ")
        raise CollectError(f"malformed config file {path}: {message}") from None
    return parser


def load_config(args: argparse.Namespace) -> configparser.ConfigParser:
    """The ``-c`` file, or an empty parser when none was given."""
    if getattr(args, "config", None):
        return read_ini(args.config)
    return configparser.ConfigParser(interpolation=None)


def get_int(cp: configparser.ConfigParser, section: str, key: str, default: int, minimum: int = 0) -> int:
    raw = cp.get(section, key, fallback=None)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise CollectError(f"[{section}] {key} must be a whole number, not {raw.strip()!r}") from None
    if value < minimum:
        raise CollectError(f"[{section}] {key} must be at least {minimum}, not {value}")
    return value


def get_bool(cp: configparser.ConfigParser, section: str, key: str, default: bool) -> bool:
    raw = cp.get(section, key, fallback=None)
    if raw is None or not raw.strip():
        return default
    value = raw.strip().lower()
    if value in ("1", "yes", "true", "on"):
        return True
    if value in ("0", "no", "false", "off"):
        return False
    raise CollectError(f"[{section}] {key} must be yes or no, not {raw.strip()!r}")


def get_list(cp: configparser.ConfigParser, section: str, key: str) -> list[str]:
    return cp.get(section, key, fallback="").split()


def _make_dirs(folders: list[Path], mode: int) -> None:
    """Create the missing ones, in order, with exactly ``mode`` (mkdir's goes through the umask)."""
    for folder in folders:
        if not folder.is_dir():
            try:
                folder.mkdir(mode=mode)
            except FileExistsError:
                continue  # made meanwhile by another run
            os.chmod(folder, mode)


def resolve_data_dir(value: str | os.PathLike, *, shared: bool = False, base: Path | None = None) -> Path:
    """The data dir, created if missing; its parent must exist, unless ``base``
    (a node's instance_root) is given: then the folders between it and the
    data dir are created too, as the node's layout implies (``base`` itself
    must exist).

    Private (0750) by default; ``shared`` (node mode) makes it 0755 at every
    call, whatever the umask or a hand's chmod did, as the original does."""
    path = Path(value).expanduser().absolute()
    mode = 0o755 if shared else 0o750
    if not path.is_dir():
        top = path.parent
        if base is not None and path.is_relative_to(base.absolute()):
            top = base.absolute()
        if not top.is_dir():
            raise CollectError(f"data dir {path}: parent directory {top} does not exist")
        try:
            _make_dirs([f for f in reversed([path, *path.parents]) if f.is_relative_to(top) and f != top], mode)
        except OSError as exc:
            raise CollectError(f"cannot create data dir {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise CollectError(f"data dir {path} is not writable")
    if shared and (path.stat().st_mode & 0o7777) != mode:
        os.chmod(path, mode)
    return path


def xml_report_dir(instance_root: Path, computer_id: str) -> Path | None:
    """``<instance_root>/var/xml_report/<computer_id>/``, where ``slapos node
    report`` reads the journals it sends (created 0755, as the original does);
    None without a computer id."""
    if not computer_id or "/" in computer_id or computer_id in (".", ".."):
        return None
    path = instance_root.absolute() / "var" / "xml_report" / computer_id
    try:
        _make_dirs([path.parent.parent, path.parent, path], 0o755)  # var/ too, on a fresh node
    except OSError as exc:
        raise CollectError(f"cannot create {path}: {exc.strerror}") from None
    return path


def user_partition(name: str) -> Partition:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise CollectError(f"unknown user {name!r}") from None
    return Partition(label=name, uid=entry.pw_uid)


def directory_partition(spec: str) -> Partition:
    label, sep, path = spec.partition("=")
    label, path = label.strip(), path.strip()
    if not sep or not label or not path:
        raise CollectError(f"partition {spec!r} must be LABEL=PATH")
    return Partition(label=label, path=str(Path(path).expanduser().absolute()))


@dataclass
class NodeConfig:
    """What a SlapOS node's slapos.cfg says about collection."""

    partitions: list[Partition]
    data_dir: Path
    instance_root: Path
    keep_days: int | None
    folder_cycle: int | None
    report_disk_usage: bool | None
    computer_id: str
    computer_xml: str | None = None


def read_slapos_cfg(path: str) -> NodeConfig:
    cp = read_ini(path)
    if not cp.has_option("slapos", "instance_root"):
        raise CollectError(f"{path}: [slapos] instance_root is missing")
    root = Path(cp.get("slapos", "instance_root")).expanduser()
    amount = get_int(cp, "slapformat", "partition_amount", 0)
    user_base = cp.get("slapformat", "user_base_name", fallback="").strip()
    part_base = cp.get("slapformat", "partition_base_name", fallback="slappart").strip() or "slappart"
    partitions: list[Partition] = []
    for n in range(amount):
        part_path = str(root / f"{part_base}{n}")
        if user_base:
            # The node case: one Unix user per partition. A user that
            # slapformat has not created yet is skipped, not fatal.
            try:
                uid = pwd.getpwnam(f"{user_base}{n}").pw_uid
            except KeyError:
                continue
            partitions.append(Partition(label=f"{user_base}{n}", uid=uid, path=part_path))
        else:
            # A standalone master: all partitions share one user.
            partitions.append(Partition(label=f"{part_base}{n}", path=part_path))
    keep = get_int(cp, "slapos", "collect_cache", 0, minimum=0) or None
    cycle = get_int(cp, "collect", "disk_snapshot_time_cycle", 0, minimum=0) or None
    report = None
    if cp.has_option("collect", "report_disk_usage"):
        report = get_bool(cp, "collect", "report_disk_usage", True)
    return NodeConfig(
        partitions=partitions,
        data_dir=root / "var" / "data-log",
        instance_root=root,
        keep_days=keep,
        folder_cycle=cycle,
        report_disk_usage=report,
        computer_id=cp.get("slapos", "computer_id", fallback="").strip(),
        computer_xml=cp.get("slapformat", "computer_xml", fallback="").strip() or None,
    )


def collect_settings(args: argparse.Namespace) -> CollectSettings:
    """Resolve what to collect and where, for ``collect`` and ``rotate``."""
    cp = load_config(args)
    section = SECTION
    users = list(getattr(args, "user", []) or []) or get_list(cp, section, "users")
    dirs = list(getattr(args, "partition", []) or []) or [
        line.strip() for line in cp.get(section, "partitions", fallback="").splitlines() if line.strip()
    ]
    slapos_cfg = getattr(args, "slapos_cfg", None) or cp.get(section, "slapos-cfg", fallback="").strip() or None

    node = read_slapos_cfg(slapos_cfg) if slapos_cfg else None
    partitions: list[Partition] = []
    if node:
        partitions.extend(node.partitions)
    partitions.extend(user_partition(name) for name in users)
    partitions.extend(directory_partition(spec) for spec in dirs)
    if not partitions and not node:
        # The embedded default: the current user is the one partition.
        entry = pwd.getpwuid(os.getuid())
        partitions.append(Partition(label=entry.pw_name, uid=entry.pw_uid))
    seen: set[str] = set()
    for part in partitions:
        if part.label in seen:
            raise CollectError(f"partition label {part.label!r} is given twice")
        seen.add(part.label)

    data_dir = getattr(args, "data_dir", None) or cp.get(section, "data-dir", fallback="").strip()
    if not data_dir:
        data_dir = node.data_dir if node else Path("var/data-log")
    keep_days = getattr(args, "keep_days", None)
    if keep_days is None:
        keep_days = get_int(cp, section, "keep-days", (node and node.keep_days) or DEFAULT_KEEP_DAYS, minimum=1)
    if keep_days < 1:
        raise CollectError(f"--keep-days must be at least 1, not {keep_days}")
    folder_cycle = get_int(cp, section, "folder-cycle", (node and node.folder_cycle) or DEFAULT_FOLDER_CYCLE)
    default_report = node.report_disk_usage if node and node.report_disk_usage is not None else True
    computer_id = cp.get(section, "computer-id", fallback="").strip() or (node.computer_id if node else "")
    explicit_dir = bool(getattr(args, "data_dir", None) or cp.get(section, "data-dir", fallback="").strip())
    settings = CollectSettings(
        data_dir=resolve_data_dir(data_dir, shared=node is not None,
                                  base=None if explicit_dir or node is None else node.instance_root),
        partitions=partitions,
        log_file=getattr(args, "log_file", None) or cp.get(section, "log-file", fallback="").strip() or None,
        keep_days=keep_days,
        folder_cycle=folder_cycle,
        report_disk_usage=get_bool(cp, section, "report-disk-usage", default_report),
        computer_id=computer_id,
        memory_cycle=memory_cycle(args, cp),
        shared=node is not None,
        xml_report_dir=xml_report_dir(node.instance_root, computer_id) if node else None,
    )
    settings.cgroups = cgroup_settings(args, cp, {p.label for p in partitions})
    mode = getattr(args, "process_accounting", None) or cp.get(section, "process-accounting", fallback="").strip()
    mode = (mode or "auto").lower()
    if mode not in ACCOUNTING_MODES:
        raise CollectError(f"process-accounting must be auto, yes or no, not {mode!r}")
    settings.process_accounting = mode
    _network_settings(settings, args, cp, node)
    return settings


def _network_settings(settings: CollectSettings, args: argparse.Namespace, cp: configparser.ConfigParser,
                      node: NodeConfig | None) -> None:
    """Addresses, interfaces (config keys, then flags, added) and the accounting mechanism."""
    def lines(key: str, flag: str) -> list[str]:
        from_file = [line for line in cp.get(SECTION, key, fallback="").splitlines() if line.strip()]
        return from_file + list(getattr(args, flag, None) or [])

    settings.addresses = label_values(lines("addresses", "address"), "address")
    settings.interfaces = label_values(lines("interfaces", "interface"), "interface")
    mode = getattr(args, "network_accounting", None) or cp.get(SECTION, "network-accounting", fallback="").strip()
    if mode and mode not in NETWORK_ACCOUNTING:
        raise CollectError(f"[{SECTION}] network-accounting must be one of {', '.join(NETWORK_ACCOUNTING)}, "
                           f"not {mode!r}")
    settings.network_accounting = mode or "auto"
    settings.computer_xml = node.computer_xml if node else None


def cgroup_settings(args: argparse.Namespace, cp: configparser.ConfigParser, labels: set[str]) -> dict[str, str]:
    """``--cgroup LABEL=PATH`` flags, else the ``cgroups`` key (``LABEL = PATH`` per line).

    Only the syntax is checked here; whether PATH is a readable cgroup is
    checked at each run (a bad one is reported, the run still stored)."""
    specs = list(getattr(args, "cgroup", []) or []) or [
        line.strip() for line in cp.get(SECTION, "cgroups", fallback="").splitlines() if line.strip()
    ]
    cgroups: dict[str, str] = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        label, path = label.strip(), path.strip()
        if not sep or not label or not path:
            raise CollectError(f"cgroup {spec!r} must be LABEL=PATH")
        if label not in labels:
            raise CollectError(f"cgroup {spec!r}: no partition is labelled {label!r}")
        if label in cgroups:
            raise CollectError(f"cgroup of partition {label!r} is given twice")
        cgroups[label] = str(Path(path).expanduser().absolute())
    return cgroups


def memory_cycle(args: argparse.Namespace, cp: configparser.ConfigParser) -> int:
    """``--memory-cycle`` over ``memory-cycle``: seconds between two PSS reads of a partition
    whose page tables are large (0: every run)."""
    value = getattr(args, "memory_cycle", None)
    if value is None:
        value = get_int(cp, SECTION, "memory-cycle", DEFAULT_MEMORY_CYCLE)
    if not 0 <= value <= MAX_MEMORY_CYCLE:
        raise CollectError(f"memory-cycle must be between 0 and {MAX_MEMORY_CYCLE} seconds, not {value}")
    return value


def setup_logging(log_file: str | None, verbose: bool = False, long_running: bool = False) -> None:
    """Log to a file when one is named; otherwise only warnings reach stderr.

    Quiet on success: cron mails whatever a run prints.
    """
    root = logging.getLogger("slapos_collect")
    root.handlers.clear()
    root.propagate = False
    if log_file:
        try:
            if long_running:
                # Reopens the file when logrotate has renamed it.
                from logging.handlers import WatchedFileHandler

                handler: logging.Handler = WatchedFileHandler(log_file)
            else:
                # Each run is a new process that opens the current file: no need for
                # logging.handlers, which is slow to import every minute.
                handler = logging.FileHandler(log_file)
        except OSError as exc:
            raise CollectError(f"cannot open log file {log_file}: {exc.strerror}") from None
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.setLevel(logging.DEBUG if verbose else logging.INFO)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        handler.setLevel(logging.DEBUG if verbose else logging.WARNING)
        root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    root.addHandler(handler)
