"""Run any policy on simulated customers and write what it did as a decision log.

The simulator writes the same schema as the decision service (:mod:`cvm_rl.logs.schema`),
so tests, research and off-policy evaluation read one format. Every customer-week is one
decision (no contact included) made by one activation (``learning_mode="online"``,
``exploration="policy"``, ``reason="simulation"``), and gets its outcome one week later:

* ``event_id`` ``sim-{seed}-{customer}-w{week}``, ``customer_id`` ``sim-{seed}-{customer}``;
* ``decided_at`` = ``start_us`` + week x 7 days; the outcome's ``reported_at`` 7 days later;
* ``features`` the raw observation, ``eligible`` the action mask, no baseline;
* ``action_index`` = ``policy_action_index``: the action the policy drew, with
  ``propensity`` = its probability under the policy's distribution. The environment may
  still refuse a drawn contact (e.g. over budget) and execute no contact; the decision keeps
  what the policy chose, as the service logs what it served, the outcome's
  ``executed_action_index`` records the executed action where it differs (NULL elsewhere),
  and the outcome is what followed the executed action;
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

from cvm_rl.logs.arrays import LoggedData
from cvm_rl.logs.records import DecisionBatch, ModelRecord, OutcomeRecord
from cvm_rl.logs.store import DecisionLog
from cvm_rl.policies.base import Policy, explored
from cvm_rl.policies.baselines import ExplorationPolicy
from cvm_rl.rollout import rollout
from simulator.config import Scenario, load_scenario
from simulator.core import observation_feature_names

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
    steps = rollout(
        policy, scenario, n_customers=customers, weeks=weeks, seed=seed, with_probabilities=True
    )
    for t in steps:
        d = t.decisions
        assert d.probabilities is not None
        decided_at = start_us + t.week * WEEK_US
        event_ids = [f"{cid}-w{t.week}" for cid in customer_ids]
        replayed = log.insert_decisions(
            DecisionBatch(
                event_ids=event_ids,
                customer_ids=customer_ids,
                decided_at_us=np.full(customers, decided_at, dtype=np.int64),
                activation=activation.seq,
                action_index=d.actions,
                propensity=d.propensities,
                policy_action_index=d.actions,
                policy_propensity=d.propensities,
                baseline_action_index=no_baseline,
                explored=explored(d.probabilities, d.actions),
                features=np.asarray(t.obs, dtype=np.float32),
                eligible=t.mask,
                probabilities=d.probabilities if probabilities else None,
            )
        )
        if replayed:
            raise ValueError(
                f"seed: event ids of week {t.week} are already in the log {log.path}; "
                "use another seed or another log"
            )
        reported_at = decided_at + WEEK_US
        info = t.next_info
        chosen = d.actions.tolist()
        executed = [None if e == a else e for e, a in zip(t.executed.tolist(), chosen, strict=True)]
        recorded += log.record_outcomes(
            [
                OutcomeRecord(eid, r, bool(p > 0), s, o, reported_at, e)
                for eid, r, p, s, o, e in zip(
                    event_ids,
                    t.reward.tolist(),
                    info["purchases"].tolist(),
                    info["revenue"].tolist(),
                    info["opted_out"].tolist(),
                    executed,
                    strict=True,
                )
            ]
        )[0]
        total_reward += float(t.reward.sum())
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


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def collect_logged_data(
    scenario: Scenario | str,
    *,
    n_customers: int = 20_000,
    weeks: int = 52,
    seed: int = 0,
    logging_policy: Policy | None = None,
) -> LoggedData:
    """Run ``logging_policy`` (default :class:`~cvm_rl.policies.baselines.ExplorationPolicy`)
    on ``n_customers`` simulated customers for ``weeks`` weeks (a fresh population whenever
    the horizon ends) and return every decision as arrays, week-major.

    ``seed`` seeds the population and the logging policy's generator, so the same seed gives
    the same data. The logged action is the one the policy chose, with its propensity; where
    the environment executed another (a budget refusal turns a contact into no contact),
    ``executed`` says so, and the reward is the executed action's.
    """
    sc = load_scenario(scenario)
    n = _check_count("n_customers", n_customers)
    weeks = _check_count("weeks", weeks)
    policy = ExplorationPolicy(sc) if logging_policy is None else logging_policy
    if policy.feature_names != observation_feature_names(sc) or policy.n_actions != sc.n_actions:
        raise ValueError("logging_policy: its features or actions differ from the scenario's")
    shape = (weeks, n)
    out_obs = np.empty((*shape, len(policy.feature_names)), dtype=np.float32)
    out_mask = np.empty((*shape, sc.n_actions), dtype=bool)
    out_actions = np.empty(shape, dtype=np.int64)
    out_executed = np.empty(shape, dtype=np.int64)
    out_props = np.empty(shape)
    out_rewards = np.empty(shape)
    for t in rollout(policy, sc, n_customers=n, weeks=weeks, seed=seed):
        i = t.week
        out_obs[i], out_mask[i] = t.obs, t.mask
        out_actions[i], out_executed[i] = t.decisions.actions, t.executed
        out_props[i], out_rewards[i] = t.decisions.propensities, t.reward
    return LoggedData(
        obs=out_obs.reshape(weeks * n, -1),
        mask=out_mask.reshape(weeks * n, -1),
        actions=out_actions.ravel(),
        propensities=out_props.ravel(),
        rewards=out_rewards.ravel(),
        executed=out_executed.ravel(),
    )
