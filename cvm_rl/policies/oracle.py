"""The oracle: a reference policy that sees the simulator's latent state.

Not deployable (no real system knows a customer's purchase rate or whether they are still
alive); it is the yardstick for "share of the achievable lift". Every week it values, for each
customer, every eligible action "now, and no contact afterwards" with the simulator's own
equations in expectation on the true latent state (purchase rate, dropout probability, spend
rate, alive, fatigue, pull-forward debt, retention bonus; see
:mod:`cvm_rl.policies.lifecycle_value`) and takes the best if it gains over no contact.

The value counted is the long-run metric's: the margin to the end of the horizon plus the
residual value after it (``residual_weeks`` of no-contact margin, discounted as
``cvm evaluate`` does), so the oracle no longer treats the horizon's end as the customer's.
Re-planning every week makes it a one-step policy improvement over no contact with the true
model. What it does not value: contacting again later (a lost permission costs only
``optout_cost`` a time) and in-week randomness. ``residual_weeks=0`` is the horizon-only
variant it is tested against.
"""

from __future__ import annotations

import numpy as np

from cvm_rl.policies.base import Policy, check_number, one_hot
from cvm_rl.policies.lifecycle_value import CustomerBelief, Horizon, best_actions, plan_values
from simulator.config import Scenario
from simulator.core import RESIDUAL_WEEKLY_DISCOUNT, RESIDUAL_WEEKS, Population


class OraclePolicy(Policy):
    """Expected-value planner on the latent state; call :meth:`bind` with the population
    whose customers the observations describe (``evaluation.run_episode`` does this)."""

    name = "oracle"
    uses_latent_state = True

    def __init__(
        self,
        scenario: Scenario,
        *,
        min_gain: float = 0.0,
        residual_weeks: int = RESIDUAL_WEEKS,
        optout_cost: float = 0.0,
        seed: int | None = None,
    ):
        super().__init__(scenario, seed=seed)
        self.min_gain = check_number("min_gain", min_gain, low=0.0, strict=False)
        if residual_weeks < 0:
            raise ValueError(f"residual_weeks must be >= 0, got {residual_weeks}")
        self.residual_weeks = residual_weeks
        self.optout_cost = check_number("optout_cost", optout_cost, low=0.0, strict=False)
        self._population: Population | None = None

    def bind(self, population: Population) -> None:
        if population.scenario != self.scenario:
            raise ValueError("population: simulates a different scenario than the oracle's")
        self._population = population

    def _probabilities(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        pop = self._population
        if pop is None:
            raise ValueError("oracle: bind(population) before asking for actions")
        if pop.n != len(obs):
            raise ValueError(f"obs: {len(obs)} rows but the bound population has {pop.n}")
        best = np.zeros(len(obs), dtype=np.int64)
        # Only present customers with an eligible contact need planning (others: no contact;
        # the simulator's masks only allow contacts to present customers anyway).
        rows = np.flatnonzero(mask[:, 1:].any(axis=1) & pop.present)
        if rows.size:
            best[rows] = best_actions(
                self.expected_values(pop, rows), mask[rows], min_gain=self.min_gain
            )
        return one_hot(best, self.n_actions)

    def horizon(self, pop: Population) -> Horizon:
        """What the oracle counts from the population's current week."""
        return Horizon(
            week_of_year=pop.week_of_year,
            weeks_left=self.scenario.horizon_weeks - pop.week,
            residual_weeks=self.residual_weeks,
            residual_weekly_discount=RESIDUAL_WEEKLY_DISCOUNT,
        )

    def expected_values(self, pop: Population, rows: np.ndarray | None = None) -> np.ndarray:
        """(len(rows), A) expected value of each action now, no contact after, for present
        customers (all of them when ``rows`` is None)."""
        rows = np.flatnonzero(pop.present) if rows is None else np.asarray(rows)
        return plan_values(
            latent_belief(pop, rows),
            self.scenario,
            pop.tables,
            self.horizon(pop),
            optout_cost=self.optout_cost,
        )


def latent_belief(pop: Population, rows: np.ndarray) -> CustomerBelief:
    """The true latent state of the present customers ``rows`` as a (certain) belief."""
    if not pop.present[rows].all():
        raise ValueError("rows: every customer planned for must be present")
    tb = pop.tables
    seg = pop.segment[rows].astype(np.int64)
    channel = np.maximum(tb.action_channel, 0)
    lift = (
        tb.action_base_lift[None, :]
        * tb.segment_sensitivity[seg, None]
        * tb.segment_affinity[seg][:, channel]
        * pop.uplift_multiplier(rows)[:, None]
    )
    lift[:, 0] = 0.0
    alive, bought = pop.alive[rows], pop.purchased_ever[rows]
    return CustomerBelief(
        prospect_alive=(alive & ~bought).astype(np.float64),
        prospect_dead=(~alive & ~bought).astype(np.float64),
        customer_alive=(alive & bought).astype(np.float64),
        customer_dead=(~alive & bought).astype(np.float64),
        purchase_rate=pop.lam[rows],
        dropout_prob=pop.p_drop[rows],
        spend_per_order=pop.scenario.purchase.spend_p / pop.nu[rows],
        action_lift=lift,
        contact_churn=tb.segment_contact_churn[seg],
        fatigue=pop.fatigue[rows].astype(np.float64),
        pull_forward_debt=pop.pf_debt[rows].astype(np.float64),
        retention_left=pop.retention_left[rows].astype(np.float64),
        retention_mult=pop.retention_mult[rows].astype(np.float64),
    )
