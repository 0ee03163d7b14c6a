"""What ``collect``, ``rotate`` and ``folder-size`` collect, and where: the
``[slapos-collect]`` settings (declared here, resolved by settings.py: flag
over the INI file of ``-c CONFIG`` over a node's slapos.cfg over the
default), the partitions they name, the data dir, and logging.

Every key is documented in README.md ("Configuration file").
"""

from __future__ import annotations

import argparse
import logging
import os
import pwd
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CollectError
from .settings import (
    COLLECT,
    CONFIG,
    DATA_DIR,
    DEFAULT_DATA_DIR,
    LOG_FILE,
    Kind,
    Setting,
    boolean,
    choice,
    ini_value,
    integer,
    lines,
    load_config,
    read_ini,
    resolve,
    text,
    words,
)

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


def _collect(key: str, kind: Kind = text, default: Any = None, **declared: Any) -> Setting:
    """A setting of the ``[slapos-collect]`` section."""
    return Setting(key, kind, default, sections=(COLLECT,), **declared)


NETWORK_MODES = ("auto", "nftables", "sockets", "no")
USERS = _collect("users", words(), flag="--user", many="replace", metavar="NAME",
                 help="one partition per Unix user (repeatable)")
PARTITIONS = _collect("partitions", lines(), flag="--partition", many="replace", metavar="LABEL=PATH",
                      help="one partition per directory, for partitions sharing a user (repeatable)")
SLAPOS_CFG = _collect("slapos-cfg", flag="--slapos-cfg", metavar="FILE",
                      help="collect every partition of a SlapOS node described by its slapos.cfg")
CGROUPS = _collect("cgroups", lines(), flag="--cgroup", many="replace", metavar="LABEL=PATH",
                   help="the cgroup directory holding partition LABEL's processes, read for exact "
                        "CPU and IO (repeatable; never changed)")
PROCESS_ACCOUNTING = _collect("process-accounting", choice(*ACCOUNTING_MODES, fold_case=True), "auto",
                              flag="--process-accounting",
                              help="kernel process accounting for the CPU of ended processes: auto (on when "
                                   "root, the default), yes, no")
MEMORY_CYCLE = _collect("memory-cycle", integer(0, MAX_MEMORY_CYCLE, unit="seconds"), DEFAULT_MEMORY_CYCLE,
                        flag="--memory-cycle", metavar="SECONDS",
                        help="re-read the PSS of a partition whose walk is dear (many processes or a large RSS "
                             "sum) at most every SECONDS, carrying the last figure between reads (default 300; "
                             "0: every run)")
ADDRESSES = _collect("addresses", lines(), flag="--address", many="add", metavar="LABEL=ADDR",
                     help="an IP address of partition LABEL whose traffic is its own (repeatable)")
INTERFACES = _collect("interfaces", lines(), flag="--interface", many="add", metavar="LABEL=IFNAME",
                      help="a tap/tun interface of partition LABEL, the machine behind it being the partition "
                           "(repeatable)")
NETWORK_MODE = _collect("network-accounting", choice(*NETWORK_MODES), "auto", flag="--network-accounting",
                        help="per-address traffic: nftables counters (root), live TCP sockets, or none "
                             "(default: auto, nftables when possible)")
KEEP_DAYS = _collect("keep-days", integer(1), DEFAULT_KEEP_DAYS, flag="--keep-days", metavar="N",
                     help=f"keep reported rows N days (default {DEFAULT_KEEP_DAYS}, or collect_cache from slapos.cfg)")
FOLDER_CYCLE = _collect("folder-cycle", integer(0), DEFAULT_FOLDER_CYCLE, flag="--folder-cycle",
                        metavar="SECONDS",
                        help="measure a partition at most once per SECONDS (default: the config's, 86400)")
REPORT_DISK_USAGE = _collect("report-disk-usage", boolean, True)
COMPUTER_ID = _collect("computer-id", text, "")

# The flags commands offer, in --help order (collect: COMMON, PARTITION, memory-cycle, NETWORK).
COMMON_FLAGS = (CONFIG, DATA_DIR, LOG_FILE)
PARTITION_FLAGS = (USERS, PARTITIONS, SLAPOS_CFG, CGROUPS, PROCESS_ACCOUNTING)
NETWORK_FLAGS = (ADDRESSES, INTERFACES, NETWORK_MODE)
# What collect_settings resolves, flags or not (a command lacking a flag leaves it to the file).
COLLECT_SETTINGS = (*COMMON_FLAGS[1:], *PARTITION_FLAGS, MEMORY_CYCLE, *NETWORK_FLAGS, KEEP_DAYS, FOLDER_CYCLE,
                    REPORT_DISK_USAGE, COMPUTER_ID)


def label_values(entries: list[str], what: str) -> dict[str, list[str]]:
    """``LABEL = value value`` lines (or ``LABEL=value`` flags) merged into label -> values."""
    result: dict[str, list[str]] = {}
    for line in entries:
        label, sep, values = line.partition("=")
        label = label.strip()
        if not sep or not label or not values.split():
            raise CollectError(f"{what} {line.strip()!r} must be LABEL=VALUE")
        known = result.setdefault(label, [])
        for value in values.split():
            if value not in known:
                known.append(value)
    return result


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

    def values(self) -> dict[str, Any]:
        """The settings it gives, by key (None: it says nothing), below the flags and the INI file."""
        return {DATA_DIR.key: self.data_dir, KEEP_DAYS.key: self.keep_days, FOLDER_CYCLE.key: self.folder_cycle,
                REPORT_DISK_USAGE.key: self.report_disk_usage, COMPUTER_ID.key: self.computer_id or None}


# slapos.cfg's own keys (section, key) read by read_slapos_cfg
_PARTITION_AMOUNT = Setting("partition_amount", integer(0))
_COLLECT_CACHE = Setting("collect_cache", integer(0))
_DISK_CYCLE = Setting("disk_snapshot_time_cycle", integer(0))
_REPORT_DISK_USAGE = Setting("report_disk_usage", boolean)


def read_slapos_cfg(path: str) -> NodeConfig:
    cp = read_ini(path)
    if not cp.has_option("slapos", "instance_root"):
        raise CollectError(f"{path}: [slapos] instance_root is missing")
    root = Path(cp.get("slapos", "instance_root")).expanduser()
    amount = ini_value(cp, "slapformat", _PARTITION_AMOUNT, 0)
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
    return NodeConfig(
        partitions=partitions,
        data_dir=root / DEFAULT_DATA_DIR,
        instance_root=root,
        keep_days=ini_value(cp, "slapos", _COLLECT_CACHE) or None,  # 0: not set
        folder_cycle=ini_value(cp, "collect", _DISK_CYCLE) or None,
        report_disk_usage=ini_value(cp, "collect", _REPORT_DISK_USAGE),
        computer_id=cp.get("slapos", "computer_id", fallback="").strip(),
        computer_xml=cp.get("slapformat", "computer_xml", fallback="").strip() or None,
    )


def collect_settings(args: argparse.Namespace) -> CollectSettings:
    """Resolve what to collect and where, for ``collect``, ``rotate`` and ``folder-size``."""
    cp = load_config(args)
    slapos_cfg = resolve([SLAPOS_CFG], args, cp)[SLAPOS_CFG.key]
    node = read_slapos_cfg(slapos_cfg) if slapos_cfg else None
    got = resolve(COLLECT_SETTINGS, args, cp, node.values() if node else None)

    partitions: list[Partition] = []
    if node:
        partitions.extend(node.partitions)
    partitions.extend(user_partition(name) for name in got[USERS.key])
    partitions.extend(directory_partition(spec) for spec in got[PARTITIONS.key])
    if not partitions and not node:
        # The embedded default: the current user is the one partition.
        entry = pwd.getpwuid(os.getuid())
        partitions.append(Partition(label=entry.pw_name, uid=entry.pw_uid))
    seen: set[str] = set()
    for part in partitions:
        if part.label in seen:
            raise CollectError(f"partition label {part.label!r} is given twice")
        seen.add(part.label)

    # A node's data dir may need the folders between its instance_root and it; a given one only its parent.
    node_dir = node is not None and got.origins[DATA_DIR.key] == "slapos.cfg"
    computer_id = got[COMPUTER_ID.key]
    return CollectSettings(
        data_dir=resolve_data_dir(got[DATA_DIR.key], shared=node is not None,
                                  base=node.instance_root if node_dir else None),
        partitions=partitions,
        log_file=got[LOG_FILE.key] or None,
        keep_days=got[KEEP_DAYS.key],
        folder_cycle=got[FOLDER_CYCLE.key],
        report_disk_usage=got[REPORT_DISK_USAGE.key],
        computer_id=computer_id,
        memory_cycle=got[MEMORY_CYCLE.key],
        shared=node is not None,
        xml_report_dir=xml_report_dir(node.instance_root, computer_id) if node else None,
        cgroups=cgroup_settings(got[CGROUPS.key], {p.label for p in partitions}),
        process_accounting=got[PROCESS_ACCOUNTING.key],
        addresses=label_values(got[ADDRESSES.key], "address"),
        interfaces=label_values(got[INTERFACES.key], "interface"),
        network_accounting=got[NETWORK_MODE.key],
        computer_xml=node.computer_xml if node else None,
    )


def cgroup_settings(specs: list[str], labels: set[str]) -> dict[str, str]:
    """``LABEL=PATH`` specs (``--cgroup`` flags, else the ``cgroups`` key) as label -> directory.

    Only the syntax is checked here; whether PATH is a readable cgroup is
    checked at each run (a bad one is reported, the run still stored)."""
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
