"""A progress bar: one line on stderr, redrawn in place at most five times a second.

``rotate`` counts days (and each day's rows), ``availability`` bytes of the
logs. Both make one only when stderr is a terminal: otherwise they print
nothing, as cron and scripts expect.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30  # characters of the bar
INTERVAL = 0.2  # seconds between two redraws


class Progress:
    """``total`` units of work, done part after part."""

    def __init__(self, total: float, stream: TextIO | None = None) -> None:
        self.total = total
        self.done = 0.0  # units of the parts finished
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.last = 0.0

    def advance(self, units: float = 1.0) -> None:
        """A part of ``units`` is finished."""
        self.done += units

    def rate(self, within: float = 0.0) -> float:
        """Units per second since the start, ``within`` units of the current part included."""
        return (self.done + within) / max(time.monotonic() - self.started, 1e-6)

    def draw(self, text: str, within: float = 0.0, force: bool = False) -> None:
        """The parts finished plus ``within`` units of the current one, then ``text``
        (skipped when the last redraw is recent, unless ``force``)."""
        now = time.monotonic()
        if not force and now - self.last < INTERVAL:
            return
        self.last = now
        fraction = min((self.done + within) / self.total, 1.0) if self.total else 0.0
        filled = int(fraction * WIDTH)
        self.stream.write(f"\r[{'#' * filled}{'.' * (WIDTH - filled)}] {fraction * 100:5.1f}% {text}\x1b[K")
        self.stream.flush()

    def clear(self) -> None:
        """Erase the line (before another message, or at the end)."""
        self.stream.write("\r\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        """Leave the last state on screen and end the line."""
        self.stream.write("\n")
        self.stream.flush()
