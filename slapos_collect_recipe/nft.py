"""The collector's own nftables table: per-partition counters, nothing else.

``table inet slapos_collect`` holds two base chains (``input`` and ``output``,
priority 300, after the usual filter and NAT chains, ``policy accept``) whose
rules only count: per partition one named counter per direction for its
processes (``meta skuid``, matched first; ``return`` only ends this table's
chain, so the packet goes on exactly as without the table), then one per
partition address and direction (``ip daddr`` in, ``ip saddr`` out). No rule
drops, delays, marks or rewrites a packet; no other table is read or touched.

One ``nft -j list table`` per run reads every counter; a ``nft -f -``
transaction, only when the table is missing or not what the settings ask,
brings it up to date atomically (named counters keep their values).
``slapos-collect network-accounting --remove`` deletes the table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

TABLE = "slapos_collect"
FAMILY = "inet"
PRIORITY = 300
TIMEOUT = 20


class NftError(Exception):
    """nft is missing or refused: the caller falls back."""


@dataclass(frozen=True)
class Rule:
    chain: str  # input or output
    match: str  # nft match expression
    counter: str


def counter_name(label: str, direction: str, key: str) -> str:
    """A stable counter name for (partition, direction, uid or address): nft's names are plain words."""
    word = re.sub(r"[^A-Za-z0-9]", "_", label)[:40]
    digest = hashlib.sha1(f"{label}\0{direction}\0{key}".encode()).hexdigest()[:10]
    return f"{word}_{direction}_{digest}"


def build_rules(partitions: list[tuple[str, int | None, list[str]]]) -> list[Rule]:
    """The rules for ``(label, uid, addresses)``: uid rules first, then per address.

    Addresses are text, already checked; IPv6 ones contain a colon."""
    rules: list[Rule] = []
    for label, uid, _addresses in partitions:
        if uid is not None:
            for chain, direction in (("input", "in"), ("output", "out")):
                rules.append(Rule(chain, f"meta skuid {uid}", counter_name(label, direction, f"uid{uid}")))
    for label, _uid, addresses in partitions:
        for address in addresses:
            proto = "ip6" if ":" in address else "ip"
            rules.append(Rule("input", f"{proto} daddr {address}", counter_name(label, "in", address)))
            rules.append(Rule("output", f"{proto} saddr {address}", counter_name(label, "out", address)))
    return rules


def ruleset(rules: list[Rule], stale_counters: list[str]) -> str:
    """One transaction that makes the table exactly ``rules``, keeping the counters' values."""
    lines = [f"add table {FAMILY} {TABLE}"]
    for chain in ("input", "output"):
        lines.append(f"add chain {FAMILY} {TABLE} {chain} "
                     f"{{ type filter hook {chain} priority {PRIORITY}; policy accept; }}")
        lines.append(f"flush chain {FAMILY} {TABLE} {chain}")
    for name in sorted({r.counter for r in rules}):
        lines.append(f"add counter {FAMILY} {TABLE} {name}")
    for rule in rules:
        # Only a uid rule returns: the packet is its partition's, the address rules need not see it.
        tail = " return" if rule.match.startswith("meta skuid") else ""
        lines.append(f'add rule {FAMILY} {TABLE} {rule.chain} {rule.match} counter name "{rule.counter}"{tail}')
    for name in stale_counters:
        lines.append(f"delete counter {FAMILY} {TABLE} {name}")
    return "\n".join(lines) + "\n"


def _nft(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    binary = shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft") if os.access(p, os.X_OK)), None)
    if binary is None:
        raise NftError("the nft command is not installed")
    try:
        return subprocess.run([binary, *args], input=stdin, capture_output=True, text=True, timeout=TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NftError(f"nft did not run: {exc}") from None


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no message")


@dataclass
class Listing:
    """What ``nft -j list table`` showed: counters and the rules' (chain, counter) pairs."""

    counters: dict[str, tuple[int, int]]  # name -> (packets, bytes)
    rules: dict[str, list[str]]  # chain -> its rules' counters, in order
    chains: set[str]


def read_table() -> Listing | None:
    """The table's counters and rules, or None when the table does not exist."""
    proc = _nft(["-j", "list", "table", FAMILY, TABLE])
    if proc.returncode != 0:
        if "No such file or directory" in proc.stderr:
            return None
        raise NftError(f"nft list table failed: {_first_line(proc.stderr)}")
    try:
        items = json.loads(proc.stdout)["nftables"]
    except (ValueError, KeyError, TypeError):
        raise NftError("nft -j printed no JSON") from None
    listing = Listing({}, {}, set())
    for item in items:
        if "counter" in item:
            c = item["counter"]
            listing.counters[c["name"]] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
        elif "chain" in item:
            c = item["chain"]
            if c.get("hook") == c.get("name") and c.get("policy") == "accept" and c.get("prio") == PRIORITY:
                listing.chains.add(c["name"])
        elif "rule" in item:
            r = item["rule"]
            named = [e["counter"] for e in r.get("expr", []) if isinstance(e.get("counter"), str)]
            if named:
                listing.rules.setdefault(r["chain"], []).append(named[0])
    return listing


def up_to_date(listing: Listing, rules: list[Rule]) -> bool:
    """The table holds exactly these rules, in order, with their counters and both chains."""
    return (listing.chains == {"input", "output"}
            and listing.rules == chain_counters(rules)
            and all(r.counter in listing.counters for r in rules))


def chain_counters(rules: list[Rule]) -> dict[str, list[str]]:
    """chain -> the counters its rules name, in order (what a listing shows)."""
    chains: dict[str, list[str]] = {}
    for rule in rules:
        chains.setdefault(rule.chain, []).append(rule.counter)
    return chains


def apply(rules: list[Rule], listing: Listing | None) -> None:
    """Create the table or bring it to ``rules`` in one transaction."""
    wanted = {r.counter for r in rules}
    stale = sorted(set(listing.counters) - wanted) if listing else []
    proc = _nft(["-f", "-"], ruleset(rules, stale))
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
