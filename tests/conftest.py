"""Shared fixtures: the suite runs the real command as a subprocess where it matters."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(sys.executable).parent


def run_cli(*args: str, check: bool = False, timeout: float = 120, env: dict | None = None,
            **kwargs) -> subprocess.CompletedProcess:
    """Run ``slapos-collect ARGS`` as a real process; output captured as text."""
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run(
        [str(SCRIPTS / "slapos-collect"), *args],
        capture_output=True, text=True, timeout=timeout, env=full_env, **kwargs,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"slapos-collect {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data-log"
    path.mkdir()
    return path


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_network_table():
    """A root ``collect`` in the host's namespace makes the collector's nftables table (network-accounting
    auto): the suite removes it at the end unless it was there before."""
    from slapos_collect_recipe import nft

    with nft.restored():
        yield


def accounting_restored() -> contextlib.AbstractContextManager[None]:
    """Kernel process accounting switched back, even on failure, to what it was
    before. A root ``collect`` switches accounting on into its data dir
    (process-accounting = auto), which a test's temporary dir must not keep."""
    from slapos_collect_recipe import pacct

    return pacct.restored()


@pytest.fixture(scope="session", autouse=True)
def _process_accounting_restored() -> Iterator[None]:
    if os.geteuid() != 0:
        yield
        return
    with accounting_restored():
        yield
