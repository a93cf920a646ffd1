"""Fitted Q iteration and evaluation (:mod:`cvm_rl.policies.fitted_q`): analytic Q-values of a
tiny hand-built MDP, FQE against the Monte Carlo return on simulated logs, pairing of logged
decisions into transitions, determinism, bundles and bad inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cvm_rl.bundle import load_bundle, save_bundle
from cvm_rl.logs.arrays import LoggedData, LoggedDecisions
from cvm_rl.logs.simulated import collect_logged_data
from cvm_rl.policies.base import Policy
from cvm_rl.policies.baselines import ExplorationPolicy
from cvm_rl.policies.fitted_q import UNSUPPORTED_Q, FittedQ, Transitions, fit_q
from cvm_rl.policies.mlp import MLPPolicy
from simulator.config import load_scenario
from simulator.core import observation_feature_names

SCENARIO = load_scenario("default")
NAMES = observation_feature_names(SCENARIO)
F, A = len(NAMES), SCENARIO.n_actions

# --- a tiny MDP: three states (stage one-hots of the real observation), three eligible actions
STAGES = ("stage_new", "stage_active", "stage_at_risk")
STAGE_COLUMNS = [NAMES.index(s) for s in STAGES]
ACTIONS = np.array([0, 1, 5])
NEXT = np.array([[0, 1, 2], [1, 1, 0], [0, 2, 1]])  # NEXT[s, j]: the state after ACTIONS[j]
REWARD = np.array([[0.0, -1.0, 2.0], [1.0, 0.5, 0.0], [0.0, 0.2, -3.0]])
PI = np.array([[0.2, 0.5, 0.3], [0.6, 0.2, 0.2], [0.1, 0.1, 0.8]])  # the evaluated policy
GAMMA = 0.9
# Q_0 = 0, so after k iterations the error is up to gamma^k * |Q| = 0.9^100 * 10 = 3e-4.
TINY: dict[str, Any] = {
    "gamma": GAMMA,
    "iterations": 100,
    "batch_size": 256,
    "epochs_per_iteration": 3,
}


def state_obs(states: np.ndarray) -> np.ndarray:
    obs = np.zeros((len(states), F))
    for k, column in enumerate(STAGE_COLUMNS):
        obs[states == k, column] = 1.0
    obs[:, NAMES.index("recency_weeks")] = 3.0 * states
    return obs


class TabularPolicy(Policy):
    """PI[state] over ACTIONS, the state read from the stage one-hots."""

    name = "tabular"

    def _probabilities(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        states = obs[:, STAGE_COLUMNS].argmax(axis=1)
        probs = np.zeros((len(obs), A))
        probs[:, ACTIONS] = PI[states]
        return probs


def analytic_q() -> tuple[np.ndarray, np.ndarray]:
    """(Q of PI, optimal Q), each (3 states, 3 actions)."""
    moves = np.zeros((3, 3, 3))
    for s in range(3):
        moves[s, np.arange(3), NEXT[s]] = 1.0
    p_pi = np.einsum("sj,sjt->st", PI, moves)
    v_pi = np.linalg.solve(np.eye(3) - GAMMA * p_pi, (PI * REWARD).sum(axis=1))
    v_star = np.zeros(3)
    for _ in range(1000):
        v_star = (REWARD + GAMMA * v_star[NEXT]).max(axis=1)
    return REWARD + GAMMA * v_pi[NEXT], REWARD + GAMMA * v_star[NEXT]


@pytest.fixture(scope="module")
def tiny() -> Transitions:
    """Every (state, action) pair 100 times; only ACTIONS are eligible."""
    states = np.repeat(np.arange(3), 300)
    choice = np.tile(np.repeat(np.arange(3), 100), 3)
    mask = np.zeros((len(states), A), dtype=bool)
    mask[:, ACTIONS] = True
    return Transitions(
        obs=state_obs(states),
        actions=ACTIONS[choice],
        rewards=REWARD[states, choice],
        next_obs=state_obs(NEXT[states, choice]),
        next_mask=mask,
    )


@pytest.fixture(scope="module")
def fqi(tiny: Transitions) -> FittedQ:
    return fit_q(tiny, SCENARIO, seed=0, **TINY)


def test_fqe_matches_the_analytic_q_of_a_tiny_mdp(tiny: Transitions) -> None:
    q_pi, _ = analytic_q()
    fitted = fit_q(tiny, SCENARIO, target_policy=TabularPolicy(SCENARIO), seed=0, **TINY)
    assert fitted.evaluated == "tabular"
    states = np.arange(3)
    np.testing.assert_allclose(fitted.q_values(state_obs(states))[:, ACTIONS], q_pi, atol=0.05)
    mask = tiny.next_mask[:3]
    v_pi = (PI * q_pi).sum(axis=1)
    values = fitted.values(state_obs(states), mask, TabularPolicy(SCENARIO))
    np.testing.assert_allclose(values, v_pi, atol=0.05)
    # The labels of each transition: r + gamma * V(s').
    labels = fitted.targets(tiny, TabularPolicy(SCENARIO))
    np.testing.assert_allclose(
        labels,
        tiny.rewards + GAMMA * v_pi[tiny.next_obs[:, STAGE_COLUMNS].argmax(axis=1)],
        atol=0.05,
    )


def test_fqi_finds_the_optimal_q_and_the_long_run_action(fqi: FittedQ) -> None:
    _, q_star = analytic_q()
    states = np.arange(3)
    q = fqi.q_values(state_obs(states))[:, ACTIONS]
    np.testing.assert_allclose(q, q_star, atol=0.05)
    assert fqi.evaluated is None
    mask = np.zeros((3, A), dtype=bool)
    mask[:, ACTIONS] = True
    chosen = fqi.policy().action_probabilities(state_obs(states), mask).argmax(axis=1)
    best = ACTIONS[q_star.argmax(axis=1)]
    np.testing.assert_array_equal(chosen, best)
    # In the at-risk state the myopic choice (the best immediate reward) is not the optimal.
    assert ACTIONS[REWARD[2].argmax()] != best[2]
    np.testing.assert_allclose(fqi.values(state_obs(states), mask), q_star.max(axis=1), atol=0.05)


def test_same_seed_same_q_values_other_seed_other(tiny: Transitions) -> None:
    few = {**TINY, "iterations": 3}
    one = fit_q(tiny, SCENARIO, seed=7, **few).q_values(tiny.obs)
    two = fit_q(tiny, SCENARIO, seed=7, **few).q_values(tiny.obs)
    other = fit_q(tiny, SCENARIO, seed=8, **few).q_values(tiny.obs)
    np.testing.assert_array_equal(one, two)
    assert not np.array_equal(one, other)


def test_fitting_leaves_torch_threads_and_generator_alone(tiny: Transitions) -> None:
    import torch

    threads = torch.get_num_threads()
    state = torch.random.get_rng_state()
    seen: list[tuple[int, float]] = []
    fit_q(
        tiny,
        SCENARIO,
        seed=0,
        **{**TINY, "iterations": 2},
        progress=lambda k, loss: seen.append((k, loss)),
    )
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), state)
    assert [k for k, _ in seen] == [1, 2] and all(np.isfinite(loss) for _, loss in seen)


def test_fqi_leaves_out_actions_the_log_barely_supports(tiny: Transitions) -> None:
    # Five executions of a fourth action with a reward far above the rest: with the default
    # support of 100 executions FQI never takes it, with a support of 1 it takes it everywhere.
    rare = ACTIONS.max() + 1
    states = np.zeros(5, dtype=np.int64)
    mask = np.zeros((len(tiny) + 5, A), dtype=bool)
    mask[:, ACTIONS] = True
    mask[:, rare] = True
    with_rare = Transitions(
        obs=np.vstack([tiny.obs, state_obs(states)]),
        actions=np.concatenate([tiny.actions, np.full(5, rare)]),
        rewards=np.concatenate([tiny.rewards, np.full(5, 50.0)]),
        next_obs=np.vstack([tiny.next_obs, state_obs(states)]),
        next_mask=mask,
    )
    obs = state_obs(np.arange(3))
    eligible = mask[:3]
    guarded = fit_q(with_rare, SCENARIO, seed=0, **TINY)
    assert guarded.supported is not None and not guarded.supported[rare]
    assert (guarded.policy().act(obs, eligible)[0] != rare).all()
    assert np.isfinite(guarded.values(obs, eligible)).all()
    unguarded = fit_q(with_rare, SCENARIO, seed=0, min_support=1, **TINY)
    assert (unguarded.policy().act(obs, eligible)[0] == rare).all()
    # Clipped targets: no value beyond what the rewards allow, max(r) / (1 - gamma).
    assert unguarded.values(obs, eligible).max() <= 50.0 / (1 - GAMMA) + 1e-6


def test_the_fqi_policy_round_trips_through_a_bundle(fqi: FittedQ, tmp_path) -> None:
    policy = fqi.policy("fqi-test")
    data = collect_logged_data(SCENARIO, n_customers=200, weeks=2, seed=5)
    save_bundle(policy, tmp_path / "fqi", algo="fqi", training_config={"gamma": GAMMA})
    bundle = load_bundle(tmp_path / "fqi")
    assert bundle.kind == "mlp"
    loaded = bundle.policy
    assert isinstance(loaded, MLPPolicy)
    assert loaded.name == "fqi-test"
    # Actions the log never executed score about UNSUPPORTED_Q, the others their Q-values.
    assert fqi.supported is not None and fqi.supported[ACTIONS].all()
    assert fqi.supported.sum() == len(ACTIONS)
    scores = loaded.scores(data.obs)
    np.testing.assert_array_equal(
        scores[:, fqi.supported], fqi.q_values(data.obs)[:, fqi.supported]
    )
    assert (scores[:, ~fqi.supported] < UNSUPPORTED_Q / 2).all()
    np.testing.assert_array_equal(
        loaded.action_probabilities(data.obs, data.mask),
        policy.action_probabilities(data.obs, data.mask),
    )


def decisions_of(data: LoggedData, n_customers: int, customer_ids: np.ndarray) -> LoggedDecisions:
    n = len(data)
    return LoggedDecisions(
        data=data,
        event_ids=np.array([f"e{i}" for i in range(n)], dtype=object),
        customer_ids=customer_ids,
        decided_at_us=np.arange(n) // n_customers,
        model_ids=np.full(n, "m", dtype=object),
        probabilities=None,
        feature_names=tuple(NAMES),
        action_names=tuple(SCENARIO.action_names()),
    )


def test_transitions_pair_each_decision_with_the_customers_next() -> None:
    data = collect_logged_data(SCENARIO, n_customers=4, weeks=3, seed=2)  # week-major rows
    executed = data.actions.copy()
    executed[5] = 0  # as if the budget had refused row 5's contact
    # Customer "c3" decides only in the first week; the others every week.
    keep = np.array([i for i in range(12) if i % 4 != 3 or i < 4])
    data_kept = LoggedData(
        data.obs[keep],
        data.mask[keep],
        data.actions[keep],
        data.propensities[keep],
        data.rewards[keep],
        executed[keep],
    )
    ids = np.array([f"c{i % 4}" for i in keep], dtype=object)
    decisions = LoggedDecisions(
        data=data_kept,
        event_ids=np.array([f"e{i}" for i in keep], dtype=object),
        customer_ids=ids,
        decided_at_us=keep // 4,
        model_ids=np.full(len(keep), "m", dtype=object),
        probabilities=None,
        feature_names=tuple(NAMES),
        action_names=tuple(SCENARIO.action_names()),
    )
    t = Transitions.from_decisions(decisions)
    assert len(t) == len(keep) - 4  # one last decision per customer; c3's only one
    assert t.rows is not None and t.next_rows is not None
    np.testing.assert_array_equal(t.rows, np.sort(t.rows))
    np.testing.assert_array_equal(ids[t.rows], ids[t.next_rows])
    np.testing.assert_array_equal(keep[t.next_rows] - keep[t.rows], 4)  # the next week's row
    np.testing.assert_array_equal(t.actions, data_kept.executed_actions[t.rows])
    assert t.actions[list(keep[t.rows]).index(5)] == 0
    np.testing.assert_array_equal(t.next_obs, data_kept.obs[t.next_rows])
    np.testing.assert_array_equal(t.next_mask, data_kept.mask[t.next_rows])
    np.testing.assert_array_equal(t.rewards, data_kept.rewards[t.rows])


def test_fqe_of_the_logger_matches_the_monte_carlo_return() -> None:
    """FQE of the logging policy on its own simulated log: the mean V(s_0) of the first
    week's customers against the discounted return they were observed to get.

    gamma 0.8 over 16 logged weeks: the observed return misses 0.8^16 = 3 % of the weight,
    and the default iterations leave 1 % on Q_0 = 0. Per-customer discounted returns are very
    noisy (standard deviation ~6 for a mean ~0.7: purchases are rare and large), so the
    tolerance is 3 standard errors of the observed mean (~0.3 with 3,000 customers): FQE
    without bootstrapping (0.09), a max over actions instead of the expectation, or a
    discount ignored would all miss by more. On 5,000 customers x 20 weeks, seeds 1-3, FQE
    was within 0.05 (under one standard error) of the observed return."""
    n, weeks, gamma = 3000, 16, 0.8
    data = collect_logged_data(SCENARIO, n_customers=n, weeks=weeks, seed=1)
    ids = np.array([f"c{i % n}" for i in range(len(data))], dtype=object)
    transitions = Transitions.from_decisions(decisions_of(data, n, ids))
    assert len(transitions) == n * (weeks - 1)
    logger = ExplorationPolicy(SCENARIO)
    fitted = fit_q(transitions, SCENARIO, gamma=gamma, target_policy=logger, seed=0)
    first = slice(0, n)  # week-major: the first week's decisions
    v0 = fitted.values(data.obs[first], data.mask[first], logger)
    returns = gamma ** np.arange(weeks) @ data.rewards.reshape(weeks, n)
    standard_error = returns.std() / np.sqrt(n)
    assert abs(v0.mean() - returns.mean()) < 3 * standard_error, (v0.mean(), returns.mean())
    # The labels are one-step Bellman targets: on average, the fitted Q of the executed action.
    q = fitted.q_values(transitions.obs)[np.arange(len(transitions)), transitions.actions]
    labels = fitted.targets(transitions, logger)
    assert abs(labels.mean() - q.mean()) < 0.05 * abs(q.mean()) + 0.01


def bad_transitions(tiny: Transitions) -> list[tuple[dict, str]]:
    no_eligible = tiny.next_mask.copy()
    no_eligible[3] = False
    return [
        ({"obs": tiny.obs[:0], "next_obs": tiny.next_obs[:0]}, "transitions: there are none"),
        ({"obs": tiny.obs[:, :5]}, r"next_obs must have shape"),
        ({"next_obs": tiny.next_obs[:-1]}, r"next_obs must have shape"),
        ({"next_mask": no_eligible}, r"next_mask: every row needs an eligible action \(row 3"),
        ({"next_mask": tiny.next_mask.astype(int)}, "next_mask must be a boolean"),
        ({"actions": tiny.actions.astype(float)}, "actions must be"),
        ({"actions": tiny.actions + A}, r"actions must be in \[0, 25\)"),
        ({"rewards": np.full(len(tiny), np.nan)}, "rewards must be"),
        ({"obs": np.full_like(tiny.obs, np.inf)}, "obs must be finite"),
        ({"rows": np.arange(2)}, "rows must be"),
    ]


def test_bad_transitions_name_the_field(tiny: Transitions) -> None:
    fields = {f: getattr(tiny, f) for f in ("obs", "actions", "rewards", "next_obs", "next_mask")}
    for change, match in bad_transitions(tiny):
        with pytest.raises(ValueError, match=match):
            Transitions(**{**fields, **change})


class Leaky(TabularPolicy):
    """Puts mass on an ineligible action."""

    def _probabilities(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        probs = np.zeros((len(obs), A))
        probs[:, A - 1] = 1.0
        return probs


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"gamma": 1.0}, r"gamma must be in \[0, 1\)"),
        ({"gamma": -0.1}, "gamma must be"),
        ({"gamma": float("nan")}, "gamma must be"),
        ({"iterations": 0}, "iterations must be an int >= 1"),
        ({"iterations": 2.5}, "iterations must be an int >= 1"),
        ({"epochs_per_iteration": 0}, "epochs_per_iteration must be"),
        ({"batch_size": 0}, "batch_size must be"),
        ({"learning_rate": 0.0}, "learning_rate must be"),
        ({"hidden_sizes": (64, 0)}, "hidden_sizes must be"),
        ({"hidden_sizes": 64}, "hidden_sizes must be"),
        ({"seed": 1.5}, "seed must be an int or None"),
        ({"progress": 3}, "progress must be callable"),
        ({"target_policy": "greedy"}, "target_policy must be a Policy"),
        ({"target_policy": Leaky(SCENARIO)}, "target_policy: .* ineligible actions"),
    ],
)
def test_bad_arguments_name_the_argument(tiny: Transitions, change: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fit_q(tiny, SCENARIO, **{"iterations": 1, **change})


def test_transitions_of_another_schema_are_refused(tiny: Transitions) -> None:
    with pytest.raises(ValueError, match="transitions must be Transitions"):
        fit_q(tiny.obs, SCENARIO)  # type: ignore[arg-type]
    narrow = Transitions(
        tiny.obs[:, :-1], tiny.actions, tiny.rewards, tiny.next_obs[:, :-1], tiny.next_mask
    )
    with pytest.raises(ValueError, match="transitions: obs has 38 features"):
        fit_q(narrow, SCENARIO)
    few = Transitions(
        tiny.obs, tiny.actions % 3, tiny.rewards, tiny.next_obs, tiny.next_mask[:, :3] | True
    )
    with pytest.raises(ValueError, match="transitions: next_mask has 3 actions"):
        fit_q(few, SCENARIO)
    with pytest.raises(ValueError, match="decisions must be LoggedDecisions"):
        Transitions.from_decisions(tiny)  # type: ignore[arg-type]


def test_a_log_without_a_second_decision_has_no_transition() -> None:
    data = collect_logged_data(SCENARIO, n_customers=5, weeks=1, seed=0)
    ids = np.array([f"c{i}" for i in range(5)], dtype=object)
    with pytest.raises(ValueError, match="none of the 5 customers has two decisions"):
        Transitions.from_decisions(decisions_of(data, 5, ids))


def test_importing_the_policies_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, cvm_rl.policies, cvm_rl.policies.fitted_q; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
