"""The serving leg of the main job: ``cvm serve`` as a process, a simulated campaign engine
deciding and reporting through the client, SIGTERM, and the Parquet export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from server_fixtures import make_bundles

from cvm_rl.cli.demo import format_summary, run_serving_demo, served_returns
from cvm_rl.logs.export import read_export
from cvm_rl.logs.store import DecisionLog


@pytest.mark.slow
def test_serving_demo_round_trip(tmp_path: Path) -> None:
    bundles = make_bundles(tmp_path / "bundles")
    out = tmp_path / "serve"
    summary = run_serving_demo(bundles.mlp, out, customers=40, weeks=3, seed=7)

    assert summary.exit_code == 0  # SIGTERM is a clean stop
    assert summary.decisions == summary.outcomes_recorded == 120
    assert summary.logged_decisions == summary.logged_outcomes == 120
    assert summary.replay_identical
    assert summary.parquet_rows == 120
    assert 0 < summary.mean_propensity <= 1
    table = read_export(out / "parquet")
    assert set(table.column("outcome_status").to_pylist()) == {"reported"}
    np.testing.assert_allclose(sum(table.column("reward").to_pylist()), summary.total_reward)
    # Every served action was allowed by the customer's reachable channels.
    for eligible, action in zip(
        table.column("eligible").to_pylist(), table.column("action_index").to_pylist(), strict=True
    ):
        assert eligible[action]
    with DecisionLog(out / "decisions.db") as log:
        assert log.activations()[-1].model_id == summary.model_id
    assert summary.model_id in format_summary(summary)
    # Each customer's logged return, in the simulator's order: what the demo's simulator
    # check subtracts from a candidate's run on the same customers.
    returns = served_returns(summary)
    assert returns.shape == (40,)
    np.testing.assert_allclose(returns.sum(), summary.total_reward)


@pytest.mark.slow
def test_the_main_job_runs_end_to_end_and_checks_its_report_against_the_simulator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cvm_rl.cli import main

    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--ppo-steps", "2048", "--customers", "200"]
    assert main([*args, "--seeds", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"[ope] report: {out / 'ope' / 'report.html'}" in printed
    checks = [line for line in printed.splitlines() if line.startswith("[check] ")]
    assert [line.split(":")[0] for line in checks] == [
        "[check] maskable_ppo",
        "[check] linucb",
        "[check] rules",
    ]
    assert all("true long-run lift on the served customers" in line for line in checks)
    assert (out / "ope" / "report.json").exists()
