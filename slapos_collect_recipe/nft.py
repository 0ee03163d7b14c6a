"""The collector's own nftables table: per-partition counters, nothing else.

``table inet slapos_collect`` holds two base chains (``input`` and ``output``,
priority 300, after the usual filter and NAT chains, ``policy accept``) of
three rules each, which only count: a packet of a partition's process (``meta
skuid``, matched first; ``return`` only ends this table's chain, so the packet
goes on exactly as without the table), then one to or from a partition
address (``ip daddr`` in, ``ip saddr`` out; IPv6 alike). Each rule names its
counter through a map (uid or address -> named counter): one named counter
per partition address and direction and per partition uid and direction, and
the rules stay six whatever the number of partitions. No rule drops, delays,
marks or rewrites a packet; no other table is read or touched.

One ``nft -j list table`` per run reads every counter and map; a ``nft -f -``
transaction, only when the table is missing or not what the settings ask,
brings it up to date atomically (named counters keep their values).
``slapos-collect network-accounting --remove`` deletes the table.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

from .address import normal_address

TABLE = "slapos_collect"
FAMILY = "inet"
PRIORITY = 300
TIMEOUT = 20
# map -> (key type, what it is matched against); the chain's rules in order.
MAPS = {
    "uid_in": ("uid", "meta skuid"), "in4": ("ipv4_addr", "ip daddr"), "in6": ("ipv6_addr", "ip6 daddr"),
    "uid_out": ("uid", "meta skuid"), "out4": ("ipv4_addr", "ip saddr"), "out6": ("ipv6_addr", "ip6 saddr"),
}
CHAINS = {"input": ["uid_in", "in4", "in6"], "output": ["uid_out", "out4", "out6"]}
OWN_EXPRESSIONS = {"match", "counter", "return"}  # what the rules above are made of, in nft -j


class NftError(Exception):
    """nft is missing or refused: the caller falls back."""


@dataclass
class Layout:
    """What the table must hold: map -> key -> counter name."""

    maps: dict[str, dict[str, str]] = field(default_factory=lambda: {name: {} for name in MAPS})

    @property
    def counters(self) -> set[str]:
        return {name for elements in self.maps.values() for name in elements.values()}


@functools.lru_cache(maxsize=4096)
def counter_name(label: str, direction: str, key: str) -> str:
    """A stable counter name for (partition, direction, uid or address): nft's names are plain words
    that begin with a letter (``0app_in_...`` is a syntax error that would refuse the whole table)."""
    word = re.sub(r"[^A-Za-z0-9]", "_", label)[:40]
    if not word[:1].isalpha():
        word = f"p{word}"
    digest = hashlib.sha1(f"{label}\0{direction}\0{key}".encode()).hexdigest()[:10]
    return f"{word}_{direction}_{digest}"


def partition_counters(label: str, uid: int | None, addresses: list[str]) -> dict[str, str]:
    """counter name -> direction (in/out), for one partition."""
    keys = ([f"uid{uid}"] if uid is not None else []) + addresses
    return {counter_name(label, direction, key): direction for key in keys for direction in ("in", "out")}


def build_layout(partitions: list[tuple[str, int | None, list[str]]]) -> Layout:
    """The maps for ``(label, uid, addresses)``; addresses are text, already checked and normalised."""
    layout = Layout()
    for label, uid, addresses in partitions:
        for direction in ("in", "out"):
            if uid is not None:
                layout.maps[f"uid_{direction}"][str(uid)] = counter_name(label, direction, f"uid{uid}")
            for address in addresses:
                family = "6" if ":" in address else "4"
                layout.maps[f"{direction}{family}"][address] = counter_name(label, direction, address)
    return layout


def ruleset(layout: Layout, stale_counters: list[str]) -> str:
    """One transaction that makes the table exactly ``layout``, keeping the counters' values."""
    t = f"{FAMILY} {TABLE}"
    lines = [f"add table {t}"]
    for chain in CHAINS:
        lines.append(f"add chain {t} {chain} {{ type filter hook {chain} priority {PRIORITY}; policy accept; }}")
        lines.append(f"flush chain {t} {chain}")
    for name, (key_type, _) in MAPS.items():
        lines.append(f"add map {t} {name} {{ type {key_type} : counter; }}")
        lines.append(f"flush map {t} {name}")
    for name in sorted(layout.counters):
        lines.append(f"add counter {t} {name}")
    for name, elements in layout.maps.items():
        if elements:
            lines.append(f"add element {t} {name} {{ "
                         + ", ".join(f'{key} : "{counter}"' for key, counter in elements.items()) + " }")
    for chain, maps in CHAINS.items():
        for name in maps:
            match = MAPS[name][1]
            if name.startswith("uid"):
                # The packet is this partition's: the address rules need not see it.
                lines.append(f"add rule {t} {chain} {match} @{name} counter name {match} map @{name} return")
            else:
                lines.append(f"add rule {t} {chain} counter name {match} map @{name}")
    for name in stale_counters:
        lines.append(f"delete counter {t} {name}")
    return "\n".join(lines) + "\n"


def _nft(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    binary = shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft") if os.access(p, os.X_OK)), None)
    if binary is None:
        raise NftError("the nft command is not installed")
    try:
        # Messages in English: "No such file or directory" tells a missing table.
        return subprocess.run([binary, *args], input=stdin, capture_output=True, text=True, timeout=TIMEOUT,
                              env={**os.environ, "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NftError(f"nft did not run: {exc}") from None


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no message")


@dataclass
class Listing:
    """What ``nft -j list table`` showed."""

    counters: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (packets, bytes)
    maps: dict[str, dict[str, str]] = field(default_factory=dict)
    rules: dict[str, list[str]] = field(default_factory=dict)  # chain -> the maps its rules count with
    chains: set[str] = field(default_factory=set)


def _key(value: object) -> str:
    """A map key as the layout writes it: addresses normalised as the settings' are, uids as numbers."""
    text = str(value)
    return normal_address(text) or text


def read_table() -> Listing | None:
    """The table's counters, maps and rules, or None when the table does not exist."""
    proc = _nft(["-j", "list", "table", FAMILY, TABLE])
    if proc.returncode != 0:
        if "No such file or directory" in proc.stderr:
            return None
        raise NftError(f"nft list table failed: {_first_line(proc.stderr)}")
    try:
        items = json.loads(proc.stdout)["nftables"]
    except (ValueError, KeyError, TypeError):
        raise NftError("nft -j printed no JSON") from None
    try:
        return _listing(items)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise NftError(f"nft -j printed a table this version does not read ({exc!r})") from None


def _listing(items: list[dict]) -> Listing:
    listing = Listing()
    for item in items:
        if "counter" in item:
            c = item["counter"]
            listing.counters[c["name"]] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
        elif "map" in item:
            m = item["map"]
            listing.maps[m["name"]] = {_key(k): v for k, v in (m.get("elem") or []) if isinstance(v, str)}
        elif "chain" in item:
            c = item["chain"]
            if c.get("hook") == c.get("name") and c.get("policy") == "accept" and c.get("prio") == PRIORITY:
                listing.chains.add(c["name"])
        elif "rule" in item and item["rule"]["chain"] in CHAINS:
            r = item["rule"]
            exprs = r.get("expr", [])
            maps = [str(e["counter"]["map"].get("data", "")).lstrip("@") for e in exprs
                    if isinstance(e.get("counter"), dict) and isinstance(e["counter"].get("map"), dict)]
            # A rule of this table only matches, counts and returns: one that does anything else
            # (someone's verdict, mark, limit...) is not ours, and the table is restored.
            ours = len(maps) == 1 and all(set(e) <= OWN_EXPRESSIONS for e in exprs)
            listing.rules.setdefault(r["chain"], []).append(maps[0] if ours else "")
    return listing


def rules_intact(listing: Listing) -> bool:
    """Both chains hold this table's six rules."""
    return listing.chains == set(CHAINS) and listing.rules == CHAINS


def up_to_date(listing: Listing, layout: Layout) -> bool:
    """The table holds exactly ``layout``: its rules, maps and counters."""
    return (rules_intact(listing) and all(listing.maps.get(name, {}) == elements
                                          for name, elements in layout.maps.items())
            and layout.counters <= set(listing.counters))


def apply(layout: Layout, listing: Listing | None) -> None:
    """Create the table or bring it to ``layout`` in one transaction."""
    stale = sorted(set(listing.counters) - layout.counters) if listing else []
    proc = _nft(["-f", "-"], ruleset(layout, stale))
    if proc.returncode != 0:
        raise NftError(f"nft refused the table: {_first_line(proc.stderr)}")


def remove() -> bool:
    """Delete the table; False when there was none."""
    proc = _nft(["delete", "table", FAMILY, TABLE])
    if proc.returncode == 0:
        return True
    if "No such file or directory" in proc.stderr:
        return False
    raise NftError(f"nft delete table failed: {_first_line(proc.stderr)}")


@contextlib.contextmanager
def restored() -> Iterator[None]:
    """The table removed on leaving, even on failure, unless it was there before: for tests and
    benchmarks whose root ``collect`` runs make it (network-accounting auto). No-op without root or nft."""
    try:
        before = os.geteuid() != 0 or shutil.which("nft") is None or read_table() is not None
    except NftError:  # nft cannot say (no JSON, no capability): leave whatever is there alone
        before = True
    try:
        yield
    finally:
        if not before:
            try:
                remove()
            except NftError:  # never hide what the body raised
                pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--remove", action="store_true",
                        help=f"delete the table {FAMILY} {TABLE} (the next run re-creates it unless "
                             "network-accounting is sockets or no)")


def run(args: argparse.Namespace) -> int:
    """``slapos-collect network-accounting``: show the table's counters, or remove it."""
    from .errors import CollectError

    try:
        if args.remove:
            print(f"removed table {FAMILY} {TABLE}" if remove() else f"no table {FAMILY} {TABLE}: nothing to remove")
            return 0
        listing = read_table()
    except NftError as exc:
        raise CollectError(str(exc)) from None
    if listing is None:
        print(f"no table {FAMILY} {TABLE}")
        return 0
    for name, (packets, size) in sorted(listing.counters.items()):
        print(f"{name} packets {packets} bytes {size}")
    return 0
