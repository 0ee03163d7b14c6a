"""``slapos-collect collect``: one run, as cron starts it every minute.

sample -> store (one transaction) -> publish: today's CSVs, each partition's
SlapOS monitor JSON, then past days' archives and garbage collection when any
is due (``_publish``). A run that finds the previous one still working exits 0
at once, so cron never piles runs up.
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from . import config, folder, lock, sample, traffic
from .config import CollectSettings
from .datafiles import DB_NAME
from .errors import CollectError
from .settings import Setting, add_flags, resolve
from .snapshot import RunSnapshot
from .store import Store, describe_error, share_read_only

log = logging.getLogger("slapos_collect")


VERBOSE = Setting("verbose", flag=("-v", "--verbose"), switch=True, default=False, help="log every step")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, (*config.COMMON_FLAGS, *config.PARTITION_FLAGS, config.MEMORY_CYCLE, *config.NETWORK_FLAGS,
                       VERBOSE))


def run(args: argparse.Namespace) -> int:
    settings = config.collect_settings(args)
    config.setup_logging(settings.log_file, resolve([VERBOSE], args)[VERBOSE.key])
    try:
        with lock.exclusive(settings.data_dir / lock.COLLECT_LOCK):
            return collect(settings)
    except lock.Busy:
        log.warning("previous run still working (lock %s held): this run is skipped",
                    settings.data_dir / lock.COLLECT_LOCK)
        return 0


def collect(settings: CollectSettings) -> int:
    """Take and store one set of snapshots; publish. Returns the exit code."""
    started = time.monotonic()
    try:
        snap, aside = _sample_and_store(settings)
    except sqlite3.Error as exc:
        raise CollectError(describe_error(exc, settings.data_dir / DB_NAME), exit_code=1) from None
    log.info(
        "collected %d processes of %d partitions in %.2f s (%d vanished, %d not fully readable)",
        len(snap.processes), len(settings.partitions), time.monotonic() - started, snap.vanished, snap.denied,
    )
    if snap.denied:
        log.info("%d processes could not be read entirely (not root?): sampled as far as allowed", snap.denied)
    if aside:
        # The run is stored in the fresh database; still, say it and fail so cron mails it.
        raise CollectError(f"{settings.data_dir / DB_NAME} was not a database: kept as {aside}, "
                           "started a fresh one", exit_code=1)
    if snap.problems:
        # The run is stored; bad input still fails the command, one line each.
        raise CollectError("stored this run, but: " + "; ".join(snap.problems), exit_code=1)
    return 0


def _sample_and_store(settings: CollectSettings) -> tuple[RunSnapshot, Path | None]:
    store, aside = Store.open_or_recover(settings.data_dir / DB_NAME)
    if settings.shared:
        share_read_only(store.path)  # node mode: the partitions' users read it
    with store:
        previous = store.get_state("last_run")
        previous_cpu = store.process_cpu_times(previous["date"], previous["time"]) if previous else {}
        snap = sample.take(settings.partitions, previous, previous_cpu, store.get_state("usage"), settings,
                           store.get_state("memory"))
        traffic.sample_into(snap, settings, store.get_state(traffic.STATE_KEY))
        with store.transaction():
            store.insert("user", (p.row() for p in snap.processes), snap.date, snap.time)
            store.insert("system", [snap.system.row()], snap.date, snap.time)
            store.insert("computer", [snap.computer.row()], snap.date, snap.time)
            store.insert("disk", (d.row() for d in snap.disks), snap.date, snap.time)
            store.insert("disk_io", (d.row() for d in snap.disk_io), snap.date, snap.time)
            store.insert_usage((u.row() for u in snap.usage), snap.date, snap.time)
            store.insert("temperature", (t.row() for t in snap.temperatures), snap.date, snap.time)
            store.set_state("last_run", {"epoch": snap.epoch, "date": snap.date, "time": snap.time,
                                         **snap.cpu_state})
            for key, value in snap.state.items():
                store.set_state(key, value)
        _publish(store, settings)
        if settings.report_disk_usage:
            folder.start_if_due(settings, store)
    return snap, aside


def _publish(store: Store, settings: CollectSettings) -> None:
    """Every publisher, in this order, once the run is safely stored.

    Each one's failure is its own: a partition's unwritable monitor folder never
    stops the past days' archives and garbage collection. A failure never loses
    the run's rows (they are committed): all are reported together, one line,
    and the next run tries again."""
    from . import realtime, report, rotate

    failed: list[str] = []
    _attempt(failed, realtime.publish, store, settings.data_dir)  # today's CSVs
    _attempt(failed, report.publish_monitor, store, settings.partitions)  # each partition's SlapOS monitor JSON
    _attempt(failed, rotate.rotate, store, settings)  # past days: archives, journals, garbage (a few look-ups if none is due)
    if failed:
        raise CollectError(f"stored this run, but publishing failed: {'; '.join(failed)}", exit_code=1)


def _attempt(failed: list[str], publish: Callable[..., object], *args: object) -> None:
    try:
        publish(*args)
    except (CollectError, OSError, sqlite3.Error) as exc:
        failed.append(str(exc))
