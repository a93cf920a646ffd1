"""Run any policy on simulated customers and write what it did as a decision log.

The simulator writes the same schema as the decision service (:mod:`cvm_rl.logs.store`),
so tests, research and off-policy evaluation read one format. Every customer-week is one
decision (no contact included) made by one activation (``learning_mode="online"``,
``exploration="policy"``, ``reason="simulation"``), and gets its outcome one week later:

* ``event_id`` ``sim-{seed}-{customer}-w{week}``, ``customer_id`` ``sim-{seed}-{customer}``;
* ``decided_at`` = ``start_us`` + week x 7 days; the outcome's ``reported_at`` 7 days later;
* ``features`` the raw observation, ``eligible`` the action mask, no baseline;
* ``action_index`` = ``policy_action_index``: the action the policy drew, with
  ``propensity`` = its probability under the policy's distribution. The environment may
  still refuse a drawn contact (e.g. over budget) and execute no contact; the log keeps what
  the policy chose, as the service logs what it served, and the outcome is what followed;
* ``explored``: the draw's probability is below the row's maximum (drawing one of several
  tied best actions, e.g. under a uniform policy, is not exploration), as the service logs;
* outcome: ``reward`` the week's reward, ``purchase`` = purchases > 0, ``spend`` the week's
  revenue, ``opt_out`` whether the customer opted out of a channel that week.

The same seed draws the same population as :func:`cvm_rl.evaluation.run_episode`, and the
policy is re-seeded with it, so the logged rewards of a policy add up to what the
evaluation reports for that seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from cvm_rl.logs.store import DecisionBatch, DecisionLog, ModelRecord, OutcomeRecord
from cvm_rl.policies.base import Policy, explored, sample_actions
from simulator.config import Scenario
from simulator.core import observation_feature_names
from simulator.vector_env import CustomerLifecycleVectorEnv

WEEK_US = 7 * 86_400 * 1_000_000
DEFAULT_START_US = int(datetime(2026, 1, 5, tzinfo=UTC).timestamp()) * 1_000_000
"""Monday 2026-01-05 00:00 UTC: when simulated week 0 is decided unless told otherwise."""


@dataclass(frozen=True)
class SimulationLogSummary:
    """What :func:`simulate_to_log` wrote."""

    decisions: int
    outcomes: int
    seed: int
    model_id: str
    activation: int
    total_reward: float
    first_decided_at_us: int
    last_decided_at_us: int


def simulation_model_record(policy: Policy, scenario: Scenario) -> ModelRecord:
    """The record of a policy that is not a bundle: ``{policy.name}-sim``, version ``sim``."""
    return ModelRecord(
        model_id=f"{policy.name}-sim",
        model_version="sim",
        kind=policy.name,
        path="",
        feature_names=observation_feature_names(scenario),
        action_names=scenario.action_names(),
    )


def act_with_distribution(
    policy: Policy, obs: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Actions (N,), their propensities (N,) and the distribution (N, A) they were drawn from.

    One draw, consuming the policy's generator as ``policy.act`` does: a policy with its own
    ``act_with_probabilities`` (Thompson sampling) uses it; otherwise the actions are sampled
    from ``action_probabilities``. A policy that overrides ``act`` without it keeps its own
    draw and propensities, and its distribution comes from a second call.
    """
    own = getattr(policy, "act_with_probabilities", None)
    if callable(own):
        actions, propensities, probs = own(obs, mask)
        return actions, propensities, probs
    if type(policy).act is not Policy.act:
        actions, propensities = policy.act(obs, mask)
        return actions, propensities, policy.action_probabilities(obs, mask)
    probs = policy.action_probabilities(obs, mask)
    actions = sample_actions(probs, policy.rng)
    return actions, probs[np.arange(len(actions)), actions], probs


def simulate_to_log(
    policy: Policy,
    scenario: Scenario,
    log: DecisionLog,
    *,
    customers: int,
    weeks: int,
    seed: int | None,
    model: ModelRecord | None = None,
    start_us: int = DEFAULT_START_US,
    probabilities: bool = True,
) -> SimulationLogSummary:
    """Simulate ``customers`` for ``weeks`` under ``policy`` and log every decision and outcome.

    ``model`` describes the policy in the log (default :func:`simulation_model_record`; pass
    :func:`model_record` of a loaded bundle); its features and actions must be the
    scenario's. ``seed`` draws the population and re-seeds the policy (None: a fresh seed,
    reported in the summary). ``probabilities=False`` leaves the distribution column NULL.
    A log that already holds a simulation with this seed is refused (its event ids would
    collide). One DecisionBatch and one ``record_outcomes`` call per week.
    """
    if int(customers) < 1:
        raise ValueError(f"customers must be >= 1, got {customers}")
    if not 1 <= int(weeks) <= scenario.horizon_weeks:
        raise ValueError(
            f"weeks must be in [1, {scenario.horizon_weeks}] (the scenario's horizon), got {weeks}"
        )
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    model = simulation_model_record(policy, scenario) if model is None else model
    if model.feature_names != observation_feature_names(scenario):
        raise ValueError(
            f"model: {model.model_id!r} has features that differ from the observation of "
            f"scenario '{scenario.name}'"
        )
    if model.action_names != scenario.action_names():
        raise ValueError(
            f"model: {model.model_id!r} has actions that differ from the catalog of "
            f"scenario '{scenario.name}'"
        )
    known = log.models().get(model.model_id)
    if known is not None and (known.feature_names, known.action_names) != (
        model.feature_names,
        model.action_names,
    ):
        raise ValueError(
            f"model: the log already records {model.model_id!r} with other features or "
            "actions (another scenario?); use another log"
        )
    customers, weeks = int(customers), int(weeks)
    prefix = f"sim-{seed}"
    if log.get_decisions([f"{prefix}-0-w0"]):
        raise ValueError(
            f"seed: the log {log.path} already holds a simulation with seed {seed} "
            "(event ids would collide); use another seed or another log"
        )

    env = CustomerLifecycleVectorEnv(customers, scenario)
    obs, info = env.reset(seed=seed)
    policy.seed(seed)
    bind = getattr(policy, "bind", None)  # latent-state policies (the oracle)
    if callable(bind):
        bind(env.population)
    activation = log.activate(
        model,
        learning_mode="online",
        exploration="policy",
        exploration_param=0.0,
        reason="simulation",
    )
    customer_ids = [f"{prefix}-{c}" for c in range(customers)]
    no_baseline = np.full(customers, -1, dtype=np.int64)
    total_reward = 0.0
    recorded = 0
    for week in range(weeks):
        mask = info["action_mask"]
        actions, propensities, probs = act_with_distribution(policy, obs, mask)
        decided_at = start_us + week * WEEK_US
        event_ids = [f"{cid}-w{week}" for cid in customer_ids]
        replayed = log.insert_decisions(
            DecisionBatch(
                event_ids=event_ids,
                customer_ids=customer_ids,
                decided_at_us=np.full(customers, decided_at, dtype=np.int64),
                activation=activation.seq,
                action_index=actions,
                propensity=propensities,
                policy_action_index=actions,
                policy_propensity=propensities,
                baseline_action_index=no_baseline,
                explored=explored(probs, actions),
                features=np.asarray(obs, dtype=np.float32),
                eligible=mask,
                probabilities=probs if probabilities else None,
            )
        )
        if replayed:
            raise ValueError(
                f"seed: event ids of week {week} are already in the log {log.path}; "
                "use another seed or another log"
            )
        obs, reward, _, _, info = env.step(actions)
        reported_at = decided_at + WEEK_US
        recorded += log.record_outcomes(
            [
                OutcomeRecord(eid, r, bool(p > 0), s, o, reported_at)
                for eid, r, p, s, o in zip(
                    event_ids,
                    reward.tolist(),
                    info["purchases"].tolist(),
                    info["revenue"].tolist(),
                    info["opted_out"].tolist(),
                    strict=True,
                )
            ]
        )[0]
        total_reward += float(reward.sum())
    return SimulationLogSummary(
        decisions=customers * weeks,
        outcomes=recorded,
        seed=seed,
        model_id=model.model_id,
        activation=activation.seq,
        total_reward=total_reward,
        first_decided_at_us=start_us,
        last_decided_at_us=start_us + (weeks - 1) * WEEK_US,
    )
