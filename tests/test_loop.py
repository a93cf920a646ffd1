"""The closed loop against a real ``cvm serve`` process: decisions logged as made, a row per
period, promotion through hot reload only when OPE supports it, and a deliberately worse
candidate refused while the serving model stays."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from cvm_rl.loop.candidates import (
    customer_fold,
    long_run_labels,
    response_from_log,
    served_with_epsilon,
)
from cvm_rl.loop.closed_loop import run_loop, window_veto
from cvm_rl.loop.config import CANDIDATES, DEFAULT_CANDIDATES, ESTIMANDS, STARTS, LoopConfig
from cvm_rl.loop.engine import greedy_weights
from cvm_rl.rollout import Decisions
from simulator.config import load_scenario


def _served_model(log_path: Path) -> list[str]:
    from cvm_rl.logs.store import DecisionLog

    with DecisionLog(log_path) as log:
        return [a.model_id for a in log.activations()]


@pytest.mark.slow
def test_a_worse_candidate_is_refused_and_the_serving_model_stays(tmp_path: Path) -> None:
    config = LoopConfig(
        tmp_path / "loop",
        customers=300,
        periods=3,
        retrain_every=2,
        candidates=("random",),
        n_bootstrap=50,
        batch_rows=128,  # three requests a week: the engine chunks its batches
    )
    result = run_loop(config)

    assert result.exit_code == 0
    assert [r.period for r in result.rows] == [1, 2, 3]
    for row in result.rows:
        assert row.decisions == row.logged == row.outcomes == 300  # logged == made
        assert row.requests == 3
        assert row.policy == "rules"
        assert 0 < row.explored_share < 0.3
        assert np.isfinite(row.value_per_customer) and np.isfinite(row.exploration_cost)
    # One retrain, after period 2 (none after the last period).
    (retrain,) = result.retrains
    assert retrain.period == 2 and result.rows[1].retrain is retrain
    assert retrain.promoted is None
    assert "no candidate's lift is above 0" in retrain.reason
    (random,) = retrain.candidates
    assert random.name == "random" and random.lift.low < 0
    # Evaluated: the held-out customers' decisions but each one's latest (its week is in the
    # label's CLV tail), i.e. one of their two weeks.
    assert retrain.eval_rows == (600 - retrain.train_rows) // 2
    assert Path(retrain.report).is_file()
    # The service still serves the starting model: GetPolicyInfo at the end, and the log's
    # activations (no LoadBundle).
    start = result.rows[0].model_id
    assert result.final_model_id == start
    assert _served_model(Path(result.log_path)) == [start]
    assert "keep rules" in result.table()
    assert result.promotions() == []
    # The JSON round-trips.
    path = result.write_json(tmp_path / "loop.json")
    loaded = json.loads(path.read_text())
    assert [r["period"] for r in loaded["rows"]] == [1, 2, 3]
    assert loaded["rows"][1]["retrain"]["promoted"] is None


@pytest.mark.slow
def test_a_candidate_the_log_supports_is_promoted_by_hot_reload(tmp_path: Path) -> None:
    # Starting from the random campaign, no contact is clearly better, even on a small log.
    config = LoopConfig(
        tmp_path / "loop",
        customers=400,
        periods=3,
        retrain_every=2,
        start="random",
        candidates=("no_contact", "random"),
        n_bootstrap=50,
        # The whole policy over the window: never contacting beats random contacts, while
        # skipping a single contact of the random campaign (the advantage) does not.
        estimand="window",
    )
    result = run_loop(config)

    assert result.exit_code == 0
    (retrain,) = result.retrains
    assert retrain.promoted == "no_contact"
    chosen = retrain.evaluation("no_contact")
    assert chosen is not None and chosen.lift.low > 0
    assert [r.policy for r in result.rows] == ["random", "random", "no_contact@p2"]
    assert result.rows[2].model_id == chosen.model_id == result.final_model_id
    assert _served_model(Path(result.log_path)) == [result.rows[0].model_id, chosen.model_id]
    assert all(r.decisions == r.logged for r in result.rows)
    (promotion,) = result.promotions()
    assert promotion["weeks_after"] == 1
    assert promotion["realized_value_per_week_after"] == pytest.approx(
        result.rows[2].value_per_customer
    )


def test_the_cli_registers_loop_with_the_loop_configs_defaults() -> None:
    from cvm_rl.cli import build_parser
    from cvm_rl.cli import loop as cli_loop

    args = build_parser().parse_args(["loop"])
    defaults = LoopConfig(Path("x"))
    for name in (
        "customers",
        "periods",
        "retrain_every",
        "epsilon",
        "seed",
        "start",
        "estimand",
        "tail_value",
        "label_weeks",
        "confirm_window",
        "gamma",
        "q_iterations",
    ):
        assert getattr(args, name) == getattr(defaults, name), name
    assert args.n_bootstrap == defaults.n_bootstrap
    assert tuple(args.candidates) == defaults.candidates == DEFAULT_CANDIDATES
    assert cli_loop.CANDIDATES == CANDIDATES and cli_loop.STARTS == STARTS
    assert cli_loop.ESTIMANDS == ESTIMANDS
    assert isinstance(args, argparse.Namespace)


def test_the_loop_out_directory_is_absolute() -> None:
    # The service runs in its own directory: a relative bundle path would not resolve there.
    config = LoopConfig(Path("runs/closed_loop"))
    assert config.out.is_absolute() and config.out == Path.cwd() / "runs/closed_loop"


def test_the_loop_config_refuses_what_cannot_work() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        LoopConfig(Path("x"), epsilon=0.0)
    with pytest.raises(ValueError, match="candidates"):
        LoopConfig(Path("x"), candidates=("ppo",))
    with pytest.raises(ValueError, match="start"):
        LoopConfig(Path("x"), start="clv_planner")
    config = LoopConfig(Path("x"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.customers = 3  # type: ignore[misc]


def test_greedy_weights_value_the_served_model_without_exploration() -> None:
    # Epsilon 0.2 over 4 eligible actions, greedy action 1; and a uniform row (all tied).
    probs = np.array([[0.05, 0.85, 0.05, 0.05], [0.25, 0.25, 0.25, 0.25]])
    served = Decisions(np.array([1, 3]), np.array([0.85, 0.25]), probs)
    np.testing.assert_allclose(greedy_weights(served, np.array([False, False])), [1 / 0.85, 1])
    explored = Decisions(np.array([0, 2]), np.array([0.05, 0.25]), probs)
    np.testing.assert_allclose(greedy_weights(explored, np.array([True, False])), [0.0, 1.0])
    # Without the distributions the greedy action is taken to be unique.
    unknown = Decisions(np.array([1, 0]), np.array([0.85, 0.05]))
    np.testing.assert_allclose(greedy_weights(unknown, np.array([False, True])), [1 / 0.85, 0])


def test_a_candidate_is_valued_as_the_service_serves_it() -> None:
    from cvm_rl.policies import RuleBasedPolicy
    from cvm_rl.rollout import rollout

    scenario = load_scenario("default")
    rules = RuleBasedPolicy(scenario)
    served = served_with_epsilon(scenario, rules, 0.1)
    t = next(iter(rollout(rules, scenario, n_customers=50, seed=3, weeks=1)))
    probs = served.action_probabilities(t.obs, t.mask)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    greedy = rules.action_probabilities(t.obs, t.mask).argmax(axis=1)
    eligible = t.mask.sum(axis=1)
    np.testing.assert_allclose(probs[np.arange(50), greedy], 0.9 + 0.1 / eligible)
    assert served.name == rules.name


def test_the_response_estimate_from_a_randomized_log_finds_the_contact_uplift() -> None:
    from cvm_rl.logs.arrays import LoggedData, LoggedDecisions
    from cvm_rl.policies import ExplorationPolicy
    from cvm_rl.policies.planner import ESTABLISHED, NEW, estimate_response
    from cvm_rl.rollout import rollout
    from simulator.core import observation_feature_names

    scenario = load_scenario("default")
    logger = ExplorationPolicy(scenario, no_contact_share=0.5, seed=1)
    obs, mask, actions, props, purchased = [], [], [], [], []
    for t in rollout(logger, scenario, n_customers=20_000, seed=1, weeks=4):
        obs.append(t.obs)
        mask.append(t.mask)
        actions.append(t.decisions.actions)
        props.append(t.decisions.propensities)
        purchased.append(t.next_info["purchases"] > 0)

    n = sum(len(o) for o in obs)
    data = LoggedData(
        np.concatenate(obs),
        np.concatenate(mask),
        np.concatenate(actions),
        np.concatenate(props),
        np.zeros(n),
    )
    decisions = LoggedDecisions(
        data=data,
        event_ids=np.array([str(i) for i in range(n)], dtype=object),
        customer_ids=np.array([str(i % 20_000) for i in range(n)], dtype=object),
        decided_at_us=np.arange(n),
        model_ids=np.array(["m"] * n, dtype=object),
        probabilities=None,
        feature_names=tuple(observation_feature_names(scenario)),
        action_names=tuple(scenario.action_names()),
    )
    fitted = response_from_log(decisions, np.concatenate(purchased), scenario, prior_weeks=0)
    # The simulator's own measurement on a randomized campaign of the same design (another
    # assignment stream, purchase counts rather than flags): the uplifts agree.
    reference = estimate_response(scenario, n_customers=20_000, weeks=4, seed=1)
    assert fitted.lift.shape == reference.lift.shape
    assert (fitted.lift[0] == 0).all()
    assert (fitted.orders[1:, [ESTABLISHED, NEW]] > 100).all()
    assert np.corrcoef(fitted.lift[1:].ravel(), reference.lift[1:].ravel())[0, 1] > 0.8
    shrunk = response_from_log(decisions, np.concatenate(purchased), scenario, prior_weeks=1e9)
    np.testing.assert_allclose(shrunk.lift, 0.0, atol=1e-4)


def test_the_customer_split_is_seeded_and_about_the_share() -> None:
    ids = [f"c-{i}" for i in range(4000)]
    fold = customer_fold(ids, 0, 0.5)
    assert 0.45 < fold.mean() < 0.55
    np.testing.assert_array_equal(fold, customer_fold(ids, 0, 0.5))
    assert (fold != customer_fold(ids, 1, 0.5)).any()


def test_long_run_labels_are_the_later_rewards_plus_the_value_where_they_stop(
    tmp_path: Path,
) -> None:
    from cvm_rl.logs.simulated import simulate_to_log
    from cvm_rl.logs.store import DecisionLog
    from cvm_rl.ope.inputs import load_log
    from cvm_rl.policies import RandomPolicy

    scenario = load_scenario("default")
    with DecisionLog(tmp_path / "log.db") as log:
        simulate_to_log(RandomPolicy(scenario), scenario, log, customers=20, weeks=4, seed=3)
    decisions = load_log(tmp_path / "log.db").decisions

    def value(obs: np.ndarray) -> np.ndarray:
        out: np.ndarray = 100.0 + obs.astype(np.float64).sum(axis=1)
        return out

    for weeks, kept_weeks in ((None, 3), (1, 3), (2, 2)):
        labelled = long_run_labels(decisions, 0.5, value, weeks=weeks)
        # Each customer keeps its decisions that have ``weeks`` later ones (or one, for None).
        assert len(labelled) == 20 * kept_weeks
        for customer in np.unique(decisions.customer_ids):
            rows = np.flatnonzero(decisions.customer_ids == customer)
            kept = np.flatnonzero(labelled.customer_ids == customer)
            assert len(rows) == 4 and len(kept) == kept_weeks
            rewards, obs = decisions.data.rewards[rows], decisions.data.obs[rows]
            for t, row in enumerate(kept):
                stop = 3 if weeks is None else t + weeks
                expected = (
                    sum(0.5 ** (k - t) * rewards[k] for k in range(t, stop))
                    + 0.5 ** (stop - t) * value(obs[stop][None])[0]
                    - value(obs[t][None])[0]
                )
                assert labelled.data.rewards[row] == pytest.approx(expected)
                assert labelled.event_ids[row] == decisions.event_ids[rows[t]]
    # Without a value: the return to go over the logged weeks, every row kept.
    plain = long_run_labels(decisions, 1.0, None)
    assert len(plain) == len(decisions)
    first = np.flatnonzero(decisions.customer_ids == decisions.customer_ids[0])
    assert plain.data.rewards[first[0]] == pytest.approx(decisions.data.rewards[first].sum())
    two = long_run_labels(decisions, 1.0, None, weeks=2)
    assert len(two) == 20 * 3
    with pytest.raises(ValueError, match="weeks must be >= 1"):
        long_run_labels(decisions, 1.0, None, weeks=0)


def test_the_whole_policy_check_vetoes_unless_its_lower_bound_is_above_zero() -> None:
    from cvm_rl.loop.results import CandidateEvaluation, Estimate

    config = LoopConfig(Path("x"), retrain_every=8)

    def evaluation(low: float) -> CandidateEvaluation:
        lift = Estimate(0.1, low, 0.3)
        return CandidateEvaluation("c", "b", "m", "MIS", lift, lift, "")

    assert window_veto(None, config) is None  # no check asked for
    assert window_veto(evaluation(0.01), config) is None
    for low in (-0.05, 0.0, float("nan")):  # a bound that is not above zero, or none
        reason = window_veto(evaluation(low), config)
        assert reason is not None and "not above 0 with 95% confidence" in reason
        assert "last 8 weeks" in reason
