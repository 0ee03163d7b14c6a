"""The original collector (slapos.core's slapos.collect), in a venv of its own, for side-by-side runs.

Versions from ../shared/notes/anchors.md: slapos.core 1.25.0 needs setuptools < 81 and, undeclared,
slapos.libnetworkcache; it runs on Debian's Python 3.11. The venv lives in a cache folder outside the
repository and is built once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

CACHE = Path(os.environ.get("SLAPOS_COLLECT_BENCH_CACHE", Path.home() / ".cache" / "slapos-collect-bench"))
VENV = CACHE / "original-venv"
PACKAGES = ["slapos.core==1.25.0", "setuptools<81", "slapos.libnetworkcache"]


def python() -> Path:
    """The original's venv Python, built on first use."""
    exe = VENV / "bin" / "python"
    stamp = VENV / ".complete"
    if stamp.exists():
        return exe
    base = shutil.which("python3.11", path="/usr/bin") or "/usr/bin/python3"
    if VENV.exists():
        shutil.rmtree(VENV)
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run([base, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(exe), "-m", "pip", "install", "-q", *PACKAGES], check=True)
    subprocess.run([str(exe), "-c", "import slapos.collect"], check=True)
    stamp.touch()
    return exe


def ours_venv() -> Path:
    """A venv with only this project and its runtime dependency, as the software release
    installs it (the development venv carries test tools whose .pth files slow every start-up).
    Reinstalled from the working tree at each call."""
    venv = CACHE / "ours-venv"
    exe = venv / "bin" / "python"
    if not exe.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    root = Path(__file__).resolve().parent.parent
    subprocess.run([str(exe), "-m", "pip", "install", "-q", "-c", str(root / "constraints.txt"),
                    "--force-reinstall", "--no-cache-dir", str(root)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return venv / "bin"


# One run of the original for the users slapuser0..N-1 (arguments: instance root, N, and
# optionally another user base name than slapuser). Folder sizes are measured apart (in the
# background) by ours: left out of both.
COLLECT = textwrap.dedent("""
    import configparser, logging, sys
    from slapos.collect import do_collect
    conf = configparser.ConfigParser()
    conf.read_dict({"slapos": {"instance_root": sys.argv[1], "computer_id": "COMP-BENCH"},
                    "slapformat": {"partition_amount": sys.argv[2],
                                   "user_base_name": sys.argv[3] if len(sys.argv) > 3 else "slapuser",
                                   "partition_base_name": "slappart"},
                    "collect": {"report_disk_usage": "False"}})
    logging.basicConfig(level=logging.ERROR)
    do_collect(logging.getLogger("collect"), conf)
""")
