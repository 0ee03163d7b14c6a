"""Partition folder sizes, measured in the background.

Walking a huge partition can take minutes, so ``collect`` only starts a
detached ``slapos-collect folder-size`` process when a partition is due
(once per ``folder-cycle``, 24 h by default) and returns. That process holds
its own lock, so walks never overlap, and writes its rows in its own short
transaction. No shell, no ``du``: ``os.scandir``, counting allocated blocks
like ``du -s`` and each hard-linked file once.
"""

from __future__ import annotations

import argparse
import logging
import os
import stat
import sys
import time

from . import config, lock
from .config import CollectSettings, Partition
from .datafiles import DB_NAME, FOLDER_LOCK
from .store import BACKGROUND_TIMEOUT, Store

log = logging.getLogger("slapos_collect")

STATE_KEY = "folder_last"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config.add_common_arguments(parser)
    config.add_partition_arguments(parser)
    parser.add_argument("--force", action="store_true", help="measure every partition now, due or not")
    parser.add_argument("--folder-cycle", type=int, metavar="SECONDS",
                        help="measure a partition at most once per SECONDS (default: the config's, 86400)")


def run(args: argparse.Namespace) -> int:
    settings = config.collect_settings(args)
    if args.folder_cycle is not None:
        settings.folder_cycle = args.folder_cycle
    config.setup_logging(settings.log_file)
    try:
        with lock.exclusive(settings.data_dir / FOLDER_LOCK):
            measure_due(settings, force=args.force)
    except lock.Busy:
        log.info("a folder walk is already running")
    return 0


def folder_size(root: str | os.PathLike) -> int:
    """Bytes allocated under ``root`` (not following symlinks), like ``du -s``.

    Symlinked directories directly inside ``root/DATA`` are counted too, as
    the original collector does (that is where big data is linked in)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [os.fspath(root)]
    data = os.path.join(os.fspath(root), "DATA")
    try:
        for entry in os.scandir(data):
            if entry.is_symlink() and entry.is_dir(follow_symlinks=True):
                stack.append(entry.path + "/")
    except OSError:
        pass
    while stack:
        path = stack.pop()
        try:
            top = os.stat(path)
            total += top.st_blocks * 512
            with os.scandir(path) as entries:
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(entry.path)
                        continue
                    if st.st_nlink > 1:
                        key = (st.st_dev, st.st_ino)
                        if key in seen:
                            continue
                        seen.add(key)
                    total += st.st_blocks * 512
        except OSError:
            continue  # unreadable or vanished: measured as far as allowed
    return total


def _due(partitions: list[Partition], last: dict[str, float], cycle: int, now: float) -> list[Partition]:
    return [p for p in partitions
            if p.path and now - last.get(p.label, 0.0) >= cycle and os.path.isdir(p.path)]


def measure_due(settings: CollectSettings, force: bool = False) -> int:
    """Measure the due partitions and store one ``folder`` row each (KiB)."""
    with Store(settings.data_dir / DB_NAME) as store:
        last = store.get_state(STATE_KEY, {})
    now = time.time()
    due = [p for p in settings.partitions if p.path] if force else _due(
        settings.partitions, last, settings.folder_cycle, now)
    for part in due:
        if not os.path.isdir(part.path):
            continue
        size_kib = folder_size(part.path) // 1024
        stamp = time.gmtime()
        with Store(settings.data_dir / DB_NAME, timeout=BACKGROUND_TIMEOUT) as store, store.transaction():
            store.insert("folder", [(part.label, size_kib)],
                         time.strftime("%Y-%m-%d", stamp), time.strftime("%H:%M:%S", stamp))
            last = store.get_state(STATE_KEY, {})
            last[part.label] = time.time()
            store.set_state(STATE_KEY, last)
    return len(due)


def start_if_due(settings: CollectSettings, store: Store) -> bool:
    """Start a detached folder walk when a partition is due and none is running."""
    last = store.get_state(STATE_KEY, {})
    if not _due(settings.partitions, last, settings.folder_cycle, time.time()):
        return False
    try:
        with lock.exclusive(settings.data_dir / FOLDER_LOCK):
            pass
    except lock.Busy:
        return False  # a walk is still running
    argv = [sys.executable, "-m", "slapos_collect_recipe.cli", "folder-size",
            "--data-dir", str(settings.data_dir)]
    for part in settings.partitions:
        if part.path:
            argv += ["--partition", f"{part.label}={part.path}"]
    if settings.log_file:
        argv += ["--log-file", settings.log_file]
    argv += ["--folder-cycle", str(settings.folder_cycle)]
    import subprocess  # only when a walk is due: keeps the per-minute start-up light

    subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True, preexec_fn=lambda: os.nice(10),
    )
    return True
