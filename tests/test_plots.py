"""Evaluation breakdowns, the share of the oracle's lift, the JSON dump and the PNG plots."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from cvm_rl import plots
from cvm_rl.evaluation import (
    METRICS,
    PolicyResult,
    evaluate_policies,
    format_table,
    lift_share,
    lift_share_interval,
    results_to_dict,
)
from cvm_rl.policies import DEFAULT_RULES, NoContactPolicy, RandomPolicy, RuleBasedPolicy
from simulator.config import STAGES, load_scenario

SCENARIO = load_scenario("default")
N_CUSTOMERS = 500
SEEDS = [11, 12]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results() -> list[PolicyResult]:
    policies = [NoContactPolicy(SCENARIO), RandomPolicy(SCENARIO), RuleBasedPolicy(SCENARIO)]
    return evaluate_policies(policies, SCENARIO, n_customers=N_CUSTOMERS, seeds=SEEDS)


def _by_name(results: list[PolicyResult]) -> dict[str, PolicyResult]:
    return {r.policy: r for r in results}


def test_breakdowns_have_scenario_shapes_and_names(results) -> None:
    n_seeds, n_stages = len(SEEDS), len(STAGES)
    for r in results:
        bd = r.require_breakdown()
        assert bd.segments == SCENARIO.segment_names and bd.stages == list(STAGES)
        assert bd.actions == SCENARIO.action_names()
        assert bd.segment_value.shape == bd.segment_count.shape == (n_seeds, 4)
        assert bd.stage_value.shape == bd.stage_count.shape == (n_seeds, n_stages)
        assert bd.action_counts.shape == (n_seeds, n_stages, SCENARIO.n_actions)
        names, means, bounds = r.group_values("stage")
        assert names == list(STAGES) and means.shape == (n_stages,)
        assert bounds.shape == (n_stages, 2)


@pytest.mark.parametrize("by", ["segment", "stage"])
def test_group_values_weighted_by_counts_give_the_overall_value(results, by) -> None:
    for r in results:
        _, values, counts = r.require_breakdown().groups(by)
        np.testing.assert_array_equal(counts.sum(axis=1), N_CUSTOMERS)
        # Empty groups are NaN; they carry no weight.
        weighted = np.nansum(values * counts, axis=1) / N_CUSTOMERS
        np.testing.assert_allclose(weighted, r.per_seed["value"], rtol=1e-10)


def test_policies_see_the_same_populations(results) -> None:
    """Common random numbers: group sizes depend on the seed only, not on the policy."""
    first = results[0].require_breakdown()
    for r in results[1:]:
        bd = r.require_breakdown()
        np.testing.assert_array_equal(bd.segment_count, first.segment_count)
        np.testing.assert_array_equal(bd.stage_count, first.stage_count)


def test_action_mix_counts_every_decision_in_its_decision_stage(results) -> None:
    by = _by_name(results)
    for r in results:
        counts = r.require_breakdown().action_counts
        np.testing.assert_array_equal(counts.sum(axis=(1, 2)), N_CUSTOMERS * SCENARIO.horizon_weeks)
        contacts = counts[:, :, 1:].sum(axis=(1, 2)) / N_CUSTOMERS
        np.testing.assert_allclose(contacts, r.per_seed["contacts"])
        shares = r.action_mix()
        used = counts.sum(axis=(0, 2)) > 0
        np.testing.assert_allclose(shares[used].sum(axis=1), 1.0)
        assert np.all(shares[~used] == 0.0)
    assert by["no_contact"].action_mix(normalize=False)[:, 1:].sum() == 0
    assert by["random"].action_mix(normalize=False)[:, 1:].sum() > 0
    # Each rule sends only its offer in its stage, and nothing fires where no rule applies:
    # this fails if the stage were read after the step instead of at decision time.
    mix = by["rules"].action_mix(normalize=False)
    offers = np.array([None, *(SCENARIO.decode_action(a)[0] for a in range(1, mix.shape[1]))])
    rule_offer = {rule.stage: rule.offer for rule in DEFAULT_RULES}
    assert mix[:, 1:].sum() > 0
    for k, stage in enumerate(STAGES):
        sent = offers[1:][mix[k, 1:] > 0]
        allowed = {rule_offer[stage]} if stage in rule_offer else set()
        assert set(sent) <= allowed, stage


def _result(name: str, values: list[float]) -> PolicyResult:
    per_seed = {m: np.zeros(len(values)) for m in METRICS}
    per_seed["value"] = np.array(values)
    return PolicyResult(name, [1, 2], per_seed)


def test_share_of_oracle_lift_is_a_ratio_of_mean_lifts() -> None:
    base = _result("no_contact", [1.0, 3.0])  # mean 2
    policy = _result("bandit", [2.0, 4.0])  # mean 3: lift 1
    oracle = _result("oracle", [7.0, 5.0])  # mean 6: lift 4
    assert lift_share(policy, base, oracle) == pytest.approx(0.25)
    rows = {
        line.split("|")[1].strip(): line
        for line in format_table([base, policy, oracle]).splitlines()[2:]
    }
    assert "| share of oracle lift |" in format_table([base])
    assert "| 25.0% |" in rows["bandit"]
    assert "| 100.0% |" in rows["oracle"]
    assert "| 0.0% |" in rows["no_contact"]
    # n/a without the reference, and when the reference does not beat the baseline.
    assert "%" not in format_table([base, policy]).split("\n", 2)[2]
    flat = _result("oracle", [3.0, 1.0])
    assert lift_share(policy, base, flat) is None
    assert "%" not in format_table([base, policy, flat]).split("\n", 2)[2]
    table = format_table([base, policy, oracle], reference="bandit")
    assert "| share of bandit lift |" in table and "| 400.0% |" in table


def test_the_share_of_lift_interval_is_the_delta_method_over_seeds() -> None:
    """Lifts (1, 1) against (6, 2): share 1/4; the gradient (1, -1/4) / 4 of the ratio and the
    covariance of the paired lifts over 2 seeds give the half-width by hand."""
    base = _result("no_contact", [1.0, 3.0])
    policy = _result("bandit", [2.0, 4.0])
    oracle = _result("oracle", [7.0, 5.0])
    share, low, high = lift_share_interval(policy, base, oracle)
    lifts = np.array([[1.0, 1.0], [6.0, 2.0]])
    gradient = np.array([1.0, -0.25]) / 4.0
    half = stats.t.ppf(0.975, 1) * np.sqrt(gradient @ (np.cov(lifts) / 2) @ gradient)
    assert share == pytest.approx(0.25)
    assert (low, high) == pytest.approx((0.25 - half, 0.25 + half))
    assert lift_share_interval(policy, base, _result("oracle", [3.0, 1.0])) is None


def test_results_to_dict_is_strict_json_and_round_trips(results) -> None:
    payload = json.loads(json.dumps(results_to_dict(results, reference="rules"), allow_nan=False))
    assert payload["baseline"] == "no_contact" and payload["reference"] == "rules"
    for r in results:
        assert payload["results"][r.policy]["value"] == pytest.approx(r.per_seed["value"])
        summary = payload["summary"][r.policy]
        assert summary["seeds"] == SEEDS
        for metric in METRICS:
            assert summary["mean"][metric] == pytest.approx(r.mean(metric))
            assert summary["ci95"][metric] == pytest.approx(list(r.interval(metric)))
        assert summary["lift"]["mean"] == pytest.approx(r.mean("value") - results[0].mean("value"))
        stage = payload["breakdowns"][r.policy]["stage"]
        _, means, _ = r.group_values("stage")
        assert [m is None for m in stage["mean"]] == list(np.isnan(means))
        mix = payload["breakdowns"][r.policy]["action_mix"]
        assert np.array(mix["counts"]).shape == (len(STAGES), SCENARIO.n_actions)
    shares = {p: s["share_of_reference_lift"] for p, s in payload["summary"].items()}
    if results[2].mean("value") > results[0].mean("value"):  # else the share is undefined
        assert shares["rules"] == pytest.approx(1.0) and shares["no_contact"] == 0.0
    else:
        assert set(shares.values()) == {None}
    assert (
        results_to_dict(results, reference=None)["summary"]["rules"]["share_of_reference_lift"]
        is None
    )


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 300 and height > 200


def test_every_plot_writes_a_png(results, tmp_path: Path) -> None:
    steps = np.arange(0, 100_000, 10_000)
    curves = {
        "linucb": [(steps, np.log1p(steps) + s) for s in range(3)],
        "ppo": [(steps + 5_000 * s, np.sqrt(steps) / 50 + s) for s in range(2)],  # other steps
        "rules": (steps, np.full(len(steps), 9.0)),  # one bare run
    }
    written = [
        plots.plot_policy_values(results, tmp_path / "new" / "dir" / "values.png"),
        plots.plot_value_by_group(results, tmp_path / "segment.png", by="segment"),
        plots.plot_value_by_group(results, tmp_path / "stage.png", by="stage"),
        plots.plot_action_mix(results, tmp_path / "mix.png"),
        plots.plot_action_mix(
            results[2], tmp_path / "mix_action.png", group="action", include_no_contact=True
        ),
        plots.plot_learning_curves(curves, tmp_path / "curves.png", references={"oracle": 12.0}),
        plots.plot_learning_curves(curves, tmp_path / "curves_ci.png", band="ci95"),
    ]
    for path in written:
        assert path.parent.is_dir()
        _assert_png(path)


BARE = PolicyResult("bare", [1], {m: np.zeros(1) for m in METRICS})  # no breakdown
BAD_CALLS = [
    (lambda res, png: plots.plot_value_by_group(res, png, by="tier"), r"by: expected one of"),
    (lambda res, png: plots.plot_value_by_group([], png), r"results: expected at least one"),
    (lambda res, png: plots.plot_value_by_group([BARE], png), r"results: policy 'bare' has no"),
    (lambda res, png: plots.plot_policy_values([], png), r"results: expected at least one"),
    (
        lambda res, png: plots.plot_policy_values(res, png.with_suffix(".jpg")),
        r"path: expected a file name ending in \.png",
    ),
    (lambda res, png: plots.plot_policy_values(res, png, metric="profit"), r"metric: expected"),
    (lambda res, png: plots.plot_action_mix(res, png, group="tier"), r"group: expected one of"),
    (lambda res, png: plots.plot_action_mix(res, png, top_k=0), r"top_k must be >= 1"),
    (lambda res, png: plots.plot_action_mix([BARE], png), r"results: policy 'bare' has no"),
    (lambda res, png: plots.plot_learning_curves({}, png), r"curves: expected at least one"),
    (
        lambda res, png: plots.plot_learning_curves({"a": ([1, 2, 3], [1, 2])}, png),
        r"curves\['a'\]\[0\]: steps and values must be non-empty and of equal length",
    ),
    (
        lambda res, png: plots.plot_learning_curves({"a": [([1, 2], [1, 2]), "run"]}, png),
        r"curves\['a'\]\[1\]: expected a \(steps, values\) pair",
    ),
    (
        lambda res, png: plots.plot_learning_curves(
            {"a": [([1, 2], [1, 2]), ([5, 6], [1, 2])]}, png
        ),
        r"curves\['a'\]: the runs' step ranges do not overlap",
    ),
    (
        lambda res, png: plots.plot_learning_curves({"a": ([1], [1])}, png, band="sd"),
        r"band: expected one of",
    ),
    (lambda res, png: BARE.group_values("segment"), r"results: policy 'bare' has no breakdown"),
    (lambda res, png: res[0].group_values("tier"), r"by: expected one of"),
    (lambda res, png: results_to_dict([]), r"results: expected at least one"),
]


@pytest.mark.parametrize(("call", "message"), BAD_CALLS, ids=[m for _, m in BAD_CALLS])
def test_bad_arguments_raise_clear_errors(results, tmp_path: Path, call, message) -> None:
    png = tmp_path / "x.png"
    with pytest.raises(ValueError, match=message):
        call(results, png)
    assert not png.exists()
