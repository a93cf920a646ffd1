"""Smoke test of the serving benchmark (``python -m bench.serve``) at a tiny size.

Run as the benchmark is run, from the repository root (``bench`` is not an installed
package); no speed is checked, only that every figure is there and plausible."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_KEYS = {
    "workers",
    "logging",
    "measurement",
    "in_flight",
    "calls",
    "decisions",
    "seconds",
    "decisions_per_s",
    "p50_ms",
    "p99_ms",
    "mean_ms",
    "server_cpu_cores",
    "client_cpu_cores",
    "other_cpu_cores",
    "server_cpu_us_per_decision",
}


def bench(*args: str, module: str = "bench.serve") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_tiny_run_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "serve.json"
    done = bench(
        "--quick",
        "--seconds", "0.3",
        "--warmup-s", "0.1",
        "--latency-calls", "30",
        "--latency-warmup", "5",
        "--concurrency", "4",
        "--batch-rows", "16",
        "--batch-in-flight", "2",
        "--customers", "64",
        "--weeks", "1",
        "--workers", "1",
        "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.read_text())
    assert result["bundle"]["hidden_layers"] == [64, 64]
    assert "random weights" in done.stdout
    runs = result["runs"]
    assert {(r["logging"], r["measurement"]) for r in runs} == {
        (log, m)
        for log in ("on", "off")
        for m in (
            "Decide, concurrency 1",
            "Decide, concurrency 4",
            "DecideBatch(16)",
            "DecideBatch(16), packed",
        )
    }
    for r in runs:
        assert r.keys() >= RUN_KEYS, r["measurement"]
        for key in ("calls", "decisions", "seconds", "decisions_per_s", "p50_ms", "p99_ms"):
            assert r[key] > 0, (r["measurement"], key)
        assert r["p50_ms"] <= r["p99_ms"]
        rows = 16 if r["measurement"].startswith("DecideBatch") else 1
        assert r["decisions"] == r["calls"] * rows
    # Logging was really on: every decision made is in the log, no more and no less.
    [check] = result["log_check"]
    assert check["decisions_logged"] == check["decisions_made"] > 0
    assert {c["measurement"] for c in result["logging_cost"]} == {
        "Decide, concurrency 4",
        "DecideBatch(16)",
        "DecideBatch(16), packed",
    }
    # The batch floor is stated for 256 rows: only the latency floor applies at this size.
    assert [f["floor"] for f in result["floors"]] == ["Decide p50 ms"]
    assert "floor Decide p50 ms" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--seconds", "0"], "seconds and warmup_s must be > 0"),
        (["--workers", "0"], "workers must list counts >= 1"),
        (["--customers", "10"], r"customers must be >= batch_rows (256)"),
    ],
)
def test_bad_arguments_are_refused(args: list[str], match: str) -> None:
    done = bench(*args)
    assert done.returncode == 2
    assert match in done.stderr


@pytest.mark.slow
def test_the_stage_profile_times_every_stage_of_real_calls(tmp_path: Path) -> None:
    """``bench.serve_stages --quick``: the real handlers ran (the log holds every decision,
    which the benchmark checks itself) and every stage has a time within its call's."""
    out = tmp_path / "stages.json"
    done = bench("--quick", "--out", str(out), module="bench.serve_stages")
    assert done.returncode == 0, done.stderr[-3000:]
    stages: dict[str, dict[str, float]] = json.loads(out.read_text())["stages"]
    assert list(stages) == [
        "Decide, back to back",
        "Decide, after a gap",
        "DecideBatch(256), packed, per decision",
    ]
    for name, times in stages.items():
        assert all(t > 0 for t in times.values()), (name, times)
        parts = ("parse", "model", "log rows", "log SQL")
        assert max(times[p] for p in parts) < times["total"], (name, times)
    assert "| Decide, after a gap |" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--calls", "0"], "--calls must be >= 1, got 0"),
        (["--repeats", "0"], "--repeats must be >= 1, got 0"),
        (["--gap-ms", "-1"], "--gap-ms must be >= 0, got -1.0"),
    ],
)
def test_the_stage_profile_refuses_bad_arguments(args: list[str], match: str) -> None:
    done = bench(*args, module="bench.serve_stages")
    assert done.returncode == 2
    assert match in done.stderr


@pytest.mark.slow
def test_the_log_floor_times_each_design_and_checks_its_store(tmp_path: Path) -> None:
    """``bench.log_floor --quick``: every design wrote what it was given (the benchmark counts
    the rows and bytes each store holds) and has a positive time per decision; only today's
    schema and the file append have unary figures."""
    out = tmp_path / "floor.json"
    done = bench("--quick", "--out", str(out), module="bench.log_floor")
    assert done.returncode == 0, done.stderr[-3000:]
    floors: dict[str, dict[str, float]] = json.loads(out.read_text())["floors_us"]
    assert list(floors) == [
        "decision rows",
        "event index only",
        "request BLOBs only",
        "file append",
    ]
    unary = {"unary, back to back", "unary, after a gap"}
    for design, row in floors.items():
        assert row["group commit, per decision"] > 0, (design, row)
        assert row["checkpoint, per decision"] >= 0, (design, row)
        has_unary = design in ("decision rows", "file append")
        assert (unary <= set(row)) == has_unary, (design, row)
    assert "| request BLOBs only |" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--commits", "0"], "--commits must be >= 1, got 0"),
        (["--batch-rows", "0"], "--batch-rows must be >= 1, got 0"),
        (["--prefill", "-1"], "--prefill must be >= 0, got -1"),
        (["--gap-ms", "-0.5"], "--gap-ms must be >= 0, got -0.5"),
    ],
)
def test_the_log_floor_refuses_bad_arguments(args: list[str], match: str) -> None:
    done = bench(*args, module="bench.log_floor")
    assert done.returncode == 2
    assert match in done.stderr
