"""Single-step off-policy estimators, their intervals, diagnostics and cross-fitted reward models.

Each estimator is checked against numbers worked out by hand on a six-row log, for
unbiasedness and interval coverage on a synthetic contextual bandit whose value is known
exactly, against the identities between estimators, and against a table of bad inputs.
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import numpy as np
import pytest

from cvm_rl.ope.base import BanditInputs, BaseOffPolicyEstimator, bootstrap_intervals
from cvm_rl.ope.diagnostics import (
    ESS_SHARE_WARNING,
    diagnose_bandit_feedback,
    diagnose_weights,
)
from cvm_rl.ope.reward_model import CrossFittedRewardModel, assign_folds, cross_fit
from cvm_rl.ope.single_step import (
    DirectMethod,
    DoublyRobust,
    DoublyRobustWithShrinkage,
    InverseProbabilityWeighting,
    SelfNormalizedDR,
    SelfNormalizedIPS,
    SwitchDR,
)

# --- a log small enough to work out by hand --------------------------------------------------
# Three actions, six decisions. Importance weights w = action_dist[i, action_i] / pscore_i:
#   row 0: 1.00 / 0.50 = 2      row 3: 0.25 / 0.25 = 1
#   row 1: 0.00 / 0.25 = 0      row 4: 1.00 / 0.50 = 2
#   row 2: 0.25 / 0.50 = 0.5    row 5: 0.80 / 0.20 = 4        sum w = 9.5
REWARD = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
ACTION = np.array([0, 1, 2, 0, 1, 2])
PSCORE = np.array([0.5, 0.25, 0.5, 0.25, 0.5, 0.2])
ACTION_DIST = np.array(
    [
        [1.0, 0.0, 0.0],
        [0.5, 0.0, 0.5],
        [0.0, 0.75, 0.25],
        [0.25, 0.25, 0.5],
        [0.0, 1.0, 0.0],
        [0.2, 0.0, 0.8],
    ]
)
# Reward model. Its value under the target, q_pi = sum_a action_dist * q_hat, by row:
#   0.8, 0.5*0.4 + 0.5*0.6 = 0.5, 0.75*0.5 + 0.25*0.9 = 0.6, 0.1 + 0.1 + 0.1 = 0.3, 0.6, 0.5
# (sum 3.3). At the logged action q_hat = 0.8, 0.2, 0.9, 0.4, 0.6, 0.5, so the residuals
# r - q_hat are 0.2, -0.2, 0.1, -0.4, 0.4, 0.5 and w * residual = 0.4, 0, 0.05, -0.4, 0.8, 2.
ESTIMATED_REWARDS = np.array(
    [
        [0.8, 0.2, 0.5],
        [0.4, 0.2, 0.6],
        [0.3, 0.5, 0.9],
        [0.4, 0.4, 0.2],
        [0.1, 0.6, 0.3],
        [0.5, 0.5, 0.5],
    ]
)
HAND_LOG = (REWARD, ACTION, PSCORE, ACTION_DIST, ESTIMATED_REWARDS)

# DRos(lambda_=4) shrinks w to 4 w / (w^2 + 4): 1, 0, 2/4.25, 0.8, 1, 0.8.
_DROS_CORRECTION = 1 * 0.2 + 0 + (2 / 4.25) * 0.1 + 0.8 * -0.4 + 1 * 0.4 + 0.8 * 0.5
HAND_VALUES = [
    (DirectMethod(), 3.3 / 6),
    (InverseProbabilityWeighting(), (2 + 0 + 0.5 + 0 + 2 + 4) / 6),
    # clipped at 2, row 5's weight 4 becomes 2
    (InverseProbabilityWeighting(lambda_=2), (2 + 0.5 + 2 + 2) / 6),
    (SelfNormalizedIPS(), 8.5 / 9.5),
    (DoublyRobust(), (3.3 + 0.4 + 0.05 - 0.4 + 0.8 + 2.0) / 6),
    (DoublyRobust(lambda_=2), (3.3 + 0.4 + 0.05 - 0.4 + 0.8 + 2 * 0.5) / 6),
    (SelfNormalizedDR(), 3.3 / 6 + 2.85 / 9.5),
    # only rows 1, 2 and 3 have w <= 1.5
    (SwitchDR(tau=1.5), (3.3 + 0 + 0.05 - 0.4) / 6),
    (DoublyRobustWithShrinkage(lambda_=4), (3.3 + _DROS_CORRECTION) / 6),
]
ALL_ESTIMATORS: list[BaseOffPolicyEstimator] = [est for est, _ in HAND_VALUES]
MEAN_TYPE = [est for est in ALL_ESTIMATORS if not est.self_normalized]


def _name(est: BaseOffPolicyEstimator) -> str:
    return repr(est)


@pytest.mark.parametrize(("estimator", "expected"), HAND_VALUES, ids=_name)
def test_each_estimator_matches_the_hand_computation(
    estimator: BaseOffPolicyEstimator, expected: float
) -> None:
    assert estimator.estimate_policy_value(*HAND_LOG) == pytest.approx(expected, abs=1e-12)
    # the per-row terms average to the estimate
    terms = estimator.estimate_round_rewards(*HAND_LOG)
    assert terms.shape == (6,)
    assert terms.mean() == pytest.approx(expected, abs=1e-12)


def test_hand_log_in_obp_three_dimensional_shapes() -> None:
    value = DoublyRobust().estimate_policy_value(
        REWARD, ACTION, PSCORE, ACTION_DIST[:, :, None], ESTIMATED_REWARDS[:, :, None]
    )
    assert value == pytest.approx(6.15 / 6)


# --- a synthetic contextual bandit with a known value ----------------------------------------

N_CONTEXTS, N_ACTIONS = 5, 4
CONTEXT_PROB = np.array([0.3, 0.25, 0.2, 0.15, 0.1])
# Bernoulli reward probabilities q(x, a)
Q = np.array(
    [
        [0.1, 0.5, 0.3, 0.7],
        [0.6, 0.2, 0.4, 0.3],
        [0.3, 0.3, 0.8, 0.1],
        [0.9, 0.4, 0.2, 0.5],
        [0.2, 0.7, 0.5, 0.4],
    ]
)
# The logger explores every action (>= 0.1); the target leans on other actions.
LOGGER = np.array(
    [
        [0.4, 0.3, 0.2, 0.1],
        [0.1, 0.4, 0.3, 0.2],
        [0.25, 0.25, 0.25, 0.25],
        [0.1, 0.2, 0.3, 0.4],
        [0.4, 0.1, 0.1, 0.4],
    ]
)
TARGET = np.array(
    [
        [0.0, 0.2, 0.2, 0.6],
        [0.7, 0.0, 0.2, 0.1],
        [0.1, 0.1, 0.7, 0.1],
        [0.6, 0.2, 0.1, 0.1],
        [0.1, 0.6, 0.2, 0.1],
    ]
)
TRUE_VALUE = float(CONTEXT_PROB @ (TARGET * Q).sum(axis=1))
# A reward model that is off by +0.15 everywhere: DM is biased by it, DR is not.
Q_HAT = np.clip(Q + 0.15, 0, 1)


def synthetic_log(
    n: int, seed: int, target: np.ndarray = TARGET
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    context = rng.choice(N_CONTEXTS, size=n, p=CONTEXT_PROB)
    cumulative = LOGGER[context].cumsum(axis=1)
    action = (rng.random((n, 1)) > cumulative).sum(axis=1)
    reward = (rng.random(n) < Q[context, action]).astype(float)
    return reward, action, LOGGER[context, action], target[context], Q_HAT[context]


def test_the_truth_is_what_the_target_earns() -> None:
    # Sanity of the setup: the known value against the mean reward of the target acting.
    rng = np.random.default_rng(0)
    context = rng.choice(N_CONTEXTS, size=200_000, p=CONTEXT_PROB)
    action = (rng.random((len(context), 1)) > TARGET[context].cumsum(axis=1)).sum(axis=1)
    assert Q[context, action].mean() == pytest.approx(TRUE_VALUE, abs=0.005)


def test_ips_and_dr_are_unbiased_and_their_intervals_cover_at_the_nominal_rate() -> None:
    repetitions, n = 200, 400
    estimators = [InverseProbabilityWeighting(), DoublyRobust(), DirectMethod()]
    values = np.empty((repetitions, 3))
    normal_hits = np.zeros(2)
    bootstrap_hits = np.zeros(2)
    for rep in range(repetitions):
        inputs = BanditInputs.validate(*synthetic_log(n, seed=rep))
        values[rep] = [est.policy_value(inputs) for est in estimators]
        for j, est in enumerate(estimators[:2]):
            normal_hits[j] += TRUE_VALUE in est.interval(inputs, method="normal")
        boot = bootstrap_intervals(estimators[:2], inputs, n_bootstrap=200, seed=rep)
        bootstrap_hits += [TRUE_VALUE in interval for interval in boot]

    means = values.mean(axis=0)
    standard_errors = values.std(axis=0, ddof=1) / math.sqrt(repetitions)
    for j in range(2):  # IPS, DR
        assert abs(means[j] - TRUE_VALUE) < 4 * standard_errors[j], (j, means[j], TRUE_VALUE)
    # ... while DM inherits the reward model's +0.15: the check above has power
    assert means[2] - TRUE_VALUE > 10 * standard_errors[2]

    tolerance = 3 * math.sqrt(0.95 * 0.05 / repetitions)  # three binomial standard errors
    coverage_normal = normal_hits / repetitions
    coverage_bootstrap = bootstrap_hits / repetitions
    assert np.all(np.abs(coverage_normal - 0.95) <= tolerance), coverage_normal
    assert np.all(np.abs(coverage_bootstrap - 0.95) <= tolerance + 0.02), coverage_bootstrap


def test_ips_equals_the_mean_reward_when_the_target_is_the_logger() -> None:
    rng = np.random.default_rng(1)
    n = 500
    logger = rng.dirichlet(np.ones(N_ACTIONS), size=n)  # a different logger in every row
    action = (rng.random((n, 1)) > logger.cumsum(axis=1)).sum(axis=1)
    pscore = logger[np.arange(n), action]
    reward = rng.random(n)
    # every weight is 1: IPS and SNIPS are the mean reward
    for est in (InverseProbabilityWeighting(), SelfNormalizedIPS()):
        value = est.estimate_policy_value(reward, action, pscore, logger)
        assert value == pytest.approx(reward.mean(), abs=1e-12)
    diagnostics = diagnose_bandit_feedback(action, pscore, logger, logging_dist=logger)
    assert diagnostics.ess == pytest.approx(n)
    assert diagnostics.max_weight == pytest.approx(1)
    assert diagnostics.unsupported_mass_share == 0
    assert diagnostics.warnings == ()


def test_snips_normalizes_the_weights_to_sum_to_one() -> None:
    reward, action, pscore, action_dist, _ = synthetic_log(300, seed=2)
    inputs = BanditInputs.validate(reward, action, pscore, action_dist)
    normalized = inputs.weight / inputs.weight.sum()
    assert normalized.sum() == pytest.approx(1.0)
    snips = SelfNormalizedIPS().policy_value(inputs)
    assert snips == pytest.approx(float(normalized @ reward))
    # a constant reward is returned exactly, and a constant rescaling of the weights (here
    # of every pscore) moves IPS but not SNIPS
    assert SelfNormalizedIPS().estimate_policy_value(
        np.ones(300), action, pscore, action_dist
    ) == pytest.approx(1.0)
    halved = (reward, action, pscore / 2, action_dist)
    assert SelfNormalizedIPS().estimate_policy_value(*halved) == pytest.approx(snips)
    ips = InverseProbabilityWeighting().policy_value(inputs)
    assert InverseProbabilityWeighting().estimate_policy_value(*halved) == pytest.approx(2 * ips)


@pytest.mark.parametrize("log", [HAND_LOG, synthetic_log(300, seed=3)], ids=["hand", "synthetic"])
def test_switch_and_shrinkage_reach_dr_and_dm_at_their_limits(log: tuple[Any, ...]) -> None:
    inputs = BanditInputs.validate(*log)
    dr = DoublyRobust().policy_value(inputs)
    dm = DirectMethod().policy_value(inputs)
    assert SwitchDR(tau=math.inf).policy_value(inputs) == dr
    assert SwitchDR(tau=0).policy_value(inputs) == pytest.approx(dm, abs=1e-15)
    assert DoublyRobustWithShrinkage(lambda_=math.inf).policy_value(inputs) == dr
    assert DoublyRobustWithShrinkage(lambda_=1e12).policy_value(inputs) == pytest.approx(
        dr, abs=1e-9
    )
    # every shrunk weight w' = lambda_ w / (w^2 + lambda_) climbs to w as lambda_ grows
    shortfalls = [
        inputs.weight - DoublyRobustWithShrinkage(lambda_=lam).correction_weight(inputs)
        for lam in (1, 10, 100, 1000)
    ]
    assert all(np.all(s >= 0) for s in shortfalls)
    assert all(np.all(a >= b) for a, b in itertools.pairwise(shortfalls))
    assert DoublyRobustWithShrinkage(lambda_=0).policy_value(inputs) == pytest.approx(dm)
    assert DoublyRobust(lambda_=math.inf).policy_value(inputs) == dr


def test_dr_with_a_zero_reward_model_is_ips() -> None:
    reward, action, pscore, action_dist, _ = synthetic_log(300, seed=4)
    zero = np.zeros_like(action_dist)
    assert DoublyRobust().estimate_policy_value(
        reward, action, pscore, action_dist, zero
    ) == pytest.approx(
        InverseProbabilityWeighting().estimate_policy_value(reward, action, pscore, action_dist)
    )


# --- intervals -------------------------------------------------------------------------------


def test_intervals_are_seeded_and_shared_resamples_match_single_ones() -> None:
    inputs = BanditInputs.validate(*synthetic_log(300, seed=5))
    for est in ALL_ESTIMATORS:
        first = est.interval(inputs, seed=7)
        assert first == est.interval(inputs, seed=7)
        assert first != est.interval(inputs, seed=8)
        assert first.low < first.estimate < first.high
        assert first.estimate == est.policy_value(inputs)
    together = bootstrap_intervals(ALL_ESTIMATORS, inputs, seed=7)
    # the same resamples; only the BLAS summation order differs with the number of columns
    for shared, alone in zip(together, ALL_ESTIMATORS, strict=True):
        single = alone.interval(inputs, seed=7)
        assert (shared.low, shared.high) == pytest.approx((single.low, single.high), rel=1e-12)


def test_the_bootstrap_replicates_are_the_estimator_on_materialized_resamples() -> None:
    reward, action, pscore, action_dist, estimated = synthetic_log(200, seed=6)
    inputs = BanditInputs.validate(reward, action, pscore, action_dist, estimated)
    from cvm_rl.ope.base import bootstrap_replicates
    from cvm_rl.ope.intervals import bootstrap_multiplicities

    replicates = bootstrap_replicates(ALL_ESTIMATORS, inputs, n_bootstrap=5, seed=3)
    counts = np.concatenate(list(bootstrap_multiplicities(200, 5, 3)))
    for b, multiplicity in enumerate(counts):
        rows = np.repeat(np.arange(200), multiplicity.astype(int))
        resample = (reward[rows], action[rows], pscore[rows], action_dist[rows], estimated[rows])
        for e, est in enumerate(ALL_ESTIMATORS):
            assert replicates[e, b] == pytest.approx(est.estimate_policy_value(*resample))


def test_clustered_resamples_draw_whole_clusters() -> None:
    from cvm_rl.ope.intervals import clustered_multiplicities

    clusters = np.array(["c", "a", "b", "a", "c", "c"])
    blocks = np.concatenate(list(clustered_multiplicities(clusters, 20, seed=1)))
    assert blocks.shape == (20, 6)
    for name in "abc":
        rows = np.flatnonzero(clusters == name)
        assert (blocks[:, rows] == blocks[:, rows[:1]]).all()  # a cluster's rows count alike
    # Each resample draws three clusters: the counts of one row per cluster add up to 3.
    one_per_cluster = blocks[:, [1, 2, 0]]
    assert (one_per_cluster.sum(axis=1) == 3).all()
    again = np.concatenate(list(clustered_multiplicities(clusters, 20, seed=1)))
    np.testing.assert_array_equal(blocks, again)


def test_closed_form_intervals() -> None:
    inputs = BanditInputs.validate(*synthetic_log(400, seed=7))
    for est in MEAN_TYPE:
        normal = est.interval(inputs, method="normal")
        assert normal.method == "normal"
        assert normal.estimate == pytest.approx(est.policy_value(inputs))
        assert normal.low < normal.estimate < normal.high
    bounded = [
        DirectMethod(),
        InverseProbabilityWeighting(lambda_=5),
        DoublyRobust(lambda_=5),
        SwitchDR(tau=5),
        DoublyRobustWithShrinkage(lambda_=4),
    ]
    for est in bounded:
        bernstein = est.interval(inputs, method="bernstein", reward_range=(0, 1))
        normal = est.interval(inputs, method="normal")
        assert bernstein.method == "bernstein"
        # valid for any n, hence wider than the CLT interval
        assert bernstein.low < normal.low and normal.high < bernstein.high


@pytest.mark.parametrize(
    ("estimator", "kwargs", "match"),
    [
        (SelfNormalizedIPS(), {"method": "normal"}, "is a ratio of sums"),
        (SelfNormalizedDR(), {"method": "bernstein", "reward_range": (0, 1)}, "ratio of sums"),
        (
            InverseProbabilityWeighting(),
            {"method": "bernstein", "reward_range": (0, 1)},
            r"lambda_=inf has unbounded importance weights: set lambda_ \(weight clipping\)",
        ),
        (DoublyRobust(), {"method": "bernstein", "reward_range": (0, 1)}, "lambda_=inf"),
        (SwitchDR(), {"method": "bernstein", "reward_range": (0, 1)}, "tau=inf"),
        (
            DoublyRobustWithShrinkage(),
            {"method": "bernstein", "reward_range": (0, 1)},
            r"set lambda_ \(shrinkage\)",
        ),
        (InverseProbabilityWeighting(lambda_=3), {"method": "bernstein"}, "needs reward_range"),
        (
            InverseProbabilityWeighting(lambda_=3),
            {"method": "bernstein", "reward_range": (0, 0.5)},
            r"reward_range \(0, 0.5\) does not hold reward 1 at row 0",
        ),
        (
            InverseProbabilityWeighting(lambda_=3),
            {"method": "bernstein", "reward_range": (1, 0)},
            "low < high",
        ),
        (DirectMethod(), {"method": "exact"}, "method must be one of"),
        (DirectMethod(), {"alpha": 1.5}, r"alpha must be in \(0, 1\)"),
        (DirectMethod(), {"n_bootstrap": 1}, "n_bootstrap must be an int >= 2"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_invalid_intervals_are_refused(
    estimator: BaseOffPolicyEstimator, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        estimator.estimate_interval(*HAND_LOG, **kwargs)


def test_bernstein_needs_the_reward_model_within_the_reward_range() -> None:
    over = ESTIMATED_REWARDS.copy()
    over[4, 0] = 1.25
    with pytest.raises(
        ValueError, match=r"does not hold estimated_rewards 1.25 at row 4, action 0"
    ):
        DirectMethod().estimate_interval(
            REWARD, ACTION, PSCORE, ACTION_DIST, over, method="bernstein", reward_range=(0, 1)
        )


# --- bad inputs ------------------------------------------------------------------------------


def _with(**changes: Any) -> dict[str, Any]:
    arrays = dict(
        zip(
            ("reward", "action", "pscore", "action_dist", "estimated_rewards"),
            (a.copy() for a in HAND_LOG),
            strict=True,
        )
    )
    for key, change in changes.items():
        arrays[key] = change(arrays[key]) if callable(change) else change
    return arrays


def _set(index: Any, value: Any) -> Any:
    def change(arr: np.ndarray) -> np.ndarray:
        arr = arr.astype(type(value)) if isinstance(value, float) else arr
        arr[index] = value
        return arr

    return change


BAD_INPUTS = [
    (_with(pscore=_set(4, 0.0)), r"pscore must be in \(0, 1\], got 0 at row 4"),
    (_with(pscore=_set(2, 1.5)), r"pscore must be in \(0, 1\], got 1.5 at row 2"),
    (_with(pscore=_set(1, np.nan)), r"pscore must be in \(0, 1\], got nan at row 1"),
    (_with(reward=_set(3, np.nan)), "reward must be finite, got nan at row 3"),
    (_with(reward=_set(0, np.inf)), "reward must be finite, got inf at row 0"),
    (_with(reward=np.ones((6, 1))), r"reward must be a 1-D array, got shape \(6, 1\)"),
    (
        _with(
            reward=np.array([]),
            action=np.array([], int),
            pscore=np.array([]),
            action_dist=np.zeros((0, 3)),
        ),
        "reward must not be empty",
    ),
    (_with(action=_set(1, 3)), r"action must be in \[0, 3\), got 3 at row 1"),
    (_with(action=_set(5, -1)), r"action must be in \[0, 3\), got -1 at row 5"),
    (_with(action=ACTION.astype(float)), "action must hold integers, got dtype float64"),
    (
        _with(pscore=PSCORE[:5]),
        "reward, action, pscore must have the same length, got reward 6, action 6, pscore 5",
    ),
    (
        _with(action_dist=ACTION_DIST[:5]),
        r"action_dist must have one row per logged decision \(6\)",
    ),
    (_with(action_dist=ACTION_DIST[:, 0]), r"action_dist must have shape \(n, n_actions\)"),
    (_with(action_dist=_set((2, 1), 0.5)), "action_dist rows must sum to 1, row 2 sums to 0.75"),
    (_with(action_dist=lambda d: d * 0), "action_dist rows must sum to 1, row 0 sums to 0"),
    (
        _with(action_dist=_set((3, 0), -0.25)),
        "action_dist must be non-negative, got -0.25 at row 3, action 0",
    ),
    (
        _with(action_dist=_set((1, 2), np.nan)),
        "action_dist must be finite, got nan at row 1, action 2",
    ),
    (
        _with(estimated_rewards=ESTIMATED_REWARDS[:, :2]),
        r"estimated_rewards must have the shape "
        r"of action_dist \(n, n_actions\) = \(6, 3\), got \(6, 2\)",
    ),
    (
        _with(estimated_rewards=_set((4, 1), np.inf)),
        "estimated_rewards must be finite, got inf at row 4, action 1",
    ),
]


@pytest.mark.parametrize(("arrays", "match"), BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_inputs_are_named(arrays: dict[str, Any], match: str) -> None:
    for est in (DoublyRobust(), InverseProbabilityWeighting()):
        with pytest.raises(ValueError, match=match):
            est.estimate_policy_value(**arrays)


@pytest.mark.parametrize(
    "estimator",
    [
        DirectMethod(),
        DoublyRobust(),
        SelfNormalizedDR(),
        SwitchDR(tau=2),
        DoublyRobustWithShrinkage(lambda_=1),
    ],
    ids=_name,
)
def test_the_reward_model_is_required_by_name(estimator: BaseOffPolicyEstimator) -> None:
    with pytest.raises(
        ValueError, match=f"estimated_rewards is required by {type(estimator).__name__}"
    ):
        estimator.estimate_policy_value(REWARD, ACTION, PSCORE, ACTION_DIST)
    with pytest.raises(ValueError, match="estimated_rewards is required"):
        bootstrap_intervals([estimator], BanditInputs.validate(REWARD, ACTION, PSCORE, ACTION_DIST))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda: InverseProbabilityWeighting(lambda_=-1),
            "InverseProbabilityWeighting.lambda_ must",
        ),
        (lambda: DoublyRobust(lambda_=math.nan), "DoublyRobust.lambda_ must be a number >= 0"),
        (lambda: SwitchDR(tau=-0.5), "SwitchDR.tau must be a number >= 0"),
        (
            lambda: DoublyRobustWithShrinkage(lambda_="big"),  # type: ignore[arg-type]
            "lambda_ must be a number",
        ),
    ],
)
def test_bad_hyperparameters(make: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_self_normalization_without_any_weight_is_undefined() -> None:
    never = np.tile([0.0, 0.0, 1.0], (2, 1))
    log = (np.array([1.0, 0.0]), np.array([0, 1]), np.array([0.5, 0.5]), never)
    with pytest.raises(ValueError, match="SelfNormalizedIPS is undefined: every importance weight"):
        SelfNormalizedIPS().estimate_policy_value(*log)
    assert InverseProbabilityWeighting().estimate_policy_value(*log) == 0.0


# --- diagnostics -----------------------------------------------------------------------------


def test_diagnostics_of_the_hand_log() -> None:
    logging_dist = np.array(
        [
            [0.5, 0.5, 0.0],  # the target's mass is all on action 0: supported
            [0.5, 0.25, 0.25],
            [0.5, 0.0, 0.5],  # the target puts 0.75 on action 1, which the logger never takes
            [0.25, 0.25, 0.5],
            [0.5, 0.5, 0.0],
            [0.4, 0.4, 0.2],
        ]
    )
    diagnostics = diagnose_bandit_feedback(ACTION, PSCORE, ACTION_DIST, logging_dist)
    weights = np.array([2, 0, 0.5, 1, 2, 4])
    assert diagnostics.n == 6
    assert diagnostics.ess == pytest.approx(9.5**2 / (4 + 0 + 0.25 + 1 + 4 + 16))
    assert diagnostics.ess_share == pytest.approx(diagnostics.ess / 6)
    assert diagnostics.mean_weight == pytest.approx(9.5 / 6)
    assert diagnostics.max_weight == 4
    assert diagnostics.weight_quantiles["50%"] == pytest.approx(np.median(weights))
    assert set(diagnostics.weight_quantiles) == {"50%", "90%", "99%", "99.9%"}
    assert diagnostics.zero_weight_share == pytest.approx(1 / 6)
    assert diagnostics.unsupported_mass_share == pytest.approx(0.75 / 6)
    assert any("never takes in that context" in w for w in diagnostics.warnings)
    assert json.loads(json.dumps(diagnostics.to_dict())) == diagnostics.to_dict()
    assert diagnose_bandit_feedback(ACTION, PSCORE, ACTION_DIST).unsupported_mass_share is None


def test_diagnostics_warn_when_poor() -> None:
    weights = np.zeros(10_000)
    weights[:3] = [300.0, 1.0, 1.0]  # one row carries it all; most rows unused
    diagnostics = diagnose_weights(weights)
    assert diagnostics.ess_share < ESS_SHARE_WARNING
    text = " | ".join(diagnostics.warnings)
    for expected in (
        "effective sample size",
        "largest importance weight is 300",
        "never takes the logged action",
        "mean importance weight",
    ):
        assert expected in text
    assert diagnose_weights(np.random.default_rng(0).uniform(0.5, 1.5, 10_000)).warnings == ()


def test_diagnostics_check_pscore_against_the_logger() -> None:
    wrong = np.tile([0.5, 0.3, 0.2], (6, 1))
    with pytest.raises(
        ValueError,
        match=r"pscore must equal logging_dist at the logged action, got 0.25 against 0.3 at row 1",
    ):
        diagnose_bandit_feedback(ACTION, PSCORE, ACTION_DIST, wrong)
    with pytest.raises(ValueError, match="logging_dist rows must sum to 1"):
        diagnose_bandit_feedback(ACTION, PSCORE, ACTION_DIST, wrong * 2)


# --- reward models ---------------------------------------------------------------------------


class _Spy:
    """Predicts 1 for a row it was trained on (column 0 is the row id), 0 otherwise."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> _Spy:
        self.seen = set(X[:, 0].astype(int).tolist())
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.array([float(int(i) in self.seen) for i in X[:, 0]])


class _Memorizer:
    """Returns the training reward of the identical feature row (the mean elsewhere)."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> _Memorizer:
        self.table = {row.tobytes(): value for row, value in zip(X, y, strict=True)}
        self.mean = float(np.mean(y))
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.array([self.table.get(row.tobytes(), self.mean) for row in X])


@pytest.mark.parametrize("per_action", [True, False], ids=["per-action", "pooled"])
def test_cross_fitting_never_predicts_a_row_with_a_model_that_saw_it(per_action: bool) -> None:
    n = 300
    rng = np.random.default_rng(0)
    features = np.column_stack([np.arange(n), rng.normal(size=n)])
    action = rng.integers(0, 3, n)
    fit = cross_fit(
        features,
        action,
        rng.normal(size=n),
        3,
        make_regressor=lambda s: _Spy(),
        per_action=per_action,
        n_folds=4,
        seed=0,
    )
    assert fit.estimated_rewards.shape == (n, 3)
    assert np.all(fit.estimated_rewards == 0)
    assert np.bincount(fit.fold).tolist() == [75, 75, 75, 75]


def test_a_memorizing_model_has_no_in_sample_error_but_its_out_of_fold_error_shows() -> None:
    n = 400
    rng = np.random.default_rng(1)
    features = rng.normal(size=(n, 2))
    action = rng.integers(0, 2, n)
    reward = rng.normal(size=n)  # pure noise: nothing to learn
    in_sample = _Memorizer().fit(features, reward).predict(features)
    assert np.sqrt(np.mean((in_sample - reward) ** 2)) == 0
    fit = cross_fit(
        features,
        action,
        reward,
        2,
        make_regressor=lambda s: _Memorizer(),
        per_action=True,
        n_folds=5,
        seed=1,
    )
    assert fit.oof_rmse == pytest.approx(reward.std(), rel=0.1)
    assert fit.oof_r2 < 0.05


def _linear_bandit(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, 3))
    action = rng.integers(0, 4, n)
    mean = features @ rng.normal(size=(3, 4)) + np.arange(4)
    return features, action, mean[np.arange(n), action] + 0.3 * rng.normal(size=n), mean


def test_ridge_reward_model_recovers_a_linear_reward_and_is_seeded() -> None:
    features, action, reward, mean = _linear_bandit(1000, seed=2)
    model = CrossFittedRewardModel("ridge", n_folds=5, seed=3)
    fit = model.fit_predict(features, action, reward, 4)
    assert fit.oof_r2 > 0.95 and fit.oof_rmse == pytest.approx(0.3, rel=0.2)
    assert np.abs(fit.estimated_rewards - mean).max() < 0.3
    again = model.fit_predict(features, action, reward, 4)
    assert np.array_equal(fit.estimated_rewards, again.estimated_rewards)
    other = CrossFittedRewardModel("ridge", seed=4).fit_predict(features, action, reward, 4)
    assert not np.array_equal(fit.fold, other.fold)
    assert fit.to_dict() == {
        "regressor": "ridge",
        "n_folds": 5,
        "oof_rmse": fit.oof_rmse,
        "oof_r2": fit.oof_r2,
    }


def test_gradient_boosting_reward_model() -> None:
    from threadpoolctl import threadpool_limits

    features, action, reward, _ = _linear_bandit(600, seed=5)
    model = CrossFittedRewardModel("hist_gradient_boosting", n_folds=3, max_iter=20, seed=6)
    # OpenMP threads fight over this shared 2-core machine: one thread is several times faster
    with threadpool_limits(limits=1, user_api="openmp"):
        fit = model.fit_predict(features, action, reward, 4)
        again = model.fit_predict(features, action, reward, 4)
    assert fit.estimated_rewards.shape == (600, 4)
    assert fit.oof_r2 > 0.5
    assert np.array_equal(fit.estimated_rewards, again.estimated_rewards)


def test_an_action_never_logged_in_the_training_folds_gets_the_mean_reward() -> None:
    features, action, reward, _ = _linear_bandit(200, seed=7)
    fit = CrossFittedRewardModel(seed=0).fit_predict(features, action % 3, reward, 4)
    assert np.all(np.isfinite(fit.estimated_rewards))
    for k in range(5):
        held_out = fit.fold == k
        assert np.allclose(fit.estimated_rewards[held_out, 3], reward[~held_out].mean())


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: CrossFittedRewardModel("forest"), "regressor must be one of"),  # type: ignore[arg-type]
        (lambda: CrossFittedRewardModel(n_folds=1), "n_folds must be an int >= 2"),
        (lambda: CrossFittedRewardModel(max_iter=0), "max_iter must be an int >= 1"),
        (
            lambda: CrossFittedRewardModel().fit_predict(
                np.ones((4, 2)), np.zeros(4, int), np.ones(4), 2
            ),
            r"n_folds must be at most the number of rows \(4\), got 5",
        ),
        (
            lambda: CrossFittedRewardModel().fit_predict(
                np.full((10, 2), np.nan), np.zeros(10, int), np.ones(10), 2
            ),
            "features must be finite, got nan at row 0, column 0",
        ),
        (
            lambda: CrossFittedRewardModel().fit_predict(
                np.ones((9, 2)), np.zeros(10, int), np.ones(10), 2
            ),
            "features, action, reward must have the same length",
        ),
        (
            lambda: CrossFittedRewardModel().fit_predict(
                np.ones((10, 2)), np.full(10, 2), np.ones(10), 2
            ),
            r"action must be in \[0, 2\)",
        ),
    ],
)
def test_bad_reward_model_inputs(call: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_folds_are_balanced_and_seeded() -> None:
    fold = assign_folds(103, 5, seed=0)
    assert sorted(np.bincount(fold).tolist()) == [20, 20, 21, 21, 21]
    assert np.array_equal(fold, assign_folds(103, 5, seed=0))
