"""The command line and the evaluation table, end to end on small populations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cvm_rl.cli import main
from cvm_rl.evaluation import evaluate_policies, format_table, results_to_dict, run_episode
from cvm_rl.policies import NoContactPolicy, RandomPolicy
from cvm_rl.rollout import policy_seed
from simulator.config import load_scenario
from simulator.vector_env import CustomerLifecycleVectorEnv

SCENARIO = load_scenario("default")


def test_evaluate_prints_table_and_writes_json(tmp_path: Path, capsys) -> None:
    out = tmp_path / "values.json"
    argv = ["evaluate", "--policies", "no_contact", "random", "rules", "--customers", "300"]
    code = main([*argv, "--seeds", "2", "--seed-start", "1", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    for policy in ("no_contact", "random", "rules"):
        assert f"| {policy} |" in printed
    payload = json.loads(out.read_text())
    assert payload["seeds"] == [1, 2]
    assert len(payload["results"]["random"]["value"]) == 2


def test_run_episode_totals_match_an_independent_rollout() -> None:
    """Evaluation's value equals the summed rewards of the same seeded rollout."""
    metrics = run_episode(RandomPolicy(SCENARIO), SCENARIO, 500, seed=5)
    env = CustomerLifecycleVectorEnv(500, SCENARIO)
    obs, info = env.reset(seed=5)
    policy = RandomPolicy(SCENARIO, seed=policy_seed(5))  # as rollout seeds it
    total = 0.0
    contacts = 0
    for _ in range(SCENARIO.horizon_weeks):
        actions, _ = policy.act(obs, info["action_mask"])
        obs, reward, _, _, info = env.step(actions)
        total += reward.sum()
        contacts += np.count_nonzero(info["executed_action"])
    assert metrics["value"] == pytest.approx(total / 500)
    assert metrics["contacts"] == pytest.approx(contacts / 500)
    # The residual value is what the final population carries out of the horizon.
    residual = env.population.expected_no_contact_margin()
    assert metrics["residual_value"] == pytest.approx(residual.mean())
    assert metrics["long_run_value"] == pytest.approx(total / 500 + residual.mean())


def test_long_run_value_is_value_plus_residual_and_has_a_paired_lift() -> None:
    results = evaluate_policies(
        [NoContactPolicy(SCENARIO), RandomPolicy(SCENARIO)], SCENARIO, n_customers=300, seeds=[1, 2]
    )
    quiet, noisy = results
    for r in results:
        np.testing.assert_allclose(
            r.per_seed["long_run_value"], r.per_seed["value"] + r.per_seed["residual_value"]
        )
        assert (r.per_seed["residual_value"] > 0).all()
    # The long-run lift is the horizon's lift plus the residual's, seed by seed.
    long_run = noisy.lift_interval(quiet, "long_run_value")[0]
    parts = noisy.lift_interval(quiet)[0] + noisy.lift_interval(quiet, "residual_value")[0]
    assert long_run == pytest.approx(parts)
    table = format_table(results)
    assert "| residual | long-run value | long-run lift [paired 95% CI] |" in table
    summary = results_to_dict(results)["summary"]["random"]["long_run_lift"]
    assert summary["mean"] == pytest.approx(noisy.lift_interval(quiet, "long_run_value")[0])


def test_no_contact_has_no_costs_and_ci_covers_mean() -> None:
    results = evaluate_policies(
        [NoContactPolicy(SCENARIO)], SCENARIO, n_customers=400, seeds=[1, 2, 3]
    )
    res = results[0]
    assert res.mean("contact_cost") == 0.0 and res.mean("discount_cost") == 0.0
    assert res.mean("opt_out_rate") == 0.0
    low, high = res.interval("value")
    assert low < res.mean("value") < high


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "--policies", "magic"], "--policies: unknown ['magic']"),
        (["evaluate", "--scenario", "nowhere"], "scenario 'nowhere' is neither a file"),
        (["scenario", "check", "nope.toml"], "scenario 'nope.toml' is neither a file"),
    ],
)
def test_cli_errors_are_one_clear_line(argv, message, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err


def test_cli_rejects_bad_numbers(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["evaluate", "--customers", "0"])
    assert "expected a positive integer" in capsys.readouterr().err


def test_scenario_check_reports_file_key_and_range(tmp_path: Path, capsys) -> None:
    text = (Path(__file__).parents[1] / "simulator/scenarios/default.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("cost = 0.08", "cost = -0.08"))
    assert main(["scenario", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "channels.sms.cost" in err and "[0.0, inf)" in err
    assert main(["scenario", "check", "default"]) == 0


def test_paired_lift_interval_is_the_t_interval_of_differences() -> None:
    results = evaluate_policies(
        [NoContactPolicy(SCENARIO), RandomPolicy(SCENARIO)],
        SCENARIO,
        n_customers=300,
        seeds=[1, 2, 3],
    )
    base, rand = results
    diff = rand.per_seed["value"] - base.per_seed["value"]
    mean, low, high = rand.lift_interval(base)
    assert mean == pytest.approx(diff.mean())
    half = 4.302652729911275 * diff.std(ddof=1) / np.sqrt(3)  # t(0.975, df=2)
    assert (low, high) == pytest.approx((diff.mean() - half, diff.mean() + half))
    other = evaluate_policies(
        [NoContactPolicy(SCENARIO)], SCENARIO, n_customers=300, seeds=[4, 5, 6]
    )
    with pytest.raises(ValueError, match="baseline: a paired lift needs results on the same seeds"):
        rand.lift_interval(other[0])
