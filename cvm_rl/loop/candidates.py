"""The closed loop's candidates, trained from the decision log alone, and the long-run labels
its off-policy evaluation reads (see :mod:`cvm_rl.loop.closed_loop`)."""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np

from cvm_rl.loop.config import CANDIDATES, STARTS

if TYPE_CHECKING:
    from cvm_rl.logs.arrays import LoggedDecisions
    from cvm_rl.loop.config import LoopConfig
    from cvm_rl.policies.base import Policy
    from cvm_rl.policies.fitted_q import FittedQ
    from cvm_rl.policies.planner import ResponseEstimate
    from simulator.config import Scenario


def response_from_log(
    decisions: LoggedDecisions,
    purchased: np.ndarray,
    scenario: Scenario,
    *,
    prior_weeks: float = 200.0,
) -> ResponseEstimate:
    """Each action's uplift of the week's purchase rate over no contact, for new and
    established customers, from the logged decisions and their propensities
    (:func:`~cvm_rl.policies.planner.response_from_decisions`), shrunk towards no uplift by
    ``prior_weeks`` pseudo customer-weeks. ``purchased`` (N,): whether the week had a
    purchase (a reported outcome's ``purchase``), standing for the week's purchases."""
    from cvm_rl.policies.planner import response_from_decisions
    from simulator.observation import observation_feature_names

    if list(decisions.feature_names) != observation_feature_names(scenario):
        raise ValueError("decisions: their features differ from the scenario's observation")
    data = decisions.data
    return response_from_decisions(
        scenario, data.obs, data.actions, data.propensities, purchased, prior_weeks=prior_weeks
    )


def build_candidate(
    name: str,
    scenario: Scenario,
    train: LoggedDecisions,
    purchased: np.ndarray,
    config: LoopConfig,
    *,
    serving_q: FittedQ | None = None,
    labelled: LoggedDecisions | None = None,
    period: int = 0,
) -> Policy:
    """Candidate ``name`` (one of :data:`CANDIDATES`) trained on the logged ``train`` rows;
    ``q_improve`` is greedy on ``serving_q``, the serving policy's fitted Q-function."""
    from cvm_rl.policies import GreedyUpliftPolicy, LinUCBPolicy
    from cvm_rl.policies.planner import CLVPlannerPolicy

    if name == "dr_bandit":
        if labelled is None:
            raise ValueError("labelled: dr_bandit learns from the long-run labels of the log")
        return dr_bandit(scenario, labelled, seed=config.seed + period)
    if name == "fqi":
        return fit_q_function(config, scenario, train, None, period).policy("fqi", seed=config.seed)
    if name == "q_improve":
        if serving_q is None:
            raise ValueError("serving_q: q_improve is greedy on the serving policy's Q-function")
        return serving_q.policy("q_improve", seed=config.seed)

    if name == "clv_planner":
        response = response_from_log(
            train, purchased, scenario, prior_weeks=config.response_prior_weeks
        )
        return CLVPlannerPolicy(scenario, response=response, seed=config.seed)
    if name == "linucb":
        bandit = LinUCBPolicy(scenario, alpha=0.0, seed=config.seed)  # greedy on the ridge fit
        bandit.update(train.data.obs, train.data.executed_actions, train.data.rewards)
        return bandit
    if name == "greedy":
        return GreedyUpliftPolicy(scenario).fit(train.data)
    if name in STARTS:
        return untrained(name, scenario, config.seed)
    raise ValueError(f"candidate: unknown {name!r}; known: {', '.join(CANDIDATES)}")


def dr_bandit(scenario: Scenario, labelled: LoggedDecisions, *, seed: int) -> Policy:
    """A contextual bandit learned from the logged propensities by doubly robust policy
    learning: each row's doubly robust estimate of every eligible action's label,
    ``q(x, a) + 1[a = a_i] (y_i - q(x, a_i)) / p_i`` with a cross-fitted boosted-tree ``q``,
    regressed per action on the features (ridge), greedy on the fit. On the loop's long-run
    labels (:func:`long_run_labels`) it is a one-step long-run policy learned off-policy."""
    from cvm_rl.ope.reward_model import CrossFittedRewardModel
    from cvm_rl.policies import LinUCBPolicy
    from cvm_rl.policies.features import FeatureTransform

    data = labelled.data
    n, n_actions = len(labelled), data.mask.shape[1]
    features = FeatureTransform.from_scenario(scenario).scaled(data.obs)
    model = CrossFittedRewardModel(regressor="hist_gradient_boosting", seed=seed)
    estimated = model.fit_predict(features, data.actions, data.rewards, n_actions)
    scores = estimated.estimated_rewards.copy()
    rows = np.arange(n)
    scores[rows, data.actions] += (data.rewards - scores[rows, data.actions]) / data.propensities
    bandit = LinUCBPolicy(scenario, alpha=0.0, seed=seed)  # greedy on the ridge fit
    bandit.update_all(data.obs, data.mask, scores)
    return bandit


def fit_q_function(
    config: LoopConfig,
    scenario: Scenario,
    train: LoggedDecisions,
    evaluated: Policy | None,
    period: int,
) -> FittedQ:
    """The Q-function of ``evaluated`` (fitted Q evaluation), or the optimal one (fitted Q
    iteration, ``evaluated`` None), from the transitions of the ``train`` log."""
    from cvm_rl.policies.fitted_q import Transitions, fit_q

    return fit_q(
        Transitions.from_decisions(train),
        scenario,
        gamma=config.gamma,
        iterations=config.q_iterations,
        target_policy=evaluated,
        seed=config.seed + period,
    )


def long_run_labels(
    decisions: LoggedDecisions,
    discount: float,
    value: Callable[[np.ndarray], np.ndarray] | None,
    *,
    weeks: int | None = None,
) -> LoggedDecisions:
    """``decisions`` (one policy's), each row's reward replaced by a label of its long-run
    value: the customer's logged rewards from that decision on, over ``weeks`` decisions (None:
    to its latest), discounted by ``discount`` per decision, plus the discounted ``value`` of
    the observation where they stop, minus ``value`` of the row's own observation (a baseline
    that depends on the state only: it moves no lift and takes the customers' levels out of
    the label's variance). Rows without that many later decisions are left out. With
    ``value`` None: the rewards alone (the return to go over ``weeks``), no row left out when
    ``weeks`` is None."""
    from cvm_rl.ope.long_run import customer_trajectories

    if weeks is not None and weeks < 1:
        raise ValueError(f"weeks must be >= 1 or None, got {weeks}")
    trajectories = customer_trajectories(decisions)
    index, valid = trajectories.row_index, trajectories.valid
    assert index is not None
    n, horizon = valid.shape
    length = valid.sum(axis=1)
    values = np.zeros((n, horizon))
    if value is not None:
        values[valid] = value(trajectories.obs[valid])
    rewards = np.where(valid, trajectories.reward, 0.0)
    labels = np.full(len(decisions), np.nan)
    for t in range(horizon):
        # Where each customer's label stops: ``weeks`` later, or at its latest decision.
        stop = np.full(n, t + weeks) if weeks is not None else length - 1
        if value is None and weeks is None:
            stop = length
        has = valid[:, t] & (stop > t) & (stop <= (length - 1 if value is not None else length))
        if not has.any():
            continue
        steps = np.arange(horizon - t)
        within = (t + steps)[None, :] < stop[:, None]
        label = (rewards[:, t:] * within * discount**steps).sum(axis=1)
        if value is not None:
            end = np.minimum(stop, horizon - 1)
            label += discount ** (stop - t) * values[np.arange(n), end] - values[:, t]
        labels[index[has, t]] = label[has]
    keep = np.flatnonzero(np.isfinite(labels))
    data = dataclasses.replace(decisions.data, rewards=np.nan_to_num(labels))
    return dataclasses.replace(decisions, data=data).take(keep)


def clv_surrogate(scenario: Scenario) -> Callable[[np.ndarray], np.ndarray]:
    """A customer's expected value with no contact from an observation on: the posterior
    CLV of the BG/NBD and Gamma-Gamma belief on its purchase history and profile (the CLV
    planner's, which reads observations only)."""
    from cvm_rl.policies.planner import CLVPlannerPolicy

    return CLVPlannerPolicy(scenario).customer_value


def untrained(name: str, scenario: Scenario, seed: int) -> Policy:
    from cvm_rl.policies import NoContactPolicy, RandomPolicy, RuleBasedPolicy

    kinds: dict[str, type[Policy]] = {
        "rules": RuleBasedPolicy,
        "no_contact": NoContactPolicy,
        "random": RandomPolicy,
    }
    return kinds[name](scenario, seed=seed)


def served_with_epsilon(scenario: Scenario, base: Policy, epsilon: float) -> Policy:
    """``base`` as the service serves it with ``--exploration epsilon``: ``1 - epsilon`` on its
    greedy eligible action (ties split), ``epsilon`` uniform over the eligible actions."""
    from cvm_rl.policies.base import Policy, argmax_probabilities

    class Served(Policy):
        name = base.name

        def _probabilities(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
            greedy = argmax_probabilities(base.action_probabilities(obs, mask), mask)
            uniform = mask / mask.sum(axis=1, keepdims=True)
            probs: np.ndarray = (1.0 - epsilon) * greedy + epsilon * uniform
            return probs

    return Served(scenario)


def customer_fold(customer_ids: Iterable[str], seed: int, train_share: float) -> np.ndarray:
    """True for the customers whose logs train candidates (a seeded split by id)."""
    cut = int(train_share * 2**32)
    return np.array([zlib.crc32(f"{seed}:{c}".encode()) < cut for c in customer_ids], dtype=bool)
