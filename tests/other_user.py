"""Running the package as another user, wherever the checkout lives.

The checkout, its venv and the Python behind it may sit in directories other
users cannot enter (root's 0700 home, a 0700 ``mktemp -d``, pytest's
``/tmp/pytest-of-root``). ``other_user_runtime()`` copies the package and the
installed distributions it imports into a world-readable directory, once per
test session, and runs them with an interpreter every user can execute.
"""

from __future__ import annotations

import atexit
import importlib.metadata
import os
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Distributions the collector imports; ``serve`` needs the second group too.
BASE = ("psutil", "isal")
MONITOR = ("aiohttp", "prometheus_client", "cryptography", "dygraphs")


@dataclass(frozen=True)
class Runtime:
    python: str
    path: Path  # the world-readable copy, first on sys.path

    def command(self, *args: str) -> list[str]:
        """``python -m slapos_collect_recipe.cli ARGS`` with the copy on the path."""
        return [self.python, "-S", "-c", _LAUNCH.format(path=str(self.path)), *args]

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env.update({"PYTHONPATH": str(self.path), "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/tmp"}, **extra)
        return env


_LAUNCH = ("import sys; sys.path[:0] = [{path!r}]\n"
           "from slapos_collect_recipe.cli import main\nsys.exit(main(sys.argv[1:]))\n")


def _reachable_by_all(path: Path) -> bool:
    """Every directory up to ``path`` lets others through, and ``path`` lets them read/execute."""
    path = path.resolve()
    for part in [*reversed(path.parents), path]:
        mode = part.stat().st_mode
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            return False
    return bool(path.stat().st_mode & stat.S_IXOTH)


def _interpreter() -> str | None:
    """A Python of this one's version (so compiled modules load) that every user can run."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    candidates = [Path(sys.executable), Path(sys.base_prefix) / "bin" / f"python{version}",
                  Path(f"/usr/bin/python{version}"), Path(f"/usr/local/bin/python{version}")]
    for candidate in candidates:
        if candidate.exists() and _reachable_by_all(candidate):
            return str(candidate.resolve())
    return None


def shared_dir(prefix: str = "slapos-collect-") -> Path:
    """A new world-accessible directory (mode 1777) outside any 0700 parent; the caller removes it."""
    base = Path("/tmp") if _reachable_by_all(Path("/tmp")) else Path(tempfile.gettempdir())
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    path.chmod(0o1777)
    return path


def _copy_distribution(name: str, target: Path, copied: set[str]) -> bool:
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    for file in dist.files or ():
        parts = file.parts
        if not parts or parts[0].endswith((".dist-info", ".data")) or parts[0] in ("..", "bin"):
            continue
        source = Path(dist.locate_file(file))
        if source.suffix == ".pyc" or not source.is_file():
            continue
        dest = target / file
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest)
    # Dependencies, so that importing the distribution works (skipping extras' markers).
    for requirement in dist.requires or ():
        if "extra ==" in requirement:
            continue
        dep = requirement.split(";")[0].strip()
        for stop in "<>=!~[ (":
            dep = dep.split(stop)[0]
        if dep and dep.lower() not in copied:
            copied.add(dep.lower())
            _copy_distribution(dep, target, copied)
    return True


@cache
def _build(monitor: bool) -> Runtime | None:
    python = _interpreter()
    if python is None:
        return None
    target = shared_dir("slapos-collect-runtime-")
    atexit.register(shutil.rmtree, target, True)
    shutil.copytree(ROOT / "slapos_collect_recipe", target / "slapos_collect_recipe",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    copied: set[str] = set()
    for name in BASE + (MONITOR if monitor else ()):
        if name.lower() not in copied:
            copied.add(name.lower())
            _copy_distribution(name, target, copied)
    for directory, _dirs, files in os.walk(target):
        os.chmod(directory, 0o755)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o644)
    target.chmod(0o755)
    return Runtime(python=python, path=target)


def other_user_runtime(monitor: bool = False) -> Runtime:
    """The package (and with ``monitor`` the serve stack) runnable by any user; skips the
    test, with the reason, when no interpreter of this version is executable by others."""
    runtime = _build(monitor)
    if runtime is None:
        pytest.skip(f"no Python {sys.version_info[0]}.{sys.version_info[1]} that other users can execute")
    return runtime
