"""The degradation verdict: baselines, ratios and the status, pure functions
(no store, no files: tables of figures in, the status out)."""

from __future__ import annotations

from pathlib import Path

import pytest

from slapos_collect_recipe import bench_verdict
from slapos_collect_recipe.bench import BenchSettings


def test_baseline_is_the_first_days_and_then_frozen():
    state: dict = {}
    bench_verdict.update_baselines(state, {"cpu_single": 100.0}, "2026-01-01", 7)
    bench_verdict.update_baselines(state, {"cpu_single": 90.0}, "2026-01-07", 7)
    bench_verdict.update_baselines(state, {"cpu_single": 10.0}, "2026-01-08", 7)  # past the first week
    assert state["cpu_single"] == {"since": "2026-01-01", "values": [100.0, 90.0]}
    settings = BenchSettings(data_dir=Path("."), kinds=["cpu"])
    latest = {"cpu_single": (50.0, "pystones/s", "2026-01-08", "10:00:00"),
              "cpu_single_spread": (3.0, "%", "2026-01-08", "10:00:00")}
    status = bench_verdict.build_status(latest, state, settings, "2026-01-08")
    entry = status["benchmarks"]["cpu_single"]
    assert entry["baseline"] == 95.0 and entry["ratio"] == pytest.approx(50 / 95, abs=1e-4)
    assert entry["degraded"] and entry["baseline_complete"] and entry["baseline_runs"] == 2
    assert "cpu_single_spread" not in status["benchmarks"]
    assert status["reason"] == "cpu_single at 53 % of its baseline (threshold 70 %)"


def test_latency_ratio_is_inverted():
    assert bench_verdict.performance_ratio("net_latency", 2.0, 1.0) == 0.5
    assert bench_verdict.performance_ratio("net_download", 2.0, 1.0) == 2.0


def test_spread_is_the_median_absolute_deviation_over_the_median():
    assert bench_verdict.spread_percent([100.0, 110.0, 90.0, 100.0, 1000.0]) == 10.0  # one odd run barely counts
    assert bench_verdict.spread_percent([0.0, 0.0, 1.0]) == 0.0
