"""``slapos-collect availability``: server availability from the SlapOS master's access logs.

Every SlapOS node calls the master several times a minute with its computer
reference in the request (``computer_id=COMP-...``), so the master's access
log tells, minute by minute, whether each server could reach it.

Reading is one streaming pass over the files (plain or gzip, any order,
overlapping). Memory is bounded by the number of computers times the number of
days with contacts, never by the number of lines: per computer and day, two
byte arrays with one byte per minute hold the first and the last second of
contact in that minute (0 = no contact), about 3 KB.

Speed: a Python loop that parses every line costs about 2 us a line. Instead, a
run of lines with the same stamp (to the second), found with ``bytes.rfind``
and checked with ``bytes.count`` (in C), is one block: one ``findall`` gives
its computer ids, and Python touches each id once more when the minute is
folded into first/last seconds, then each computer once per minute. A line out
of order, or garbage, makes the block shrink down to single lines, which stay
correct.
"""

from __future__ import annotations

import argparse
import calendar
import csv
import datetime as dt
import gzip
import hashlib
import io
import json
import os
import re
import sys
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from .atomic import write_atomic
from .errors import CollectError
from .progress import Progress

FORMAT = "slapos-collect-availability/1"
DEFAULT_PATTERN = r"computer_id=(COMP-[A-Za-z0-9_.-]+)"
DEFAULT_GAP = 300
# Only the first and last second of each minute are kept, so a gap is known
# exactly only when it spans a whole silent minute: shorter gaps cannot be told.
MIN_GAP = 120
CHUNK = 4 << 20
MAX_LINE = 1 << 20
DAY_MINUTES = 1440
LOWEST = 10
_PENDING_MINUTES = 8  # minutes kept before folding (lines written late join them)
MAX_DAYS = 366  # longest period reported (a stray stamp years away must not make a huge report)

_MONTHS = {m.encode(): i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
# [dd/Mon/yyyy:HH:MM:SS +zzzz]: 28 bytes, the only part of a line that must parse.
_MINUTE = re.compile(rb"\[(\d\d)/([A-Z][a-z][a-z])/(\d{4}):(\d\d):(\d\d): ([+-])(\d\d)(\d\d)\]")
_STAMP_LEN = 28
_ZERO_RUNS = re.compile(rb"\x00+")
_NONZERO = re.compile(rb"[^\x00]")
# Stored per minute: 60 - first second (so that max() keeps the earliest) and last second + 1.
_FIRST = {b"%02d" % s: 60 - s for s in range(60)} | {b"60": 1}
_LAST = {b"%02d" % s: s + 1 for s in range(60)} | {b"60": 60}


class FileFailed(Exception):
    """A file that could not be read (wholly or partly); the others still are."""


@dataclass
class FileStats:
    path: str
    lines: int = 0
    contacts: int = 0
    ignored: int = 0
    unparsable: int = 0
    outside_period: int = 0
    error: str | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("logs", nargs="+", metavar="LOG",
                        help="access logs (combined or common format, plain or gzip), in any order")
    parser.add_argument("-o", "--output", metavar="FILE", default="-",
                        help="write the JSON there (atomically) instead of stdout")
    parser.add_argument("--since", metavar="DAY", help="first UTC day (YYYY-MM-DD) of the period")
    parser.add_argument("--until", metavar="DAY", help="last UTC day (YYYY-MM-DD) of the period, included")
    parser.add_argument("--gap", metavar="SECONDS", type=int, default=DEFAULT_GAP,
                        help=f"a silence longer than this is an outage (default {DEFAULT_GAP}, at least {MIN_GAP})")
    parser.add_argument("--csv", metavar="DIR",
                        help="also write one CSV per computer (hourly availability, for dygraph) into DIR")
    parser.add_argument("--pattern", metavar="REGEX", default=DEFAULT_PATTERN,
                        help="regular expression whose group 1 (or whole match) is the computer id "
                             f"(default {DEFAULT_PATTERN!r})")


def run(args: argparse.Namespace) -> int:
    since = _parse_day(args.since, "--since")
    until = _parse_day(args.until, "--until")
    if since is not None and until is not None and until < since:
        raise CollectError(f"--until {args.until} is before --since {args.since}")
    if since is not None and until is not None and until - since + 1 > MAX_DAYS:
        raise CollectError(f"--since {args.since} --until {args.until} is more than {MAX_DAYS} days")
    if args.gap < MIN_GAP:
        raise CollectError(f"--gap must be at least {MIN_GAP} seconds (minute resolution), not {args.gap}")
    output = None if args.output == "-" else Path(args.output)
    if output is not None and not output.parent.is_dir():
        raise CollectError(f"output directory {output.parent} does not exist")
    if output is not None and output.is_dir():
        raise CollectError(f"output {output} is a directory")
    csv_dir = Path(args.csv) if args.csv else None
    if csv_dir is not None and csv_dir.exists() and not csv_dir.is_dir():
        raise CollectError(f"CSV directory {csv_dir} is not a directory")
    if csv_dir is not None and not csv_dir.is_dir() and not csv_dir.parent.is_dir():
        raise CollectError(f"CSV directory {csv_dir}: parent directory {csv_dir.parent} does not exist")

    analyser = Analyser(args.pattern, since=since, until=until)
    progress = Progress(sum(_size(path) for path in args.logs)) if sys.stderr.isatty() else None
    stats = []
    for path in args.logs:
        st = FileStats(path)
        try:
            analyser.read(path, st, progress)
        except FileFailed as exc:
            st.error = str(exc)
            if progress:
                progress.clear()
            print(f"slapos-collect availability: error: {path}: {exc}", file=sys.stderr)
        stats.append(st)
    if progress:
        progress.clear()
    for st in stats:
        if st.unparsable and st.error is None:
            print(f"slapos-collect availability: warning: {st.path}: {st.unparsable} of {st.lines} lines "
                  "could not be parsed (skipped)", file=sys.stderr)

    document = analyser.report(stats, gap=args.gap, pattern=args.pattern)
    text = json.dumps(document, indent=1, sort_keys=False) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        write_atomic(output, text)
    if csv_dir is not None:
        if not csv_dir.is_dir():
            csv_dir.mkdir()
        for name, content in analyser.hourly_csvs(gap=args.gap):
            write_atomic(csv_dir / name, content)
    return 1 if any(st.error for st in stats) else 0


def _parse_day(value: str | None, flag: str) -> int | None:
    """A YYYY-MM-DD day as a day number since the epoch."""
    if value is None:
        return None
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        raise CollectError(f"{flag} must be a day as YYYY-MM-DD, not {value!r}") from None
    if len(value) != 10:
        raise CollectError(f"{flag} must be a day as YYYY-MM-DD, not {value!r}")
    return (day - dt.date(1970, 1, 1)).days


def compile_pattern(pattern: str) -> tuple[re.Pattern, re.Pattern]:
    """(find every id, one item per line) regexes built from ``--pattern``."""
    try:
        rx = re.compile(pattern.encode())
    except (re.error, UnicodeEncodeError) as exc:
        raise CollectError(f"--pattern {pattern!r} is not a valid regular expression: {exc}") from None
    if rx.groups > 1:
        raise CollectError(f"--pattern {pattern!r} must have at most one group (the computer id)")
    body = rx.pattern if rx.groups == 1 else b"(" + rx.pattern + b")"
    ids = re.compile(body)
    # One item per line: the first id of the line, or b"" for a line with none.
    aligned = re.compile(b"(?:" + body + b").*\n|\n")
    return ids, aligned


class Analyser:
    """Reads access logs into per-computer minute maps, then reports on them."""

    def __init__(self, pattern: str = DEFAULT_PATTERN, since: int | None = None, until: int | None = None):
        self.ids, self.aligned = compile_pattern(pattern)
        self.since, self.until = since, until
        self.lo = since * DAY_MINUTES if since is not None else -(1 << 62)
        self.hi = (until + 1) * DAY_MINUTES if until is not None else 1 << 62
        # day -> computer -> (60 - first second, last second + 1) for each minute of
        # the day, 0 without contact: only days with a contact take memory, so a
        # stray stamp years away costs 3 KB, not years of minutes.
        self.days: dict[int, dict[bytes, tuple[bytearray, bytearray]]] = {}
        self.stamps: dict[bytes, int] = {}  # stamp -> epoch minute (-1: invalid)
        self.minutes: dict[bytes, int] = {}  # stamp less its seconds -> epoch minute
        # minute -> blocks of (second, ids) of its lines, not yet folded into the maps
        self.pending: dict[int, list[tuple[bytes, list[bytes]]]] = {}
        self.window = 1 << 16

    # -- reading ---------------------------------------------------------------

    def read(self, path: str, st: FileStats, progress: Progress | None = None) -> None:
        try:
            raw = open(path, "rb")  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            raise FileFailed("no such file") from None
        except IsADirectoryError:
            raise FileFailed("is a directory") from None
        except PermissionError:
            raise FileFailed("permission denied") from None
        except OSError as exc:
            raise FileFailed(exc.strerror or str(exc)) from None
        with raw:
            try:
                compressed = raw.peek(2)[:2] == b"\x1f\x8b"
                stream = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
                self._read_stream(_chunks(stream, compressed), raw, st, progress)
            except EOFError:
                raise FileFailed("truncated gzip file (the lines before the cut were used)") from None
            except (gzip.BadGzipFile, zlib.error) as exc:
                raise FileFailed(f"corrupt gzip data ({exc}; the lines before it were used)") from None
            except IsADirectoryError:
                raise FileFailed("is a directory") from None
            except OSError as exc:
                raise FileFailed(f"read error: {exc.strerror or exc}") from None
            finally:
                self.flush()
                if progress:
                    progress.advance(_size(path))

    def _read_stream(self, chunks: Iterator[bytes], raw: io.BufferedReader, st: FileStats,
                     progress: Progress | None) -> None:
        rest = b""
        skipping = False  # inside an over-long line
        checked = False
        for data in chunks:
            if skipping:
                cut = data.find(b"\n")
                if cut < 0:
                    continue
                data, skipping = data[cut + 1:], False
            if rest:
                data = rest + data
            cut = data.rfind(b"\n") + 1
            if cut:
                self.scan(data, 0, cut, st)
            rest = data[cut:]
            if len(rest) > MAX_LINE:
                st.lines += 1
                st.unparsable += 1
                rest, skipping = b"", True
            if not checked:
                checked = True
                self._check_is_log(st)
            if progress:
                position = raw.tell()
                progress.draw(f"{progress.rate(position) / 1e6:.0f} MB/s ", position)
        if rest:
            self.scan(rest + b"\n", 0, len(rest) + 1, st)
        if not checked:
            self._check_is_log(st)

    @staticmethod
    def _check_is_log(st: FileStats) -> None:
        if st.lines and st.unparsable == st.lines:
            raise FileFailed(f"not an access log: none of its first {st.lines} lines has a "
                             "[dd/Mon/yyyy:HH:MM:SS +zone] timestamp")

    def scan(self, buf: bytes, pos: int, end: int, st: FileStats) -> None:
        """Account for the whole lines of ``buf[pos:end]`` (``buf[end - 1]`` is a newline).

        A block is a line and the following ones with the same stamp (to the
        second), found with ``rfind`` and checked by counting. A line out of
        order (Apache stamps a request when it starts and writes it when it
        ends) makes the search window shrink, down to single lines.
        """
        find, rfind, count = buf.find, buf.rfind, buf.count
        stamps = self.stamps
        findall = self.ids.findall
        pending = self.pending
        lo, hi = self.lo, self.hi
        window = self.window
        lines = unparsable = outside = ignored = contacts = 0
        while pos < end:
            nl = find(b"\n", pos, end)
            b = find(b"[", pos, nl)
            if b < 0 or nl - b < _STAMP_LEN:
                lines += 1
                unparsable += 1
                pos = nl + 1
                continue
            stamp = buf[b:b + _STAMP_LEN]
            minute = stamps.get(stamp)
            if minute is None:
                minute = self._parse_stamp(stamp)
            if minute < 0:
                lines += 1
                unparsable += 1
                pos = nl + 1
                continue
            lim = pos + window
            p = rfind(stamp, nl, lim if lim < end else end)
            if p < 0:
                e, n = nl + 1, 1
            else:
                e = find(b"\n", p, end) + 1
                n = count(b"\n", pos, e)
                if count(stamp, pos, e) != n:
                    # Halve the window, and at least leave out the last line found.
                    window = min((e - pos) // 2, rfind(b"\n", pos, p) + 1 - pos)
                    continue
            lines += n
            window = (e - pos) * 3 // 2 + 1024
            if minute < lo or minute >= hi:
                outside += n
            else:
                ids = findall(buf, pos, e)
                if not ids:
                    ignored += n
                else:
                    if len(ids) != n:
                        ids = ids[:1] if n == 1 else self._ids_per_line(buf, pos, e, n)
                        found = n - ids.count(b"")
                        contacts += found
                        ignored += n - found
                    else:
                        contacts += n
                    blocks = pending.get(minute)
                    if blocks is None:
                        blocks = self._new_minute(minute)
                    blocks.append((stamp[19:21], ids))
            pos = e
        self.window = window
        st.lines += lines
        st.unparsable += unparsable
        st.outside_period += outside
        st.ignored += ignored
        st.contacts += contacts

    def _new_minute(self, minute: int) -> list[tuple[bytes, list[bytes]]]:
        """The pending blocks of a new minute; the oldest minutes are folded when there are many.

        A few minutes stay pending so that lines written late join theirs.
        """
        if len(self.pending) >= _PENDING_MINUTES:
            for old in sorted(self.pending)[:-_PENDING_MINUTES // 2]:
                self._fold(old, self.pending.pop(old))
        blocks = self.pending[minute] = []
        return blocks

    def _ids_per_line(self, buf: bytes, pos: int, e: int, n: int) -> list[bytes]:
        """The first id of each of the ``n`` lines of ``buf[pos:e]``, b"" for a line without."""
        ids = self.aligned.findall(buf, pos, e)
        if len(ids) != n:
            ids = [m.group(1) if m else b"" for m in map(self.ids.search, buf[pos:e].split(b"\n")[:-1])]
        return ids

    def flush(self) -> None:
        """Fold every pending minute into the computers' maps."""
        for minute in sorted(self.pending):
            self._fold(minute, self.pending.pop(minute))

    def _fold(self, minute: int, blocks: list[tuple[bytes, list[bytes]]]) -> None:
        """Fold the blocks (second, ids) of ``minute`` into each computer's first/last second."""
        blocks.sort(key=_by_second)
        first: dict[bytes, bytes] = {}
        last: dict[bytes, bytes] = {}
        for second, ids in blocks:
            for comp in ids:
                if comp not in last:
                    first[comp] = second
                last[comp] = second
        last.pop(b"", None)
        day, idx = divmod(minute, DAY_MINUTES)
        maps = self.days.get(day)
        if maps is None:
            maps = self.days[day] = {}
        for comp, sec in last.items():
            pair = maps.get(comp)
            if pair is None:
                pair = maps[comp] = (bytearray(DAY_MINUTES), bytearray(DAY_MINUTES))
            fmap, lmap = pair
            v = _FIRST[first[comp]]
            if v > fmap[idx]:
                fmap[idx] = v
            v = _LAST[sec]
            if v > lmap[idx]:
                lmap[idx] = v

    def _parse_stamp(self, stamp: bytes) -> int:
        """Epoch minute (UTC) of a ``[dd/Mon/yyyy:HH:MM:SS +zzzz]`` stamp, -1 if it is not one."""
        if len(self.stamps) > 20_000:
            self.stamps.clear()
            self.minutes.clear()
        key = stamp[:19] + stamp[21:]
        minute = self.minutes.get(key)
        if minute is None:
            minute = self.minutes[key] = _parse_minute(key)
        if minute >= 0 and stamp[19:21] not in _LAST:
            minute = -1
        self.stamps[stamp] = minute
        return minute

    # -- reporting -------------------------------------------------------------

    def _windows(self) -> tuple[int, int, dict[bytes, tuple[int, int]]]:
        """Per computer its first and last contact (epoch s); the fleet's first and last."""
        firsts: dict[bytes, int] = {}
        lasts: dict[bytes, tuple[int, bytearray]] = {}
        for day in sorted(self.days):
            for comp, (fmap, lmap) in self.days[day].items():
                if comp not in firsts:
                    i = _NONZERO.search(fmap).start()
                    firsts[comp] = (day * DAY_MINUTES + i) * 60 + 60 - fmap[i]
                lasts[comp] = (day, lmap)
        contacts = {}
        for comp, (day, lmap) in lasts.items():
            j = len(lmap.rstrip(b"\x00")) - 1
            contacts[comp] = (firsts[comp], (day * DAY_MINUTES + j) * 60 + lmap[j] - 1)
        fleet_first = min(c[0] for c in contacts.values())
        fleet_last = max(c[1] for c in contacts.values())
        return fleet_first, fleet_last, contacts

    def _expected(self, first_contact: int, fleet_last: int) -> tuple[int, int, int, int]:
        """When a computer is expected to call: seconds [t0, t1] and epoch minutes [lo, hi).

        From --since (or its own first contact) to the end of --until (or the
        last contact of any computer: the end of the logs).
        """
        t0 = self.since * 86400 if self.since is not None else first_contact
        t1 = (self.until + 1) * 86400 if self.until is not None else fleet_last
        hi = (self.until + 1) * DAY_MINUTES if self.until is not None else t1 // 60 + 1
        return t0, t1, t0 // 60, hi

    def _timeline(self, comp: bytes, lo: int, hi: int) -> tuple[int, bytes, bytes]:
        """(first minute, first-second map, last-second map) of ``comp`` over whole days covering [lo, hi)."""
        zero = bytes(DAY_MINUTES)
        empty = (zero, zero)
        pairs = [self.days.get(day, {}).get(comp, empty)
                 for day in range(lo // DAY_MINUTES, (hi - 1) // DAY_MINUTES + 1)]
        return (lo // DAY_MINUTES * DAY_MINUTES, b"".join(p[0] for p in pairs), b"".join(p[1] for p in pairs))

    def _computer(self, comp: bytes, first_contact: int, last_contact: int, fleet_last: int, gap: int) -> dict:
        t0, t1, lo_minute, hi_minute = self._expected(first_contact, fleet_last)
        base, fmap, lmap = self._timeline(comp, lo_minute, hi_minute)
        lo, hi = lo_minute - base, hi_minute - base

        def first_at(i: int) -> int:
            return (base + i) * 60 + 60 - fmap[i]

        def last_at(i: int) -> int:
            return (base + i) * 60 + lmap[i] - 1

        outages = []
        for m in _ZERO_RUNS.finditer(fmap, lo, hi):
            a, b = m.span()
            start = t0 if a == lo else last_at(a - 1)
            stop = t1 if b == hi else first_at(b)
            if stop - start > gap:
                outages.append((start, stop, "start" if a == lo else "end" if b == hi else None))

        days = {}
        total_up = 0
        for day in range((base + lo) // DAY_MINUTES, (base + hi - 1) // DAY_MINUTES + 1):
            a = max(lo, day * DAY_MINUTES - base)
            b = min(hi, (day + 1) * DAY_MINUTES - base)
            up = (b - a) - fmap.count(0, a, b)
            total_up += up
            entry = {
                "first_contact": None, "last_contact": None,
                "minutes_up": up, "minutes_expected": b - a,
                "availability": _percent(up, b - a),
                "outage_seconds": 0, "outages": [],
            }
            if up:
                part = fmap[a:b]
                entry["first_contact"] = _iso(first_at(a + len(part) - len(part.lstrip(b"\x00"))))
                entry["last_contact"] = _iso(last_at(a + len(part.rstrip(b"\x00")) - 1))
            d0, d1 = day * 86400, (day + 1) * 86400
            for start, stop, edge in outages:
                if start < d1 and stop > d0:
                    entry["outages"].append(_outage(start, stop, edge))
                    entry["outage_seconds"] += min(stop, d1) - max(start, d0)
            days[_day(day)] = entry
        return {
            "first_contact": _iso(first_contact),
            "last_contact": _iso(last_contact),
            "expected_start": _iso(t0),
            "expected_end": _iso(t1),
            "minutes_up": total_up,
            "minutes_expected": hi - lo,
            "availability": _percent(total_up, hi - lo),
            "outage_seconds": sum(stop - start for start, stop, _ in outages),
            "outages": [_outage(*o) for o in outages],
            "days": days,
        }

    def _check_span(self, fleet_first: int, fleet_last: int) -> None:
        first = self.since if self.since is not None else fleet_first // 86400
        last = self.until if self.until is not None else fleet_last // 86400
        if last - first + 1 > MAX_DAYS:
            raise CollectError(
                f"the logs span {last - first + 1} days ({_day(first)} to {_day(last)}), more than {MAX_DAYS}: "
                "choose the period with --since/--until")

    def report(self, stats: Iterable[FileStats], gap: int = DEFAULT_GAP, pattern: str = DEFAULT_PATTERN) -> dict:
        """The stats.json document (schema: availability.schema.json)."""
        self.flush()
        files = [asdict(st) for st in stats]
        inputs = {"files": files}
        for key in ("lines", "contacts", "ignored", "unparsable", "outside_period"):
            inputs[key] = sum(f[key] for f in files)
        inputs["failed_files"] = sum(1 for f in files if f["error"])
        computers = {}
        period = None
        if self.days:
            fleet_first, fleet_last, contacts = self._windows()
            self._check_span(fleet_first, fleet_last)
            start = self.since * 86400 if self.since is not None else fleet_first
            end = (self.until + 1) * 86400 if self.until is not None else fleet_last
            period = {"start": _iso(start), "end": _iso(end)}
            for comp in sorted(contacts):
                name = comp.decode("utf-8", "replace")
                computers[name] = self._computer(comp, *contacts[comp], fleet_last, gap)
        return {
            "format": FORMAT,
            "parameters": {
                "gap_seconds": gap,
                "since": _day(self.since) if self.since is not None else None,
                "until": _day(self.until) if self.until is not None else None,
                "pattern": pattern,
            },
            "period": period,
            "inputs": inputs,
            "fleet": _fleet(computers),
            "computers": computers,
        }

    def hourly_csvs(self, gap: int = DEFAULT_GAP) -> Iterable[tuple[str, str]]:
        """(file name, content) per computer: ``time,entry`` = % of the hour's expected minutes up."""
        self.flush()
        if not self.days:
            return
        _, fleet_last, contacts = self._windows()
        for comp in sorted(contacts):
            _, _, lo, hi = self._expected(contacts[comp][0], fleet_last)
            base, fmap, _ = self._timeline(comp, lo, hi)
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(["time", "entry"])
            for hour in range(lo // 60, (hi - 1) // 60 + 1):
                a = max(lo, hour * 60) - base
                b = min(hi, (hour + 1) * 60) - base
                up = (b - a) - fmap.count(0, a, b)
                writer.writerow([time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(hour * 3600)), _percent(up, b - a)])
            name = comp.decode("utf-8", "replace")
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
            if safe != name:  # a custom --pattern let other characters in: keep the names apart
                safe += "-" + hashlib.sha256(comp).hexdigest()[:8]
            yield f"availability_{safe}.csv", out.getvalue()


def _chunks(stream: io.BufferedIOBase, compressed: bool) -> Iterator[bytes]:
    """The file's bytes in pieces of about CHUNK; a gzip stream cut short still yields what came before."""
    if not compressed:
        while data := stream.read(CHUNK):
            yield data
        return
    parts: list[bytes] = []
    size = 0
    try:
        while data := stream.read1(CHUNK):
            parts.append(data)
            size += len(data)
            if size >= CHUNK:
                yield b"".join(parts)
                parts, size = [], 0
    except (EOFError, OSError, zlib.error):
        if parts:
            yield b"".join(parts)
        raise
    if parts:
        yield b"".join(parts)


def _parse_minute(key: bytes) -> int:
    """Epoch minute of ``[dd/Mon/yyyy:HH:MM:`` + `` +zzzz]``, -1 if invalid."""
    m = _MINUTE.fullmatch(key)
    if m is None:
        return -1
    d, mon, y, hh, mm, sign, zh, zm = m.groups()
    month = _MONTHS.get(mon)
    try:
        if month is None or int(zm) > 59:
            return -1
        dt.datetime(int(y), month, int(d), int(hh), int(mm))
    except ValueError:
        return -1
    offset = int(zh) * 60 + int(zm)
    minute = calendar.timegm((int(y), month, int(d), int(hh), int(mm), 0)) // 60
    return minute + offset if sign == b"-" else minute - offset


def _by_second(block: tuple[bytes, list[bytes]]) -> bytes:
    return block[0]


def _fleet(computers: dict[str, dict]) -> dict:
    days: dict[str, dict] = {}
    for info in computers.values():
        for day, entry in info["days"].items():
            agg = days.setdefault(day, {"computers": 0, "minutes_up": 0, "minutes_expected": 0,
                                        "outages": 0, "outage_seconds": 0})
            agg["computers"] += 1
            agg["minutes_up"] += entry["minutes_up"]
            agg["minutes_expected"] += entry["minutes_expected"]
            agg["outages"] += len(entry["outages"])
            agg["outage_seconds"] += entry["outage_seconds"]
    for agg in days.values():
        agg["availability"] = _percent(agg["minutes_up"], agg["minutes_expected"])
    up = sum(c["minutes_up"] for c in computers.values())
    expected = sum(c["minutes_expected"] for c in computers.values())
    ranked = sorted(computers.items(), key=lambda kv: (kv[1]["availability"], kv[0]))
    return {
        "computers": len(computers),
        "minutes_up": up,
        "minutes_expected": expected,
        "availability": _percent(up, expected),
        "mean_availability": round(sum(c["availability"] for c in computers.values()) / len(computers), 3)
        if computers else None,
        "outages": sum(len(c["outages"]) for c in computers.values()),
        "outage_seconds": sum(c["outage_seconds"] for c in computers.values()),
        "lowest": [{"computer": name, "availability": c["availability"]} for name, c in ranked[:LOWEST]],
        "days": {day: days[day] for day in sorted(days)},
    }


def _percent(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 3) if whole > 0 else None


def _iso(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _day(day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86400))


def _outage(start: int, stop: int, edge: str | None) -> dict:
    return {"start": _iso(start), "end": _iso(stop), "seconds": stop - start, "edge": edge}


def _size(path: str) -> int:
    """A log's size for the progress bar (0 when it cannot be read)."""
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
