"""A campaign engine driven by the simulator: a client of the decision service, like a real
engine, never part of it.

Each week it asks ``DecideBatch`` for every customer of a simulated population (with the
channels the customer can be reached on as eligibility), executes the answers in the
simulator and reports each customer's week as the decision's outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cvm_rl.rollout import Decisions, rollout
from server.client import Decision, DecisionClient, Eligibility, Outcome
from simulator.config import Scenario


@dataclass
class EngineRun:
    """What :meth:`SimulatedCampaignEngine.run` did: decisions and contacts made, how many
    the service explored, the mean propensity, outcomes recorded, their total reward, and the
    first decision with its inputs (to check that a replay returns it)."""

    decisions: int = 0
    contacts: int = 0
    explored: int = 0
    outcomes_recorded: int = 0
    total_reward: float = 0.0
    propensities: list[float] = field(default_factory=list, repr=False)
    first: Decision | None = None
    first_features: np.ndarray | None = field(default=None, repr=False)
    first_eligibility: Eligibility | None = None

    @property
    def mean_propensity(self) -> float:
        return float(np.mean(self.propensities)) if self.propensities else float("nan")


class SimulatedCampaignEngine:
    """Simulated customers whose weekly decisions come from the service behind ``client``.

    Customer ids are ``{prefix}-{i}`` and event ids ``{customer}-w{week}``, so a rerun with
    the same seed and prefix replays the same events (the service answers them from its log).
    """

    def __init__(
        self,
        client: DecisionClient,
        scenario: Scenario,
        *,
        customers: int,
        seed: int,
        prefix: str | None = None,
    ) -> None:
        self.client = client
        self.scenario = scenario
        self.customers = customers
        self.seed = seed
        prefix = f"engine-{seed}" if prefix is None else prefix
        self.customer_ids = [f"{prefix}-{i}" for i in range(customers)]
        info = client.policy_info()
        n_channels = len(scenario.channels)
        # Actions 1..n_channels send the first offer through each channel, in catalog order.
        self.channels = np.array([channel for _, channel in info.actions[1 : 1 + n_channels]])

    def run(self, weeks: int) -> EngineRun:
        """Decide, execute and report ``weeks`` weeks of every customer."""
        stats = EngineRun()
        served: list[Decision] = []

        def decide(obs: np.ndarray, mask: np.ndarray, week: int) -> Decisions:
            # The simulator's mask is (channel reachable) x (any offer): send it as the
            # channel allow-list of each customer.
            reachable = mask[:, 1 : 1 + len(self.channels)]
            eligibility = [Eligibility(channels=list(self.channels[row])) for row in reachable]
            decisions = self.client.decide_batch(
                self.customer_ids,
                obs,
                event_ids=[f"{c}-w{week}" for c in self.customer_ids],
                eligibility=eligibility,
            )
            if stats.first is None:
                stats.first, stats.first_features = decisions[0], obs[:1]
                stats.first_eligibility = eligibility[0]
            served[:] = decisions
            return Decisions(
                np.array([d.action_index for d in decisions]),
                np.array([d.propensity for d in decisions]),
            )

        steps = rollout(
            decide, self.scenario, n_customers=self.customers, weeks=weeks, seed=self.seed
        )
        for t in steps:
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
            stats.outcomes_recorded += self.client.report_outcomes(outcomes)[0]
            stats.decisions += len(served)
            stats.contacts += int(np.count_nonzero(t.decisions.actions))
            stats.explored += sum(d.explored for d in served)
            stats.propensities.extend(t.decisions.propensities.tolist())
            stats.total_reward += float(t.reward.sum())
        return stats
