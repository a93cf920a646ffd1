"""A campaign engine driven by the simulator: a client of the decision service, like a real
engine, never part of it.

Each week it asks ``DecideBatch`` for every customer of a simulated population (with the
channels the customer can be reached on as eligibility), in requests of at most
``batch_rows`` rows (the service refuses more than its ``--max-batch-rows``, 5,000 by
default), executes the answers in the simulator and reports each customer's week as the
decision's outcome. The population lives on between calls of :meth:`SimulatedCampaignEngine.run`,
so a closed loop can run a few weeks, retrain and hot-reload the service, and go on with the
same customers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from cvm_rl.policies.base import TIE_RTOL, Policy
from cvm_rl.rollout import Decisions, Transition, rollout
from server.client import Decision, DecisionClient, Eligibility, Outcome
from server.config import DEFAULT_MAX_BATCH_ROWS
from simulator.config import Scenario
from simulator.core import Population


class RealizedValue:
    """Each customer's realized long-run value so far: the rewards to date plus the residual
    value the customer carries (the simulator's expected margin of the next 52 weeks without
    contact, from the latent state). The engine can measure it because it drives the world;
    no policy sees it. ``history`` holds one (N,) snapshot per week, the first before any
    decision."""

    def __init__(self, customers: int) -> None:
        self.rewards = np.zeros(customers)
        self.population: Population | None = None
        self.history: list[np.ndarray] = []

    def watch(self, population: Population) -> None:
        self.population = population
        if not self.history:
            self.history.append(self.long_run())

    def long_run(self) -> np.ndarray:
        """(N,) rewards to date plus the residual value (0 for customers not yet arrived:
        their value counts from their arrival on)."""
        pop = self.population
        if pop is None:
            raise ValueError("no population yet: the value is measured once the rollout starts")
        total: np.ndarray = self.rewards + pop.expected_no_contact_margin(absent_as_zero=True)
        return total

    def add_week(self, reward: np.ndarray) -> None:
        self.rewards += reward
        self.history.append(self.long_run())

    def increments(self) -> np.ndarray:
        """(weeks, N) each week's realized long-run value: its reward plus the change of the
        residual value (they add up to the rewards plus the final residual, minus the first)."""
        history = np.array(self.history)
        steps: np.ndarray = np.diff(history, axis=0)
        return steps


def simulate_control(
    policy: Policy, scenario: Scenario, *, customers: int, seed: int, weeks: int
) -> RealizedValue:
    """The same population as a :class:`SimulatedCampaignEngine` of ``seed`` run for
    ``weeks`` weeks, deciding with ``policy`` in process (the control arm a loop is compared
    with: same customers, same draws of the world until the decisions differ)."""
    value = RealizedValue(customers)
    steps = rollout(
        policy,  # seeded by the rollout from ``seed``
        scenario,
        n_customers=customers,
        weeks=weeks,
        seed=seed,
        watch=value.watch,
    )
    for t in steps:
        value.add_week(t.reward)
    return value


@dataclass
class EngineRun:
    """What :meth:`SimulatedCampaignEngine.run` did: decisions and contacts made, how many
    the service explored, the mean propensity, outcomes recorded, their total reward, and the
    first decision with its inputs (to check that a replay returns it).

    ``greedy_weight`` and ``greedy_reward`` are the sums of the importance weights
    ``greedy(action) / propensity`` and of ``weight * reward``, where ``greedy`` is the served
    distribution's best actions (exact ties split evenly), i.e. the served model without
    exploration: their ratio is a self-normalized importance-sampling estimate of the week's
    reward per decision had the service not explored (:attr:`greedy_value`; exact for tied
    best actions only when the engine asks for the served distributions)."""

    decisions: int = 0
    contacts: int = 0
    explored: int = 0
    outcomes_recorded: int = 0
    total_reward: float = 0.0
    requests: int = 0
    greedy_weight: float = 0.0
    greedy_reward: float = 0.0
    propensities: list[float] = field(default_factory=list, repr=False)
    first: Decision | None = None
    first_features: np.ndarray | None = field(default=None, repr=False)
    first_eligibility: Eligibility | None = None

    @property
    def mean_propensity(self) -> float:
        return float(np.mean(self.propensities)) if self.propensities else float("nan")

    @property
    def value_per_decision(self) -> float:
        return self.total_reward / self.decisions if self.decisions else float("nan")

    @property
    def greedy_value(self) -> float:
        """Estimated reward per decision without exploration (NaN when every decision was
        explored)."""
        return self.greedy_reward / self.greedy_weight if self.greedy_weight else float("nan")


def greedy_weights(decisions: Decisions, explored: np.ndarray) -> np.ndarray:
    """Importance weights of the served distribution's greedy version (its best actions,
    exact ties split evenly: what the served model decides without exploration) for the
    served actions. Without the served distributions (``decisions.probabilities`` None) the
    greedy action is taken to be unique: weight ``1 / propensity`` where the service did not
    explore, else 0."""
    probs = decisions.probabilities
    if probs is None:
        unexplored: np.ndarray = np.where(explored, 0.0, 1.0 / decisions.propensities)
        return unexplored
    rows = np.arange(len(probs))
    best = probs >= probs.max(axis=1, keepdims=True) * (1.0 - TIE_RTOL)
    greedy = best[rows, decisions.actions] / best.sum(axis=1)
    weights: np.ndarray = greedy / decisions.propensities
    return weights


class SimulatedCampaignEngine:
    """Simulated customers whose weekly decisions come from the service behind ``client``.

    Customer ids are ``{prefix}-{i}`` and event ids ``{customer}-w{week}`` (the week counts on
    over successive :meth:`run` calls), so a rerun with the same seed and prefix replays the
    same events (the service answers them from its log). ``total_weeks``: how many weeks the
    engine may run over all its :meth:`run` calls (default: the first call's); past the
    scenario's horizon the simulator draws a fresh population under the same ids.
    """

    def __init__(
        self,
        client: DecisionClient,
        scenario: Scenario,
        *,
        customers: int,
        seed: int,
        prefix: str | None = None,
        total_weeks: int | None = None,
        batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
        return_probabilities: bool = False,
    ) -> None:
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
        self.client = client
        self.scenario = scenario
        self.customers = customers
        self.seed = seed
        self.total_weeks = total_weeks
        self.batch_rows = int(batch_rows)
        self.return_probabilities = return_probabilities
        prefix = f"engine-{seed}" if prefix is None else prefix
        self.customer_ids = [f"{prefix}-{i}" for i in range(customers)]
        info = client.policy_info()
        n_channels = len(scenario.channels)
        # Actions 1..n_channels send the first offer through each channel, in catalog order.
        self.channels = np.array([channel for _, channel in info.actions[1 : 1 + n_channels]])
        self.weeks_run = 0
        self.value = RealizedValue(customers)
        self._steps: Iterator[Transition] | None = None
        self._served: list[Decision] = []
        self._stats = EngineRun()

    @staticmethod
    def week_of(event_id: str) -> int:
        """The week of an event id this engine made."""
        return int(event_id.rpartition("-w")[2])

    def _decide(self, obs: np.ndarray, mask: np.ndarray, week: int) -> Decisions:
        stats = self._stats
        # The simulator's mask is (channel reachable) x (any offer): send it as the channel
        # allow-list of each customer.
        reachable = mask[:, 1 : 1 + len(self.channels)]
        eligibility = [Eligibility(channels=list(self.channels[row])) for row in reachable]
        event_ids = [f"{c}-w{week}" for c in self.customer_ids]
        decisions: list[Decision] = []
        for start in range(0, len(obs), self.batch_rows):
            rows = slice(start, start + self.batch_rows)
            decisions += self.client.decide_batch(
                self.customer_ids[rows],
                obs[rows],
                event_ids=event_ids[rows],
                eligibility=eligibility[rows],
                return_probabilities=self.return_probabilities,
            )
            stats.requests += 1
        if stats.first is None:
            stats.first, stats.first_features = decisions[0], obs[:1]
            stats.first_eligibility = eligibility[0]
        self._served = decisions
        return Decisions(
            np.array([d.action_index for d in decisions]),
            np.array([d.propensity for d in decisions]),
            np.array([d.probabilities for d in decisions]) if self.return_probabilities else None,
        )

    def run(self, weeks: int) -> EngineRun:
        """Decide, execute and report the next ``weeks`` weeks of every customer."""
        if self._steps is None:
            total = weeks if self.total_weeks is None else self.total_weeks
            self._steps = rollout(
                self._decide,
                self.scenario,
                n_customers=self.customers,
                weeks=total,
                seed=self.seed,
                watch=self.value.watch,
            )
        stats = self._stats = EngineRun()
        for _ in range(weeks):
            t = next(self._steps, None)
            if t is None:
                raise ValueError(
                    f"weeks: the engine ran all its {self.weeks_run} weeks (total_weeks)"
                )
            served = self._served
            info = t.next_info
            outcomes = [
                Outcome(
                    d.event_id,
                    float(t.reward[i]),
                    purchase=bool(info["purchases"][i] > 0),
                    spend=float(info["revenue"][i]),
                    opt_out=bool(info["opted_out"][i]),
                )
                for i, d in enumerate(served)
            ]
            for start in range(0, len(outcomes), self.batch_rows):
                chunk = outcomes[start : start + self.batch_rows]
                stats.outcomes_recorded += self.client.report_outcomes(chunk)[0]
            explored = np.array([d.explored for d in served], dtype=bool)
            weights = greedy_weights(t.decisions, explored)
            stats.decisions += len(served)
            stats.contacts += int(np.count_nonzero(t.decisions.actions))
            stats.explored += int(explored.sum())
            stats.greedy_weight += float(weights.sum())
            stats.greedy_reward += float(weights @ t.reward)
            stats.propensities.extend(t.decisions.propensities.tolist())
            stats.total_reward += float(t.reward.sum())
            self.value.add_week(t.reward)
            self.weeks_run += 1
        return stats
