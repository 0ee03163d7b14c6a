"""``slapos-collect cron``: a partition's cron daemon, run as a service.

SlapOS partitions run ``etc/cron.d`` with dcron, which is not available
everywhere; this daemon runs the same files. Each file holds standard crontab
lines (``m h dom mon dow command``, ``@hourly``..., ``@reboot``, and
``NAME=value`` environment lines for the lines below them). Schedules are
parsed by croniter, in local time like cron.

- Each entry's output (stdout and stderr) is appended to
  ``<log-dir>/<file name>.log``, framed by a start and an end line.
- An entry never runs twice at once: a run due while the previous one is still
  going is skipped (and logged).
- The folder is re-read when it changes (polled every ``--poll`` seconds);
  running entries are kept.
- SIGTERM (and SIGINT) stop the daemon cleanly: running entries get SIGTERM,
  then SIGKILL after ``--grace`` seconds; the pid file is removed.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .atomic import write_atomic
from .errors import CollectError
from .lock import Busy, exclusive
from .settings import Setting, add_flags, number, resolve

log = logging.getLogger("slapos_collect.cron")

ENV_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")
NICKNAMES = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly", "@reboot"}


CRON_D = Setting("cron-d", flag="--cron-d", required=True, metavar="DIR", help="folder of crontab files to run")
LOG_DIR = Setting("log-dir", flag="--log-dir", metavar="DIR",
                  help="append each entry's output to DIR/<file>.log (default: the daemon's own output)")
LOG_FILE = Setting("log-file", flag="--log-file", metavar="FILE", help="the daemon's own log (default: stderr)")
PID_FILE = Setting("pid-file", flag="--pid-file", metavar="FILE",
                   help="write the daemon's pid there; refuse to start twice")
CWD = Setting("cwd", flag="--cwd", metavar="DIR", help="directory the entries run in (default: the daemon's)")
POLL = Setting("poll", number(above=0.0, unit="seconds"), 5.0, flag="--poll", metavar="SECONDS",
               help="how often to look for changes in the folder (default: 5)")
GRACE = Setting("grace", number(0.0, unit="seconds"), 10.0, flag="--grace", metavar="SECONDS",
                help="on SIGTERM, how long running entries get before SIGKILL (default: 10)")
SECONDS = Setting("seconds", flag="--seconds", switch=True, default=False,
                  help="lines have a sixth time field, the seconds (m h dom mon dow s command)")
VERBOSE = Setting("verbose", flag=("-v", "--verbose"), switch=True, default=False,
                  help="log every run, not only problems")
SETTINGS = (CRON_D, LOG_DIR, LOG_FILE, PID_FILE, CWD, POLL, GRACE, SECONDS, VERBOSE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, SETTINGS)


# --- parsing ------------------------------------------------------------------

@dataclass
class Entry:
    """One crontab line of one file."""

    file: str
    line: int
    schedule: str
    command: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple:
        return (self.file, self.schedule, self.command, tuple(sorted(self.env.items())))

    @property
    def name(self) -> str:
        return f"{self.file}:{self.line}"


def parse_crontab(name: str, text: str, seconds: bool = False) -> tuple[list[Entry], list[str]]:
    """The entries of one crontab file, and one message per line skipped."""
    from croniter import CroniterBadDateError, croniter

    fields = 6 if seconds else 5
    entries: list[Entry] = []
    problems: list[str] = []
    env: dict[str, str] = {}
    for line_no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = ENV_LINE.match(line)
        if match:
            value = match.group(2).strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            env[match.group(1)] = value
            continue
        if line.startswith("@"):
            parts = line.split(None, 1)
            if parts[0] not in NICKNAMES:
                problems.append(f"{name} line {line_no}: unknown schedule {parts[0]!r}")
                continue
            schedule = parts[0]
            command = parts[1].strip() if len(parts) > 1 else ""
        else:
            parts = line.split(None, fields)
            if len(parts) <= fields:
                problems.append(f"{name} line {line_no}: needs {fields} time fields and a command")
                continue
            schedule, command = " ".join(parts[:fields]), parts[fields].strip()
            if not croniter.is_valid(schedule):
                problems.append(f"{name} line {line_no}: bad schedule {schedule!r}")
                continue
            try:  # valid fields may still never match ("0 0 31 2 *"): such a line would stop the daemon
                croniter(schedule).get_next(datetime)
            except CroniterBadDateError:
                problems.append(f"{name} line {line_no}: schedule {schedule!r} never comes")
                continue
        if not command:
            problems.append(f"{name} line {line_no}: no command")
            continue
        entries.append(Entry(name, line_no, schedule, command, dict(env)))
    return entries, problems


def next_time(entry: Entry, after: datetime) -> datetime | None:
    """When ``entry`` is next due after ``after``; None for @reboot."""
    from croniter import croniter

    if entry.schedule == "@reboot":
        return None
    return croniter(entry.schedule, after).get_next(datetime)


# --- the daemon -----------------------------------------------------------------

@dataclass
class Job:
    """A running entry."""

    process: subprocess.Popen
    started: float
    log_handle: object | None


class Daemon:
    def __init__(self, cron_d: Path, log_dir: Path | None, cwd: str | None, poll: float, grace: float,
                 seconds: bool, verbose: bool) -> None:
        self.cron_d = cron_d
        self.log_dir = log_dir
        self.cwd = cwd
        self.poll = max(0.05, poll)
        self.grace = max(0.0, grace)
        self.seconds = seconds
        self.verbose = verbose
        self.stop = threading.Event()
        self.entries: dict[tuple, Entry] = {}
        self.due: dict[tuple, datetime | None] = {}
        self.running: dict[tuple, Job] = {}
        self.signature: tuple | None = None
        self.started_once: set[tuple] = set()

    # -- the folder --

    def folder_signature(self) -> tuple:
        items = []
        try:
            with os.scandir(self.cron_d) as it:
                for item in it:
                    if self._ignored(item.name):
                        continue
                    try:
                        st = item.stat()
                    except FileNotFoundError:
                        continue
                    items.append((item.name, st.st_mtime_ns, st.st_size, st.st_ino))
        except FileNotFoundError:
            return ("missing",)
        return tuple(sorted(items))

    @staticmethod
    def _ignored(name: str) -> bool:
        # Like cron: hidden files, editor backups and package-manager leftovers.
        suffix = name.rsplit(".", 1)[1] if "." in name else ""
        return name.startswith(".") or name.endswith("~") or suffix in (
            "swp", "dpkg-old", "dpkg-dist", "dpkg-new", "rpmsave", "rpmnew", "tmp")

    def reload(self, now: datetime) -> None:
        """Read the folder again; keep the schedule of unchanged entries."""
        entries: dict[tuple, Entry] = {}
        if not self.cron_d.is_dir():
            log.warning("%s does not exist: nothing to run", self.cron_d)
        else:
            for path in sorted(self.cron_d.iterdir()):
                if self._ignored(path.name) or not path.is_file():
                    continue
                try:
                    text = path.read_text(encoding="utf-8", errors="replace")
                except OSError as exc:
                    log.warning("cannot read %s: %s", path, exc.strerror)
                    continue
                found, problems = parse_crontab(path.name, text, self.seconds)
                for problem in problems:
                    log.warning("%s: skipped", problem)
                for entry in found:
                    entries.setdefault(entry.key, entry)
        added = [k for k in entries if k not in self.entries]
        removed = [k for k in self.entries if k not in entries]
        for key in removed:
            self.due.pop(key, None)
        for key in added:
            entry = entries[key]
            if entry.schedule == "@reboot":
                # Once per daemon start, and for a new @reboot line.
                self.due[key] = now if key not in self.started_once else None
            else:
                self.due[key] = next_time(entry, now)
        self.entries = entries
        if added or removed:
            log.info("%s: %d entries (%d new, %d removed)", self.cron_d, len(entries), len(added), len(removed))

    # -- running --

    def start(self, key: tuple, now: datetime) -> None:
        entry = self.entries[key]
        if key in self.running:
            log.warning("%s is still running (pid %d): this run is skipped", entry.name,
                        self.running[key].process.pid)
            self._log_line(entry, f"{now:%Y-%m-%d %H:%M:%S} skipped: the previous run is still going")
            return
        env = dict(os.environ, **entry.env)
        handle = None
        if self.log_dir is not None:
            handle = open(self.log_dir / f"{entry.file}.log", "ab")  # closed when the job ends
            handle.write(f"{now:%Y-%m-%d %H:%M:%S} start: {entry.command}\n".encode())
            handle.flush()
        try:
            process = subprocess.Popen(
                ["/bin/sh", "-c", entry.command], cwd=self.cwd, env=env, stdin=subprocess.DEVNULL,
                stdout=handle, stderr=subprocess.STDOUT if handle else None, start_new_session=True,
            )
        except OSError as exc:
            log.error("%s: cannot start: %s", entry.name, exc)
            if handle:
                handle.write(f"cannot start: {exc}\n".encode())
                handle.close()
            return
        self.started_once.add(key)
        self.running[key] = Job(process, time.monotonic(), handle)
        if self.verbose:
            log.info("%s started (pid %d): %s", entry.name, process.pid, entry.command)

    def reap(self) -> None:
        for key, job in list(self.running.items()):
            code = job.process.poll()
            if code is None:
                continue
            del self.running[key]
            entry = self.entries.get(key)
            name = entry.name if entry else key[0]
            elapsed = time.monotonic() - job.started
            if job.log_handle is not None:
                job.log_handle.write(
                    f"{datetime.now():%Y-%m-%d %H:%M:%S} end: exit {code} after {elapsed:.1f} s\n".encode())
                job.log_handle.close()
            if code != 0:
                log.warning("%s exited with %d after %.1f s", name, code, elapsed)
            elif self.verbose:
                log.info("%s done in %.1f s", name, elapsed)

    def _log_line(self, entry: Entry, text: str) -> None:
        if self.log_dir is None:
            return
        with open(self.log_dir / f"{entry.file}.log", "ab") as handle:
            handle.write(text.encode() + b"\n")

    def run(self) -> None:
        now = datetime.now()
        self.signature = self.folder_signature()
        self.reload(now)
        last_poll = time.monotonic()
        previous = now
        while not self.stop.is_set():
            self.reap()
            now = datetime.now()
            if now < previous:
                # The clock went back: schedule again from the new time.
                log.warning("the clock went back by %s: rescheduling", previous - now)
                for key, entry in self.entries.items():
                    if self.due.get(key) is not None:
                        self.due[key] = next_time(entry, now)
            previous = now
            if time.monotonic() - last_poll >= self.poll:
                last_poll = time.monotonic()
                signature = self.folder_signature()
                if signature != self.signature:
                    self.signature = signature
                    self.reload(now)
            for key, due in list(self.due.items()):
                if due is not None and due <= now:
                    self.start(key, now)
                    entry = self.entries[key]
                    self.due[key] = next_time(entry, now)
            wait = self.poll - (time.monotonic() - last_poll)
            pending = [d for d in self.due.values() if d is not None]
            if pending:
                wait = min(wait, (min(pending) - datetime.now()).total_seconds())
            if self.running:
                wait = min(wait, 0.5)  # reap promptly
            self.stop.wait(max(0.01, min(wait, 60.0)))
        self.shutdown()

    def shutdown(self) -> None:
        if self.running:
            log.info("stopping %d running entries", len(self.running))
        for job in self.running.values():
            _signal_group(job.process, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while self.running and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.05)
        for job in self.running.values():
            _signal_group(job.process, signal.SIGKILL)
            job.process.wait()
        self.reap()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run(args: argparse.Namespace) -> int:
    from .config import setup_logging

    got = resolve(SETTINGS, args)
    log_file, cwd, verbose = got[LOG_FILE.key], got[CWD.key], got[VERBOSE.key]
    setup_logging(log_file, verbose=verbose, long_running=True)
    if log_file is None:
        # A service: supervisord keeps stderr; say what happens at INFO too.
        logging.getLogger("slapos_collect").handlers[0].setLevel(logging.INFO)
        logging.getLogger("slapos_collect").setLevel(logging.INFO)
    try:
        import croniter  # noqa: F401
    except ImportError:
        raise CollectError("the cron daemon needs croniter (a dependency of slapos_collect_recipe): pip install croniter") from None
    cron_d = Path(got[CRON_D.key]).absolute()
    if not cron_d.is_dir():
        raise CollectError(f"cron folder {cron_d} does not exist")
    log_dir = Path(got[LOG_DIR.key]).absolute() if got[LOG_DIR.key] else None
    if log_dir is not None:
        try:
            log_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        except OSError as exc:
            raise CollectError(f"cannot create log dir {log_dir}: {exc.strerror}") from None
    if cwd and not os.path.isdir(cwd):
        raise CollectError(f"--cwd {cwd} is not a directory")

    daemon = Daemon(cron_d, log_dir, cwd, got[POLL.key], got[GRACE.key], got[SECONDS.key], verbose)

    def on_signal(signum, _frame) -> None:
        log.info("signal %d: stopping", signum)
        daemon.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if not got[PID_FILE.key]:
        daemon.run()
        return 0
    pid_file = Path(got[PID_FILE.key]).absolute()
    lock_path = pid_file.with_name(pid_file.name + ".lock")
    try:
        with exclusive(lock_path):
            write_atomic(pid_file, f"{os.getpid()}\n")
            try:
                daemon.run()
            finally:
                try:
                    pid_file.unlink()
                except FileNotFoundError:
                    pass
    except Busy:
        raise CollectError(f"another cron daemon holds {lock_path}") from None
    except FileNotFoundError:
        raise CollectError(f"cannot write the pid file {pid_file}: its folder does not exist") from None
    log.info("stopped")
    return 0
