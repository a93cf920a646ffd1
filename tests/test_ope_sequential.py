"""Long-run off-policy evaluation: trajectories from decision rows, the sequential estimators
against hand computations and simulated truths, and their input checks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from cvm_rl.ope.sequential import (
    SEQUENTIAL_ESTIMATORS,
    FittedQEvaluation,
    MarginalizedDoublyRobust,
    MarginalizedIS,
    PerDecisionIS,
    SequentialDoublyRobust,
    SequentialEstimator,
    WeightedMarginalizedDoublyRobust,
    WeightedPerDecisionIS,
    WeightedSequentialDoublyRobust,
    cumulative_weight_diagnostics,
    step_weight_diagnostics,
)
from cvm_rl.ope.trajectories import Trajectories
from cvm_rl.policies import EpsilonMixturePolicy, NoContactPolicy, RuleBasedPolicy
from cvm_rl.policies.oracle import OraclePolicy
from cvm_rl.rollout import rollout
from simulator.config import load_scenario

SCENARIO = load_scenario("default")
WEEK_US = 7 * 24 * 3600 * 1_000_000


def _logger(explore: float) -> EpsilonMixturePolicy:
    return EpsilonMixturePolicy(SCENARIO, RuleBasedPolicy(SCENARIO), explore)


@pytest.fixture(scope="module")
def small_log() -> Trajectories:
    return Trajectories.from_rollout(_logger(0.3), SCENARIO, n_customers=300, seed=3, weeks=4)


def _rows(traj: Trajectories) -> dict[str, np.ndarray]:
    """The flat decision rows of fully valid trajectories, customer-major."""
    n, horizon = traj.valid.shape
    return {
        "customer_id": np.repeat(traj.customer_id, horizon),
        "decided_at": np.tile(np.arange(horizon) * WEEK_US, n) + 1_700_000_000_000_000,
        "obs": traj.obs.reshape(n * horizon, -1),
        "mask": traj.mask.reshape(n * horizon, -1),
        "action": traj.action.reshape(-1),
        "pscore": traj.pscore.reshape(-1),
        "reward": traj.reward.reshape(-1),
    }


def _from_rows(rows: dict[str, np.ndarray], **extra: np.ndarray) -> Trajectories:
    return Trajectories.from_rows(
        rows["customer_id"],
        rows["decided_at"],
        rows["obs"],
        rows["mask"],
        rows["action"],
        rows["pscore"],
        rows["reward"],
        **extra,
    )


def _take(rows: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    return {name: column[index] for name, column in rows.items()}


# --- trajectories ----------------------------------------------------------------------------


def test_from_rollout_keeps_the_log_and_its_distribution(small_log: Trajectories) -> None:
    assert small_log.obs.shape == (300, 4, small_log.n_features)
    assert small_log.mask.shape == small_log.logging_probabilities.shape == (300, 4, 25)
    assert small_log.valid.all()
    logged = np.take_along_axis(small_log.logging_probabilities, small_log.action[..., None], 2)
    np.testing.assert_array_equal(logged[..., 0], small_log.pscore)
    # The logger re-evaluated on the stored observations gives the logged distribution.
    np.testing.assert_allclose(
        small_log.target_probabilities(_logger(0.3)), small_log.logging_probabilities
    )


def test_unordered_rows_give_the_same_trajectories_as_ordered_rows(
    small_log: Trajectories,
) -> None:
    rows = _rows(small_log)
    rows["customer_id"] = np.array([f"c{i:04d}" for i in rows["customer_id"]])
    ordered = _from_rows(
        rows, logging_probabilities=small_log.logging_probabilities.reshape(-1, 25)
    )
    shuffle = np.random.default_rng(0).permutation(len(rows["action"]))
    shuffled = _from_rows(
        _take(rows, shuffle),
        logging_probabilities=small_log.logging_probabilities.reshape(-1, 25)[shuffle],
    )
    for name in ("obs", "mask", "action", "pscore", "reward", "valid", "customer_id"):
        np.testing.assert_array_equal(getattr(ordered, name), getattr(shuffled, name), name)
        if name != "customer_id":
            np.testing.assert_array_equal(getattr(ordered, name), getattr(small_log, name), name)
    np.testing.assert_array_equal(ordered.logging_probabilities, shuffled.logging_probabilities)
    # row_index points every step back at its input row.
    np.testing.assert_array_equal(shuffle[shuffled.row_index], ordered.row_index)


def test_datetime_decision_times_order_like_microseconds(small_log: Trajectories) -> None:
    rows = _rows(small_log.select(np.arange(20)))
    reversed_rows = _take(rows, np.arange(len(rows["action"]))[::-1])
    as_datetime = dict(reversed_rows, decided_at=reversed_rows["decided_at"].astype("M8[us]"))
    np.testing.assert_array_equal(_from_rows(as_datetime).obs, _from_rows(rows).obs)


def test_padding_for_customers_with_fewer_steps(small_log: Trajectories) -> None:
    """Customer i keeps its first ``lengths[i]`` weeks: the padded trajectories hold exactly
    those steps, padding is neutral, and every estimator runs on them."""
    part = small_log.select(np.arange(60))
    rows = _rows(part)
    lengths = np.random.default_rng(1).integers(1, 5, 60)
    keep = np.flatnonzero(np.tile(np.arange(4), 60) < np.repeat(lengths, 4))
    traj = _from_rows(_take(rows, keep))
    np.testing.assert_array_equal(traj.lengths, lengths)
    np.testing.assert_array_equal(traj.valid, np.arange(4) < lengths[:, None])
    np.testing.assert_array_equal(traj.reward[traj.valid], part.reward[traj.valid])
    assert (traj.reward[~traj.valid] == 0).all() and (traj.pscore[~traj.valid] == 1).all()
    np.testing.assert_allclose(traj.returns(), (part.reward * traj.valid).sum(axis=1))

    target = traj.target_probabilities(RuleBasedPolicy(SCENARIO))
    assert (target[~traj.valid][:, 0] == 1).all()
    # PDIS by hand over each customer's own steps only.
    at_logged = np.take_along_axis(target, traj.action[..., None], 2)[..., 0]
    expected = np.mean(
        [
            sum(
                np.prod(at_logged[i, : t + 1] / traj.pscore[i, : t + 1]) * traj.reward[i, t]
                for t in range(lengths[i])
            )
            for i in range(60)
        ]
    )
    assert PerDecisionIS().estimate_policy_value(traj, target) == pytest.approx(expected)
    for cls in SEQUENTIAL_ESTIMATORS:
        assert np.isfinite(cls().estimate_policy_value(traj, target)), cls.__name__


# --- the target is the logger ----------------------------------------------------------------


def test_target_equal_to_logger_gives_the_on_policy_mean(small_log: Trajectories) -> None:
    logged = small_log.logging_probabilities
    assert logged is not None
    on_policy = small_log.returns().mean()
    for cls in (PerDecisionIS, WeightedPerDecisionIS, MarginalizedIS):
        assert cls().estimate_policy_value(small_log, logged) == pytest.approx(
            on_policy, rel=1e-12
        ), cls.__name__
    # With all weights 1 the doubly robust family coincide...
    dr = SequentialDoublyRobust().estimate_policy_value(small_log, logged)
    for cls in (
        WeightedSequentialDoublyRobust,
        MarginalizedDoublyRobust,
        WeightedMarginalizedDoublyRobust,
    ):
        assert cls().estimate_policy_value(small_log, logged) == pytest.approx(dr, rel=1e-9)
    # ...and, like FQE, stay within the on-policy mean's own sampling noise.
    noise = PerDecisionIS().estimate_interval(small_log, logged, seed=0).half_width
    fqe = FittedQEvaluation().estimate_policy_value(small_log, logged)
    assert abs(dr - on_policy) < noise
    assert abs(fqe - on_policy) < noise
    diagnostics = cumulative_weight_diagnostics(small_log, logged)
    np.testing.assert_allclose(diagnostics.ess_share, 1.0)
    np.testing.assert_allclose(diagnostics.max_weight, 1.0)


# --- simulated truth -------------------------------------------------------------------------


def test_estimates_move_towards_the_targets_simulated_value() -> None:
    """Logged by rules mixed half-and-half with uniform exploration, valued for the rules
    alone: every estimator lands closer to the rules' value on the same population than the
    logged mean does, and within 3 standard errors (its bootstrap's and the truth's)."""
    n, weeks, seed = 6000, 4, 1
    traj = Trajectories.from_rollout(_logger(0.5), SCENARIO, n_customers=n, seed=seed, weeks=weeks)
    target = RuleBasedPolicy(SCENARIO)
    returns = sum(
        t.reward for t in rollout(target, SCENARIO, n_customers=n, seed=seed, weeks=weeks)
    )
    truth, truth_se = returns.mean(), returns.std() / np.sqrt(n)
    naive_error = abs(traj.returns().mean() - truth)
    assert naive_error > 3 * truth_se  # the test has something to detect
    action_dist = traj.target_probabilities(target)
    for cls in SEQUENTIAL_ESTIMATORS:
        interval = cls().estimate_interval(traj, action_dist, n_bootstrap=100, seed=0)
        error = abs(interval.estimate - truth)
        assert error < naive_error, (cls.__name__, interval, truth)
        assert error < 3 * np.hypot(interval.half_width / 1.96, truth_se), (cls.__name__, interval)


def test_cumulative_weights_degrade_with_the_horizon(small_log: Trajectories) -> None:
    """A deterministic target away from the logger: ESS share falls step after step."""
    diagnostics = cumulative_weight_diagnostics(
        small_log, small_log.target_probabilities(RuleBasedPolicy(SCENARIO))
    )
    assert (np.diff(diagnostics.ess_share) < 0).all()
    assert (np.diff(diagnostics.zero_share) >= 0).all()
    assert diagnostics.ess_share[-1] < 0.5


def test_step_weight_diagnostics_by_hand() -> None:
    weights = np.array([[1.0, 1.0, 0.0], [1.0, 3.0, 2.0], [2.0, 0.0, 9.0]])
    valid = np.array([[True, True, False], [True, True, True], [True, True, True]])
    d = step_weight_diagnostics(weights, valid)
    np.testing.assert_allclose(d.ess, [16 / 6, 16 / 10, 121 / 85])
    np.testing.assert_allclose(d.ess_share, [16 / 18, 16 / 30, 121 / 170])
    np.testing.assert_allclose(d.max_weight, [2, 3, 9])
    np.testing.assert_allclose(d.max_weight_share, [0.5, 0.75, 9 / 11])
    np.testing.assert_allclose(d.zero_share, [0, 1 / 3, 0])
    assert d.at_steps([1, 3])["max_weight"] == [2.0, 9.0]


# --- a hand-made example ---------------------------------------------------------------------

GAMMA = 0.9
# Four customers, two steps (customer 3 has one), two actions, one observation: a state in
# {0, 1}. Columns per step: state, action, propensity, reward, target's distribution.
HAND_STEPS: list[list[tuple[int, int, float, float, tuple[float, float]]]] = [
    [(0, 0, 0.5, 1.0, (0.3, 0.7)), (1, 1, 0.4, 3.0, (0.0, 1.0))],
    [(0, 1, 0.5, 2.0, (0.3, 0.7)), (1, 1, 0.4, 1.0, (0.0, 1.0))],
    [(0, 1, 0.5, 0.0, (0.3, 0.7)), (0, 0, 0.6, 1.5, (1.0, 0.0))],
    [(1, 1, 0.8, 0.5, (0.0, 1.0))],
]


def _hand_trajectories() -> tuple[Trajectories, np.ndarray]:
    rows = [(i, t, *step) for i, steps in enumerate(HAND_STEPS) for t, step in enumerate(steps)]
    customer, time, state, action, pscore, reward, _ = zip(*rows, strict=True)
    traj = Trajectories.from_rows(
        np.array(customer),
        np.array(time),
        np.array(state, dtype=float)[:, None],
        np.ones((len(rows), 2), dtype=bool),
        np.array(action),
        np.array(pscore),
        np.array(reward),
    )
    action_dist = np.zeros((4, 2, 2))
    action_dist[..., 0] = 1.0  # padding
    for i, t, *_, probs in rows:
        action_dist[i, t] = probs
    return traj, action_dist


def _state_indicators(obs: np.ndarray) -> np.ndarray:
    """One indicator per state: with a vanishing ridge penalty every model is a table."""
    return np.column_stack([obs[:, 0] == 0, obs[:, 0] == 1]).astype(float)


TABULAR = {"ridge_alpha": 1e-9, "n_folds": 1, "feature_map": _state_indicators}


def _hand_reference() -> dict[str, float]:
    """Every estimator computed step by step from HAND_STEPS, with tables for Q and the
    state ratio (what the models reduce to with state indicators and no penalty)."""
    n, horizon = len(HAND_STEPS), 2
    rho = [[probs[a] / p for (_, a, p, _, probs) in steps] for steps in HAND_STEPS]
    weight = [list(np.cumprod(r)) for r in rho]
    reached = [sum(len(steps) > t for steps in HAND_STEPS) for t in range(horizon)]

    def mean_by(keys: list, values: list) -> dict:
        return {
            k: np.mean([v for kk, v in zip(keys, values, strict=True) if kk == k]) for k in keys
        }

    def at(t: int) -> list[int]:
        return [i for i in range(n) if len(HAND_STEPS[i]) > t]

    # FQE: cell means of r + gamma V_{t+1}, backwards.
    q: list[dict] = [{}, {}]
    value: list[dict] = [{}, {}]
    for t in (1, 0):
        targets = []
        for i in at(t):
            _, _, _, r, _ = HAND_STEPS[i][t]
            targets.append(
                r + (GAMMA * value[t + 1][i] if t + 1 < horizon and i in at(t + 1) else 0)
            )
        q[t] = mean_by([HAND_STEPS[i][t][:2] for i in at(t)], targets)
        for i in at(t):
            s, _, _, _, probs = HAND_STEPS[i][t]
            value[t][i] = sum(p * q[t].get((s, b), 0.0) for b, p in enumerate(probs) if p > 0)
    q_logged = {(i, t): q[t][HAND_STEPS[i][t][:2]] for t in range(horizon) for i in at(t)}

    # MIS: w_1(s) = mean of rho_0 over the customers in s at step 1, scaled to mean 1.
    ratio = {(i, 0): 1.0 for i in at(0)}
    states_1 = [HAND_STEPS[i][1][0] for i in at(1)]
    table = mean_by(states_1, [rho[i][0] for i in at(1)])
    scale = np.mean([table[s] for s in states_1])
    ratio |= {(i, 1): table[HAND_STEPS[i][1][0]] / scale for i in at(1)}

    def step_ratio(terms: Callable[[int, int], tuple[float, float]]) -> float:
        """sum_t gamma^t (n_t / n) sum_i num / sum_i den."""
        total = 0.0
        for t in range(horizon):
            num, den = np.sum([terms(i, t) for i in at(t)], axis=0)
            total += GAMMA**t * reached[t] / n * num / den
        return total

    def previous(i: int, t: int) -> float:
        return 1.0 if t == 0 else weight[i][t - 1]

    def marginal(i: int, t: int) -> float:
        return ratio[i, t] * rho[i][t]

    def previous_marginal(i: int, t: int) -> float:
        return 1.0 if t == 0 else marginal(i, t - 1)

    def reward(i: int, t: int) -> float:
        return HAND_STEPS[i][t][3]

    def residual(i: int, t: int) -> float:
        return reward(i, t) - q_logged[i, t]

    def per_customer(term: Callable[[int, int], float]) -> float:
        return float(
            np.mean(
                [
                    sum(GAMMA**t * term(i, t) for t in range(len(s)))
                    for i, s in enumerate(HAND_STEPS)
                ]
            )
        )

    return {
        "pdis": per_customer(lambda i, t: weight[i][t] * reward(i, t)),
        "wpdis": step_ratio(lambda i, t: (weight[i][t] * reward(i, t), weight[i][t])),
        "fqe": float(np.mean([value[0][i] for i in range(n)])),
        "dr": per_customer(
            lambda i, t: weight[i][t] * residual(i, t) + previous(i, t) * value[t][i]
        ),
        "wdr": step_ratio(lambda i, t: (weight[i][t] * residual(i, t), weight[i][t]))
        + step_ratio(lambda i, t: (previous(i, t) * value[t][i], previous(i, t))),
        "mis": step_ratio(
            lambda i, t: (ratio[i, t] * rho[i][t] * reward(i, t), ratio[i, t] * rho[i][t])
        ),
        "mdr": per_customer(
            lambda i, t: marginal(i, t) * residual(i, t) + previous_marginal(i, t) * value[t][i]
        ),
        "wmdr": step_ratio(lambda i, t: (marginal(i, t) * residual(i, t), marginal(i, t)))
        + step_ratio(lambda i, t: (previous_marginal(i, t) * value[t][i], previous_marginal(i, t))),
    }


@pytest.mark.parametrize("cls", SEQUENTIAL_ESTIMATORS, ids=lambda c: c.estimator_name)
def test_hand_example_matches_a_direct_computation(cls: type[SequentialEstimator]) -> None:
    traj, action_dist = _hand_trajectories()
    kwargs = {} if cls in (PerDecisionIS, WeightedPerDecisionIS) else TABULAR
    estimate = cls(gamma=GAMMA, **kwargs).estimate_policy_value(traj, action_dist)
    assert estimate == pytest.approx(_hand_reference()[cls.estimator_name], rel=1e-6)


def test_hand_example_spelled_out() -> None:
    """The reference itself on two estimators, written as numbers."""
    reference = _hand_reference()
    # W = [0.6, 1.5], [1.4, 3.5], [1.4, 1.4 / 0.6], [1.25]
    pdis = 0.6 * 1 + 0.9 * 1.5 * 3 + 1.4 * 2 + 0.9 * 3.5 * 1 + 0 + 0.9 * 1.4 / 0.6 * 1.5 + 0.625
    assert reference["pdis"] == pytest.approx(pdis / 4)
    # Q_1(1, 1) = 2, Q_1(0, 0) = 1.5; Q_0(0, 0) = 1 + 0.9 * 2, Q_0(0, 1) = mean(2 + 1.8, 1.35).
    v0 = 0.3 * 2.8 + 0.7 * (3.8 + 1.35) / 2
    assert reference["fqe"] == pytest.approx((3 * v0 + 0.5) / 4)


# --- intervals, reproducibility, models ------------------------------------------------------


def test_intervals_are_seeded(small_log: Trajectories) -> None:
    target = small_log.target_probabilities(RuleBasedPolicy(SCENARIO))
    for estimator in (WeightedPerDecisionIS(), MarginalizedIS()):
        first = estimator.estimate_interval(small_log, target, n_bootstrap=50, seed=4)
        again = estimator.estimate_interval(small_log, target, n_bootstrap=50, seed=4)
        other = estimator.estimate_interval(small_log, target, n_bootstrap=50, seed=5)
        assert first == again
        assert (first.low, first.high) != (other.low, other.high)
        assert first.low <= first.estimate <= first.high
        assert first.estimate == estimator.estimate_policy_value(small_log, target)
    # The fold split is seeded by the estimator's seed.
    fqe = [FittedQEvaluation(seed=s).estimate_policy_value(small_log, target) for s in (0, 0, 1)]
    assert fqe[0] == fqe[1] != fqe[2]


def test_boosted_trees_and_product_ratios_run(small_log: Trajectories) -> None:
    part = small_log.select(np.arange(80))
    target = part.target_probabilities(NoContactPolicy(SCENARIO))
    for estimator in (
        FittedQEvaluation(q_model="hgb"),
        MarginalizedIS(ratio_model="hgb"),
        MarginalizedIS(recursive=False),
        SequentialDoublyRobust(gamma=0.5, n_folds=3),
    ):
        assert np.isfinite(estimator.estimate_policy_value(part, target)), estimator


# --- input checks ----------------------------------------------------------------------------


def _bad_rows() -> list[tuple[str, dict, str]]:
    def with_(name: str, change: Callable[[np.ndarray], np.ndarray]) -> Callable[[dict], dict]:
        return lambda rows: dict(rows, **{name: change(rows[name].copy())})

    def put(index: int, value: float) -> Callable[[np.ndarray], np.ndarray]:
        def change(column: np.ndarray) -> np.ndarray:
            column = column.astype(float) if isinstance(value, float) else column
            column[index] = value
            return column

        return change

    return [
        ("pscore zero", with_("pscore", put(3, 0.0)), r"pscore must be in \(0, 1\]"),
        ("pscore above one", with_("pscore", put(3, 1.5)), r"pscore must be in \(0, 1\]"),
        ("NaN reward", with_("reward", put(2, np.nan)), "reward must be finite"),
        ("short obs", with_("obs", lambda c: c[:-1]), "must have the same length.*obs"),
        ("action range", with_("action", put(0, 25)), r"action must be in \[0, 25\)"),
        ("float action", with_("action", lambda c: c.astype(float)), "action must hold integers"),
        ("mask dtype", with_("mask", lambda c: c.astype(int)), "mask must be boolean"),
        ("float times", with_("decided_at", lambda c: c * 1.0), "decided_at must be"),
        ("tied times", with_("decided_at", put(1, 1_700_000_000_000_000)), "decided_at: customer"),
        ("NaN obs", with_("obs", put(5, np.nan)), "obs must be finite"),
    ]


@pytest.mark.parametrize(("label", "change", "match"), _bad_rows(), ids=lambda x: str(x)[:20])
def test_bad_rows_name_the_argument(
    small_log: Trajectories, label: str, change: Callable[[dict], dict], match: str
) -> None:
    rows = _rows(small_log.select(np.arange(5)))
    with pytest.raises(ValueError, match=match):
        _from_rows(change(rows))


def test_logging_probabilities_must_agree_with_pscore(small_log: Trajectories) -> None:
    part = small_log.select(np.arange(5))
    rows = _rows(part)
    probs = part.logging_probabilities.reshape(-1, 25)
    with pytest.raises(ValueError, match="pscore must equal logging_probabilities"):
        _from_rows(dict(rows, pscore=rows["pscore"] * 0.5), logging_probabilities=probs)
    with pytest.raises(ValueError, match="logging_probabilities must have one row"):
        _from_rows(rows, logging_probabilities=probs[:-1])


def _bad_action_dists() -> list[tuple[str, Callable[[np.ndarray], np.ndarray], str]]:
    def scaled(dist: np.ndarray) -> np.ndarray:
        return dist * 1.1

    def negative(dist: np.ndarray) -> np.ndarray:
        dist = dist.copy()
        dist[0, 0, :2] = [-0.5, 1.5]
        return dist

    def ineligible(dist: np.ndarray, traj: Trajectories) -> np.ndarray:
        i, t, a = np.argwhere(~traj.mask)[0]
        dist = dist.copy()
        dist[i, t] = 0.0
        dist[i, t, a] = 1.0
        return dist

    return [
        ("not summing to one", scaled, "action_dist must sum to 1"),
        ("negative", negative, "action_dist must be non-negative"),
        ("wrong shape", lambda d: d[:, :-1], "action_dist must have shape"),
        ("NaN", lambda d: np.where(d > 0, np.nan, d), "action_dist must be finite"),
        ("ineligible", ineligible, "action_dist must be 0 on actions the mask"),
    ]


@pytest.mark.parametrize(("label", "change", "match"), _bad_action_dists())
def test_bad_action_dist_is_named(
    small_log: Trajectories, label: str, change: Callable, match: str
) -> None:
    dist = small_log.logging_probabilities
    bad = change(dist, small_log) if label == "ineligible" else change(dist)
    for cls in (PerDecisionIS, FittedQEvaluation, MarginalizedIS):
        with pytest.raises(ValueError, match=match):
            cls().estimate_policy_value(small_log, bad)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: PerDecisionIS(gamma=1.5), "PerDecisionIS.gamma must be in"),
        (lambda: FittedQEvaluation(ridge_alpha=0), "ridge_alpha must be > 0"),
        (lambda: FittedQEvaluation(n_folds=0), "n_folds must be an int >= 1"),
        (lambda: FittedQEvaluation(q_model="xgb"), "q_model must be one of"),
        (lambda: MarginalizedIS(ratio_model="forest"), "ratio_model must be one of"),
    ],
)
def test_bad_hyperparameters_name_the_field(make: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_call_arguments_are_named(small_log: Trajectories) -> None:
    dist = small_log.logging_probabilities
    with pytest.raises(ValueError, match="alpha must be in"):
        PerDecisionIS().estimate_interval(small_log, dist, alpha=1.5)
    with pytest.raises(ValueError, match="n_bootstrap must be"):
        PerDecisionIS().estimate_interval(small_log, dist, n_bootstrap=1)
    with pytest.raises(ValueError, match="trajectories must be a Trajectories"):
        PerDecisionIS().estimate_policy_value(dist, dist)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_folds=5 needs at least 10 customers"):
        FittedQEvaluation(n_folds=5).estimate_policy_value(small_log.select(np.arange(6)), dist[:6])
    with pytest.raises(ValueError, match="latent state"):
        small_log.target_probabilities(OraclePolicy(SCENARIO))
    with pytest.raises(ValueError, match="weeks must be <= the scenario's horizon"):
        Trajectories.from_rollout(_logger(0.3), SCENARIO, n_customers=5, seed=0, weeks=53)


# --- double robustness of the marginalized DR estimators ----------------------------------------
def _two_state_log(n: int, horizon: int, seed: int) -> tuple[Trajectories, np.ndarray, float]:
    """Two states (one-hot observations), two actions: action 1 leads to state 1 with
    probability 0.9, action 0 with 0.1; reward 1 in state 1. Uniform logger; the target
    always takes action 1, so its value is 0.5 + 0.9 (H - 1) (the logger's is H / 2)."""
    rng = np.random.default_rng(seed)
    state = rng.integers(0, 2, n)
    obs = np.zeros((n, horizon, 2))
    action = np.zeros((n, horizon), dtype=np.int64)
    reward = np.zeros((n, horizon))
    for t in range(horizon):
        obs[np.arange(n), t, state] = 1.0
        action[:, t] = rng.integers(0, 2, n)
        reward[:, t] = state
        state = (rng.random(n) < np.where(action[:, t] == 1, 0.9, 0.1)).astype(np.int64)
    traj = Trajectories(
        obs=obs,
        mask=np.ones((n, horizon, 2), dtype=bool),
        action=action,
        pscore=np.full((n, horizon), 0.5),
        reward=reward,
        valid=np.ones((n, horizon), dtype=bool),
        customer_id=np.arange(n),
    )
    target = np.zeros((n, horizon, 2))
    target[..., 1] = 1.0
    return traj, target, 0.5 + 0.9 * (horizon - 1)


@pytest.mark.parametrize("cls", [MarginalizedDoublyRobust, WeightedMarginalizedDoublyRobust])
def test_marginalized_dr_is_right_when_q_is_right_and_the_ratios_wrong(
    cls: type[MarginalizedDoublyRobust], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kallus & Uehara's form telescopes when Q is right, whatever the state ratios: with
    tabular features and no ridge penalty FQE's Q is right here, the ratios deliberately
    wrong. (Weighting V_t by w_t(s_t) instead converges to 1.5, the truth being 2.3.)"""
    traj, target, truth = _two_state_log(20_000, 3, seed=0)
    # The logger's own state ratios (all 1), not the target's.
    monkeypatch.setattr(cls, "state_ratios", lambda self, t, d: np.ones(t.valid.shape))
    tabular = {"feature_map": lambda x: x, "ridge_alpha": 1e-6}
    estimate = cls(**tabular).estimate_policy_value(traj, target)
    assert estimate == pytest.approx(truth, abs=0.03)
