"""Whether the machine has degraded: baselines, ratios and the status, as pure
functions of the figures (no I/O: ``bench.py`` reads and writes them).

Each figure is compared with the machine's own baseline, the median of its
first ``baseline-days`` of results (or a configured reference); ``ratio`` is
the performance relative to it, below 1 always worse; below ``threshold`` a
figure is degraded, and so is the machine when any figure is.
"""

from __future__ import annotations

import statistics
from datetime import date as Date
from datetime import timedelta
from typing import Protocol

# name -> (unit, higher is better)
FIGURES: dict[str, tuple[str, bool]] = {
    "cpu_single": ("pystones/s", True),
    "cpu_all": ("pystones/s", True),
    "sqlite_ops": ("ops/s", True),
    "sqlite_fsync": ("ms", False),
    "net_download": ("MB/s", True),
    "net_upload": ("MB/s", True),
    "net_latency": ("ms", False),
}


class Policy(Protocol):
    """What the verdict needs of the settings (``bench.BenchSettings`` has it)."""

    threshold: float
    thresholds: dict[str, float]  # per figure, over threshold
    references: dict[str, float]  # fixed baselines, over the store's
    baseline_days: int
    confirm_runs: int


def spread_percent(values: list[float]) -> float:
    """Run-to-run spread: the median absolute deviation over the median, in %
    (one odd run, say a cron job starting meanwhile, barely moves it)."""
    middle = statistics.median(values)
    if not middle:
        return 0.0
    return statistics.median(abs(v - middle) for v in values) / abs(middle) * 100


def performance_ratio(name: str, value: float, baseline: float) -> float:
    """How the figure compares with its baseline, 1.0 = as good, lower = worse
    (inverted for latencies, where a higher figure is worse)."""
    higher_is_better = FIGURES[name][1]
    if higher_is_better:
        return value / baseline if baseline else 1.0
    return baseline / value if value else 1.0


def update_baselines(state: dict, figures: dict[str, float], day: str, baseline_days: int) -> dict:
    """Add this run's figures to the baselines still within their first
    ``baseline_days`` (counted from each figure's first run)."""
    today = Date.fromisoformat(day)
    for name, value in figures.items():
        entry = state.setdefault(name, {"since": day, "values": []})
        if today < Date.fromisoformat(entry["since"]) + timedelta(days=baseline_days):
            entry["values"].append(value)
    return state


def build_status(latest: dict[str, tuple[float, str, str, str]], baselines: dict, settings: Policy,
                 day: str, recent: dict[str, list[float]] | None = None) -> dict:
    """The status of every figure: its latest value, or with ``confirm-runs``
    N > 1 the median of its latest N (``recent``), against its baseline."""
    benchmarks = {}
    for name in sorted(latest):
        if name not in FIGURES:
            continue
        value, unit, run_date, run_time = latest[name]
        entry = baselines.get(name, {})
        if name in settings.references:
            baseline, source = settings.references[name], "reference"
        elif entry.get("values"):
            baseline, source = statistics.median(entry["values"]), "store"
        else:
            continue
        compared = statistics.median((recent or {}).get(name) or [value])
        ratio = performance_ratio(name, compared, baseline)
        threshold = settings.thresholds.get(name, settings.threshold)
        complete = source == "reference" or (
            Date.fromisoformat(day) >= Date.fromisoformat(entry["since"]) + timedelta(days=settings.baseline_days))
        benchmarks[name] = {
            "value": value,
            "baseline": baseline,
            "ratio": round(ratio, 4),
            "unit": unit,
            "degraded": ratio < threshold,
            "threshold": threshold,
            "date": run_date,
            "time": run_time,
            "baseline_source": source,
            "baseline_runs": len(entry.get("values", [])) if source == "store" else 0,
            "baseline_complete": complete,
        }
        if settings.confirm_runs > 1:
            benchmarks[name]["compared"] = compared
            benchmarks[name]["compared_runs"] = len((recent or {}).get(name) or [value])
    worst = [f"{name} at {b['ratio'] * 100:.0f} % of its baseline (threshold {b['threshold'] * 100:.0f} %)"
             for name, b in sorted(benchmarks.items(), key=lambda item: item[1]["ratio"]) if b["degraded"]]
    return {
        "degraded": bool(worst),
        "threshold": settings.threshold,
        "benchmarks": benchmarks,
        "reason": ", ".join(worst),
    }
