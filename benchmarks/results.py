"""Write one benchmark's section of benchmarks/RESULTS.md, leaving the others alone.

Each ``bench_<name>.py`` calls ``write_section(name, markdown)`` at its end, so it
can be run alone; ``run.py`` runs them all (``make bench``).
"""

from __future__ import annotations

import os
import platform
import re
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = (
    "# Benchmark results\n\n"
    "Written by `make bench` (each section by its `benchmarks/bench_<name>.py`). Ratios are measured\n"
    "side by side in one run; absolute figures on 2 shared cores vary by 10-20 % between runs.\n"
)


def machine_line() -> str:
    return (
        f"_{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}_\n"
    )


def write_section(name: str, markdown: str) -> None:
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{markdown.rstrip()}\n\n{machine_line()}{end}"
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    fd, tmp = tempfile.mkstemp(dir=RESULTS.parent, prefix=".RESULTS.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, RESULTS)


def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
