"""One rollout loop: reset a simulated population, then each week observe, decide, step.

Every simulated run goes through :func:`rollout` (as SB3's ``evaluate_policy`` is the one
place its evaluations run): evaluation, online bandit training, logged-data collection,
simulated decision logs and the simulated campaign engine. Callers iterate over the
:class:`Transition` of each week and keep what they need::

    for t in rollout(policy, scenario, n_customers=10_000, seed=1000):
        value += t.reward

The decider is a :class:`~cvm_rl.policies.base.Policy` (sampled with its own seeded
generator, re-seeded from ``seed`` unless ``reseed_policy=False``, and bound to the
population when it reads latent state, like the oracle) or any callable ``decide(obs, mask,
week) -> Decisions``, e.g. a client of the decision service.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from cvm_rl.policies.base import Policy
from simulator.config import Scenario
from simulator.core import Population
from simulator.vector_env import CustomerLifecycleVectorEnv


@dataclass(frozen=True)
class Decisions:
    """One week's decisions: the chosen actions (N,), their propensities (N,) and, when the
    decider gives it, the distribution (N, A) they were drawn from."""

    actions: np.ndarray
    propensities: np.ndarray
    probabilities: np.ndarray | None = None


Decide = Callable[[np.ndarray, np.ndarray, int], Decisions]
"""``decide(obs, mask, week)``: decisions for (N, F) observations under (N, A) masks."""


@dataclass(frozen=True)
class Transition:
    """One simulated week of every customer.

    ``obs`` and ``info`` are what the decision was made on (``info["action_mask"]``,
    ``info["stage"]``, the latent state under ``oracle_info``); ``next_obs`` and ``next_info``
    what followed (``next_info["executed_action"]``, ``"revenue"``, ``"opted_out"``...).
    ``decisions.actions`` is what the decider chose; the environment may execute no contact
    instead (e.g. over budget), as ``next_info["executed_action"]`` says.
    """

    week: int
    obs: np.ndarray
    info: dict[str, Any]
    decisions: Decisions
    reward: np.ndarray
    next_obs: np.ndarray
    next_info: dict[str, Any]
    truncated: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        mask: np.ndarray = self.info["action_mask"]
        return mask

    @property
    def executed(self) -> np.ndarray:
        executed: np.ndarray = self.next_info["executed_action"]
        return executed


def policy_decider(policy: Policy, *, with_probabilities: bool = False) -> Decide:
    """A :data:`Decide` that samples ``policy`` (with its distribution if asked)."""

    def decide(obs: np.ndarray, mask: np.ndarray, week: int) -> Decisions:
        if with_probabilities:
            return Decisions(*policy.act_with_distribution(obs, mask))
        actions, propensities = policy.act(obs, mask)
        return Decisions(actions, propensities)

    return decide


POLICY_STREAM = 0x9011C7
"""Tags the policy's seed sequence apart from the population's."""


def policy_seed(seed: int | None) -> int | None:
    """The seed of a policy's sampling generator in a rollout drawn with ``seed``: derived,
    not ``seed`` itself, whose generator is the one that drew the customers (a policy seeded
    alike would draw the same uniforms: uniform exploration then contacted no loyalist in
    the first week and 85 % of deal seekers)."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([POLICY_STREAM, seed]).generate_state(1)[0])


def rollout(
    decider: Policy | Decide,
    scenario: Scenario | str,
    *,
    n_customers: int,
    seed: int | None,
    weeks: int | None = None,
    oracle_info: bool = False,
    reseed_policy: bool = True,
    with_probabilities: bool = False,
    watch: Callable[[Population], None] | None = None,
) -> Iterator[Transition]:
    """Simulate ``n_customers`` drawn with ``seed`` for ``weeks`` weeks (default: the
    scenario's horizon), deciding with ``decider`` each week; a fresh population is drawn
    whenever the horizon ends. Yields one :class:`Transition` per week. ``watch`` gets each
    population drawn (to measure its latent state, e.g. the residual value, outside the
    decider)."""
    if isinstance(n_customers, bool) or not isinstance(n_customers, int | np.integer):
        raise ValueError(f"n_customers must be an int >= 1, got {n_customers!r}")
    env = CustomerLifecycleVectorEnv(int(n_customers), scenario, oracle_info=oracle_info)
    horizon = env.scenario.horizon_weeks if weeks is None else weeks
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon < 1:
        raise ValueError(f"weeks must be an int >= 1, got {weeks!r}")
    obs, info = env.reset(seed=seed)
    policy = decider if isinstance(decider, Policy) else None
    decide: Decide
    if isinstance(decider, Policy):
        decide = policy_decider(decider, with_probabilities=with_probabilities)
    else:
        decide = decider
    bind = getattr(policy, "bind", None)  # latent-state policies (the oracle)
    if policy is not None and reseed_policy:
        policy.seed(policy_seed(seed))
    if callable(bind):
        bind(env.population)
    if watch is not None:
        watch(env.population)
    for week in range(int(horizon)):
        decisions = decide(obs, info["action_mask"], week)
        next_obs, reward, _, truncated, next_info = env.step(decisions.actions)
        yield Transition(week, obs, info, decisions, reward, next_obs, next_info, truncated)
        obs, info = next_obs, next_info
        if truncated.any() and week + 1 < horizon:
            obs, info = env.reset()
            if callable(bind):
                bind(env.population)
            if watch is not None:
                watch(env.population)
