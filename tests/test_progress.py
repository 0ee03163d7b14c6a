"""The one progress bar (rotate's days, availability's bytes): what it draws."""

from __future__ import annotations

import io
import time

from slapos_collect_recipe.progress import INTERVAL, WIDTH, Progress


def test_parts_and_the_current_one_make_the_fraction() -> None:
    out = io.StringIO()
    bar = Progress(4, out)
    bar.draw("day 1/4", 0.5, force=True)
    assert out.getvalue() == f"\r[{'#' * 3}{'.' * (WIDTH - 3)}]  12.5% day 1/4\x1b[K"
    bar.advance()
    bar.advance()
    bar.draw("day 3/4 2026-01-01 user 1,000 rows", 1.0, force=True)
    assert out.getvalue().endswith(f"\r[{'#' * 22}{'.' * 8}]  75.0% day 3/4 2026-01-01 user 1,000 rows\x1b[K")
    bar.advance(2)
    bar.draw("done", 5.0, force=True)  # never beyond 100 %
    assert out.getvalue().endswith(f"\r[{'#' * WIDTH}] 100.0% done\x1b[K")
    bar.close()
    assert out.getvalue().endswith("\x1b[K\n")


def test_redrawn_at_most_five_times_a_second_unless_forced() -> None:
    out = io.StringIO()
    bar = Progress(100, out)
    started = time.monotonic()
    bar.draw("first", 1)
    for n in range(10000):
        bar.draw(f"later {n}", 2)
    elapsed = time.monotonic() - started
    draws = out.getvalue().count("\r[")
    assert "first" in out.getvalue() and draws <= 1 + elapsed / INTERVAL, (draws, elapsed)
    bar.draw("forced", 3, force=True)
    assert out.getvalue().count("\r[") == draws + 1 and out.getvalue().endswith("forced\x1b[K")
    bar.clear()
    assert out.getvalue().endswith("\r\x1b[K")


def test_an_empty_total_draws_zero() -> None:
    out = io.StringIO()
    bar = Progress(0, out)
    bar.draw("0 MB/s ", 0, force=True)
    assert "  0.0% 0 MB/s " in out.getvalue()
    assert bar.rate(10) > 0
