"""Per-partition network traffic since the previous run: the ``net_*`` fields of ``partition_usage``.

Three mechanisms, the most exact available, each only counting:

- ``interface``: a tap/tun interface of the partition (the virtual machine
  behind it is the partition): its kernel counters, what the host transmits
  into it being the partition's incoming traffic. Ethernet headers (14 bytes a
  frame) are taken off, so that the figures are IP bytes like the others.
- ``nftables`` (root): counters of the collector's own table (``nft.py``) by
  the partition's uid and by its addresses.
- ``sockets`` (any user): the growth of each live TCP socket's ``tcp_info``
  counters (``sockdiag.py``) owned by the partition's uid or bound to one of
  its addresses; payload plus one IP+TCP header per segment.

A partition's figures are the sum of its interface part and its address part
(``net_source`` names both, e.g. ``interface+nftables``); None (NULL) for an
interval a part could not measure (first run, re-created table or interface,
counter reset). The state the next run needs is returned, to be stored with
the run (``collect_state`` key ``network``). Problems are logged once, when
they appear or change, never every minute, and never fail the run.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

from .address import normal_address
from .config import CollectSettings
from .snapshot import PartitionUsage, RunSnapshot

log = logging.getLogger("slapos_collect")

SYS_NET = "/sys/class/net"
ETHERNET_HEADER = 14
ARPHRD_ETHER = 1
STATE_KEY = "network"


@dataclass
class Target:
    """What one partition's traffic is recognised by."""

    label: str
    uid: int | None
    addresses: list[str] = field(default_factory=list)
    interfaces: list[str] = field(default_factory=list)


# A partition's traffic figures: the columns of partition_usage they fill, by the same names.
NET_FIGURES = ("net_in_bytes", "net_out_bytes", "net_in_packets", "net_out_packets")


@dataclass
class Figures:
    """What crossed a partition's addresses or interfaces during one run (bytes, packets),
    in and out as seen from the partition."""

    net_in_bytes: int = 0
    net_out_bytes: int = 0
    net_in_packets: int = 0
    net_out_packets: int = 0

    def add(self, other: Figures) -> None:  # once per socket a run: plain additions
        self.net_in_bytes += other.net_in_bytes
        self.net_out_bytes += other.net_out_bytes
        self.net_in_packets += other.net_in_packets
        self.net_out_packets += other.net_out_packets


class Notes:
    """Messages logged once: a message is logged when its key's text differs from the previous run's.

    Bad input is kept apart in ``problems``: the run is stored, then fails with them (one line each)."""

    def __init__(self, previous: dict[str, str] | None) -> None:
        self.previous = previous or {}
        self.current: dict[str, str] = {}
        self.problems: list[str] = []

    def problem(self, message: str) -> None:
        if message not in self.problems:
            self.problems.append(message)

    def say(self, key: str, message: str, level: int = logging.WARNING) -> None:
        if key in self.current:
            return
        self.current[key] = message
        if self.previous.get(key) != message:
            log.log(level, "network: %s", message)


# -- where a partition's traffic is recognised ------------------------------

def _interface_ok(name: str) -> bool:
    return bool(name) and "/" not in name and name not in (".", "..") and len(name) <= 15 \
        and os.path.isdir(os.path.join(SYS_NET, name))


def targets(settings: CollectSettings, notes: Notes) -> list[Target]:
    """Each partition with its uid, valid addresses and existing interfaces; bad entries are noted and skipped."""
    by_label = {p.label: Target(p.label, p.uid) for p in settings.partitions}
    # A uid counts for one partition only: the last one given, which the process sampler gives the
    # processes to as well; the others are measured by their addresses and interfaces.
    by_uid = {t.uid: t.label for t in by_label.values() if t.uid is not None}
    for target in by_label.values():
        if target.uid is not None and by_uid[target.uid] != target.label:
            notes.problem(f"uid {target.uid} of partition {target.label} is also partition {by_uid[target.uid]}'s, "
                          f"whose traffic it counts: {target.label} is measured by address and interface only")
            target.uid = None
    address_owner: dict[str, str] = {}  # address -> label
    interface_owner: dict[str, str] = {}  # interface -> label

    def claim(owners: dict[str, str], value: str, label: str, origin: str, kept: list[str]) -> None:
        """``value`` is ``label``'s, unless another partition had it first: counted once, for that one."""
        if owners.setdefault(value, label) != label:
            notes.problem(f"{origin} {value} of partition {label} is already partition {owners[value]}'s: ignored")
        elif value not in kept:
            kept.append(value)

    def add_address(label: str, raw: str, origin: str) -> None:
        address = normal_address(raw.strip())
        if address is None:
            notes.problem(f"{origin} {raw!r} of partition {label} is not an IP address: ignored")
        else:
            claim(address_owner, address, label, origin, by_label[label].addresses)

    def add_interface(label: str, name: str, origin: str, quiet: bool) -> None:
        if not _interface_ok(name):
            if quiet:
                notes.say(f"interface:{label}:{name}", f"{origin}: interface {name!r} of partition {label} does "
                          "not exist: not measured", logging.INFO)
            else:
                notes.problem(f"{origin} {name!r} of partition {label} does not exist: not measured")
        else:
            claim(interface_owner, name, label, origin, by_label[label].interfaces)

    if settings.computer_xml:
        from . import computer_xml

        try:
            entries = computer_xml.read(settings.computer_xml)
        except computer_xml.ComputerXmlError as exc:
            notes.problem(f"{exc}: its partitions' addresses and taps are not known")
            entries = []
        for entry in entries:
            label = entry.user if entry.user in by_label else entry.reference
            if label not in by_label:
                continue  # a partition this collector does not collect
            for raw in entry.addresses:
                add_address(label, raw, "computer XML")
            for name in entry.interfaces:
                # slapformat lists taps it may not have created (create_tap = false): quiet.
                add_interface(label, name, "computer XML", quiet=True)
    for kind, given in (("address", settings.addresses), ("interface", settings.interfaces)):
        for label, values in given.items():
            if label not in by_label:
                notes.problem(f"{kind} {' '.join(values)} given for {label!r}, which is not a collected "
                              "partition: ignored")
                continue
            for value in values:
                if kind == "address":
                    add_address(label, value, "address")
                else:
                    add_interface(label, value, "interface", quiet=False)
    return list(by_label.values())


# -- interfaces --------------------------------------------------------------

def interface_counters(proc_root: str = "/proc") -> dict[str, tuple[int, int, int, int]]:
    """name -> (rx_bytes, rx_packets, tx_bytes, tx_packets) of every interface, from one read of
    ``<proc_root>/net/dev`` (empty when it cannot be read)."""
    counters: dict[str, tuple[int, int, int, int]] = {}
    try:
        with open(os.path.join(proc_root, "net", "dev"), "rb") as handle:
            lines = handle.read().decode("ascii", "replace").splitlines()[2:]
    except OSError:
        return counters
    for line in lines:
        name, _, values = line.partition(":")
        fields = values.split()
        if len(fields) >= 10:
            counters[name.strip()] = (int(fields[0]), int(fields[1]), int(fields[8]), int(fields[9]))
    return counters


def _read_interface(name: str, counters: dict[str, tuple[int, int, int, int]], previous: list[int] | None
                    ) -> list[int] | None:
    """[ifindex, type, rx_bytes, rx_packets, tx_bytes, tx_packets], or None when it vanished.

    The type is read once per interface index (from ``previous`` afterwards)."""
    if name not in counters:
        return None
    try:
        index = socket.if_nametoindex(name)
        if isinstance(previous, list) and len(previous) == 6 and _ints(previous) and previous[0] == index:
            kind = previous[1]
        else:
            with open(os.path.join(SYS_NET, name, "type"), "rb") as handle:
                kind = int(handle.read())
    except (OSError, ValueError):
        return None
    return [index, kind, *counters[name]]


def _interface_figures(now: list[int], before: list[int] | None) -> Figures | None:
    """The partition's traffic through one interface since ``before``; None after a re-creation or reset."""
    if not isinstance(before, list) or len(before) != len(now) or not _ints(before) or before[0] != now[0] \
            or any(a < b for a, b in zip(now[2:], before[2:], strict=True)):
        return None
    rx_bytes, rx_packets = now[2] - before[2], now[3] - before[3]
    tx_bytes, tx_packets = now[4] - before[4], now[5] - before[5]
    if now[1] == ARPHRD_ETHER:
        rx_bytes = max(rx_bytes - ETHERNET_HEADER * rx_packets, 0)
        tx_bytes = max(tx_bytes - ETHERNET_HEADER * tx_packets, 0)
    # The host transmits into the interface what the machine behind it receives.
    return Figures(net_in_bytes=tx_bytes, net_out_bytes=rx_bytes, net_in_packets=tx_packets, net_out_packets=rx_packets)


def measure_interfaces(targets_: list[Target], previous: dict, notes: Notes
                       ) -> tuple[dict[str, Figures | None], dict]:
    """label -> figures of its interfaces (None: unknown this interval), and the new state."""
    state: dict[str, list[int]] = {}
    result: dict[str, Figures | None] = {}
    counters = interface_counters() if any(t.interfaces for t in targets_) else {}
    for target in targets_:
        if not target.interfaces:
            continue
        parts: list[Figures | None] = []
        for name in target.interfaces:
            now = _read_interface(name, counters, previous.get(name))
            if now is None:
                notes.say(f"interface:{target.label}:{name}", f"interface {name} of partition {target.label} "
                          "vanished: not measured")
                parts.append(None)
                continue
            state[name] = now
            part = _interface_figures(now, previous.get(name))
            if part is None and name in previous:
                log.info("network: interface %s of %s was re-created or reset: new baseline", name, target.label)
            parts.append(part)
        result[target.label] = _sum(parts)
    return result, state


# -- addresses: nftables -------------------------------------------------------

def measure_nftables(targets_: list[Target], previous: dict | None, notes: Notes
                     ) -> tuple[dict[str, Figures | None], dict]:
    """label -> figures from the collector's table, and the new state. Raises nft.NftError."""
    from . import nft

    wanted = [t for t in targets_ if t.uid is not None or t.addresses]
    if not wanted:
        return {}, {}  # nothing to count by uid or address: no table
    layout = nft.build_layout([(t.label, t.uid, t.addresses) for t in wanted])
    listing = nft.read_table()
    prev_counters: dict[str, list[int]] = _section(previous, "counters") or {}
    prev_maps: dict[str, dict[str, str]] | None = _section(previous, "maps")
    table = f"{nft.FAMILY} {nft.TABLE}"
    # Counters whose previous value is a valid baseline for this interval.
    valid: set[str]
    if listing is None:
        if prev_maps is not None:
            notes.say("nft-table", f"table {table} was missing (deleted?): re-created; this interval is unknown")
        else:
            log.info("network: created table %s", table)
        nft.apply(layout, None)
        current = {name: (0, 0) for name in layout.counters}
        valid = set()
    else:
        current = dict(listing.counters)
        valid = set(current) & set(prev_counters)
        if not nft.up_to_date(listing, layout):
            intact = prev_maps is not None and nft.rules_intact(listing) and all(
                listing.maps.get(name, {}) == elements for name, elements in prev_maps.items())
            if prev_maps is None:
                log.info("network: table %s brought up to date (no previous state)", table)
            elif not intact:
                notes.say("nft-table", f"table {table} was changed by someone else (flushed?): restored; "
                          "this interval is unknown")
                valid = set()
            else:
                log.info("network: table %s brought up to date (%d partitions)", table, len(wanted))
            nft.apply(layout, listing)
            current = {name: current.get(name, (0, 0)) for name in layout.counters}
    result: dict[str, Figures | None] = {}
    for target in wanted:
        parts: list[Figures | None] = []
        for name, direction in nft.partition_counters(target.label, target.uid, target.addresses).items():
            packets, size = current[name]
            before = prev_counters.get(name)
            if name not in valid or not isinstance(before, list) or len(before) != 2 or not _ints(before) \
                    or packets < before[0] or size < before[1]:
                parts.append(None)  # new, re-created or reset counter: a new baseline
            elif direction == "in":
                parts.append(Figures(net_in_bytes=size - before[1], net_in_packets=packets - before[0]))
            else:
                parts.append(Figures(net_out_bytes=size - before[1], net_out_packets=packets - before[0]))
        result[target.label] = _sum(parts)
    state = {"counters": {name: list(value) for name, value in current.items()}, "maps": layout.maps}
    return result, state


# -- addresses: sockets --------------------------------------------------------

def measure_sockets(targets_: list[Target], previous: dict | None) -> tuple[dict[str, Figures | None], dict]:
    """label -> growth of its live TCP sockets, and the new state. Raises OSError when the kernel refuses."""
    from . import sockdiag

    by_uid = {t.uid: t.label for t in targets_ if t.uid is not None}
    by_address = {a: t.label for t in targets_ for a in t.addresses}
    wanted = [t.label for t in targets_ if t.uid is not None or t.addresses]
    prev_sockets: dict[str, list] = _section(previous, "sockets") or {}
    labels = (previous or {}).get("labels")
    prev_labels = {label for label in labels if isinstance(label, str)} if isinstance(labels, list) else set()
    totals = {label: Figures() for label in wanted}
    state: dict[str, list] = {}
    for sock in sockdiag.tcp_sockets():
        label = by_uid.get(sock.uid) or by_address.get(sock.local)
        if label is None or not (sock.bytes_sent or sock.bytes_received or sock.segs_in or sock.segs_out):
            continue
        now = [label, sock.bytes_sent, sock.bytes_received, sock.segs_out, sock.segs_in]
        key = str(sock.cookie)
        state[key] = now
        before = prev_sockets.get(key)
        if not isinstance(before, list) or len(before) != len(now) or before[0] != label or not _ints(before[1:]) \
                or any(a < b for a, b in zip(now[1:], before[1:], strict=True)):
            before = [label, 0, 0, 0, 0]  # opened since the previous dump: all of it is new
        segs_out, segs_in = now[3] - before[3], now[4] - before[4]
        totals[label].add(Figures(
            net_in_bytes=now[2] - before[2] + segs_in * sock.header,
            net_out_bytes=now[1] - before[1] + segs_out * sock.header,
            net_in_packets=segs_in, net_out_packets=segs_out,
        ))
    result: dict[str, Figures | None] = {
        label: (figures if label in prev_labels else None) for label, figures in totals.items()}
    return result, {"sockets": state, "labels": wanted}


def _sum(parts: Iterable[Figures | None]) -> Figures | None:
    """The sum of a partition's parts; None (unknown) as soon as one part is."""
    total = Figures()
    for part in parts:
        if part is None:
            return None
        total.add(part)
    return total


def _ints(values: list) -> bool:
    """A previous run's counter values are numbers (else, a state of another shape: a new baseline)."""
    return all(isinstance(value, int) for value in values)


def _section(state: dict | None, key: str) -> dict | None:
    """A dict kept by the previous run, or None when missing or not what this version writes."""
    value = state.get(key) if isinstance(state, dict) else None
    return value if isinstance(value, dict) else None


# -- one run -------------------------------------------------------------------

def _address_mechanism(settings: CollectSettings, notes: Notes) -> str | None:
    mode = settings.network_accounting
    if mode == "no":
        return None
    if mode in ("auto", "nftables") and os.geteuid() != 0:
        notes.say("mechanism", "not root: per-address traffic from the live TCP sockets",
                  logging.INFO if mode == "auto" else logging.WARNING)
        return "sockets"
    return "sockets" if mode == "sockets" else "nftables"


def measure(settings: CollectSettings, previous: dict | None
            ) -> tuple[dict[str, tuple[Figures | None, str]], dict, list[str]]:
    """label -> (figures or None, net_source) for every partition measured, the state to store, and the
    bad input met (one line each)."""
    previous = previous if isinstance(previous, dict) else {}
    notes = Notes(_section(previous, "notes"))
    targets_ = targets(settings, notes)
    state: dict = {}
    iface, state["interfaces"] = measure_interfaces(targets_, _section(previous, "interfaces") or {}, notes)
    addresses: dict[str, Figures | None] = {}
    mechanism = _address_mechanism(settings, notes)
    if mechanism == "nftables":
        from . import nft

        try:
            addresses, state["nftables"] = measure_nftables(targets_, _section(previous, "nftables"), notes)
        except nft.NftError as exc:
            notes.say("mechanism", f"nftables unusable ({exc}): per-address traffic from the live TCP sockets")
            mechanism = "sockets"
    if mechanism == "sockets":
        try:
            addresses, state["sockets"] = measure_sockets(targets_, _section(previous, "sockets"))
        except OSError as exc:
            notes.say("mechanism", f"the kernel refuses socket diagnostics ({exc}): per-address traffic "
                      "not measured")
            mechanism = None
    result: dict[str, tuple[Figures | None, str]] = {}
    for target in targets_:
        parts = []
        if target.label in iface:
            parts.append(("interface", iface[target.label]))
        if mechanism and target.label in addresses:
            parts.append((mechanism, addresses[target.label]))
        if not parts:
            continue
        result[target.label] = (_sum(figures for _, figures in parts), "+".join(name for name, _ in parts))
    if "mechanism" in notes.previous and "mechanism" not in notes.current and mechanism:
        log.info("network: per-address traffic from %s again", mechanism)
    state["notes"] = notes.current
    return result, state, notes.problems


def fill(usage: Iterable[PartitionUsage], measured: dict[str, tuple[Figures | None, str]]) -> None:
    """Set the ``net_*`` fields and ``net_source`` of each partition's usage row."""
    for row in usage:
        entry = measured.get(row.partition)
        if entry is None:
            continue
        figures, row.net_source = entry
        if figures is not None:
            for name in NET_FIGURES:
                setattr(row, name, getattr(figures, name))


def sample_into(snap: RunSnapshot, settings: CollectSettings, previous: dict | None) -> None:
    """Fill the run's usage rows with the network figures; the state and the problems go to the run."""
    measured, state, problems = measure(settings, previous)
    fill(snap.usage, measured)
    snap.state[STATE_KEY] = state
    snap.problems.extend(problems)

