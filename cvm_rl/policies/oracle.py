"""The oracle: a reference policy that sees the simulator's latent state.

Not deployable (no real system knows a customer's purchase rate or whether they are still
alive); it is the yardstick for "share of the achievable lift". Every week it computes, for
each customer and each eligible action, the **expected** net value to the end of the horizon
of taking that action now and contacting nobody afterwards, using the true latent state
(purchase rate, dropout probability, spend rate, alive, fatigue, pull-forward debt, retention
bonus) and the simulator's own equations in expectation:

* future arrivals join in their week with a forced first purchase, as in the kernel;
* this week: contact cost; sleeping-dog churn and win-back of dropped-out customers; uplift
  damped by the channel's fatigue; the discount and per-order cost paid on *every* purchase
  of the week (bought-anyway ones included); pull-forward debt added; a retention bonus set;
* every later week until the horizon ends: purchases at the seasonal base rate less the debt
  being repaid; survival ``S <- S * exp(-rate * p_dropout)`` (a week with Poisson(rate)
  purchases, each a dropout chance), so extra purchases also carry extra dropout risk
  (with ``purchase.dropout_on = "base_purchases"`` only the base process's rate counts); the
  retention bonus lowers the dropout probability while it lasts; prospects convert.

It takes the action with the largest expected gain over no contact, if positive. Re-planning
every week makes it a one-step policy improvement over no contact with the true model. What
it does not value: the option of contacting later (opt-outs and fatigue only count through
this week's uplift), and in-week randomness beyond expectations. A learned policy that beats
it would be reported as such (see ``experiments/bandit_vs_rl.py``).
"""

from __future__ import annotations

import numpy as np

from cvm_rl.policies.base import Policy, check_number, one_hot
from simulator.config import Scenario
from simulator.core import Population


class OraclePolicy(Policy):
    """Expected-value planner on the latent state; call :meth:`bind` with the population
    whose customers the observations describe (``evaluation.run_episode`` does this)."""

    name = "oracle"
    uses_latent_state = True

    def __init__(self, scenario: Scenario, *, min_gain: float = 0.0, seed: int | None = None):
        super().__init__(scenario, seed=seed)
        self.min_gain = check_number("min_gain", min_gain, low=0.0, strict=False)
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
        # Only customers with an eligible contact need planning (others: no contact).
        rows = np.flatnonzero(mask[:, 1:].any(axis=1))
        if rows.size:
            value = self.expected_values(pop, rows)
            gain = np.where(mask[rows], value - value[:, :1], -np.inf)
            choice = np.argmax(gain, axis=1)
            choice[gain[np.arange(rows.size), choice] <= self.min_gain] = 0
            best[rows] = choice
        return one_hot(best, self.n_actions)

    def expected_values(self, pop: Population, rows: np.ndarray | None = None) -> np.ndarray:
        """(N, A) expected net value to the horizon of each action now, no contact after
        (for the customers ``rows`` only, in that order, when given)."""
        tb, sc = pop.tables, self.scenario
        pm = sc.purchase
        rows = np.arange(pop.n) if rows is None else np.asarray(rows)
        n = rows.size
        remaining = sc.horizon_weeks - pop.week
        if remaining <= 0:
            return np.zeros((n, tb.n_actions))
        seg = pop.segment[rows].astype(np.int64)
        lam, p_drop, nu = pop.lam[rows], pop.p_drop[rows], pop.nu[rows]
        actions = np.arange(tb.n_actions)
        contacted = actions > 0
        ch = np.maximum(tb.action_channel, 0)
        # (N, A) uplift this week, damped by the fatigue of the action's channel.
        fatigue = pop.fatigue[rows].astype(np.float64)[:, ch]
        lift = (
            tb.action_base_lift[None, :]
            * tb.segment_sensitivity[seg, None]
            * tb.segment_affinity[seg][:, ch]
            * pop.uplift_multiplier(rows)[:, None]
            * np.exp(-tb.channel_fatigue_sens[ch][None, :] * fatigue)
        )
        lift[:, ~contacted] = 0.0
        present = pop.present[rows]
        # Weeks from now until a future arrival joins (with a forced first purchase).
        arrives_in = np.where(present, -1, pop.arrival_week[rows] - pop.week)[:, None]
        alive = pop.alive[rows, None].astype(np.float64)
        dog = tb.segment_contact_churn[seg, None] * contacted[None, :]
        p_back = pm.reactivation_prob * (1.0 + pm.winback_response * lift)
        survive = alive * (1.0 - dog) + (1.0 - alive) * np.minimum(p_back, 1.0)
        # Retention bonus: a fresh one replaces whatever was running.
        gets_bonus = tb.action_retention_weeks > 0
        ret_left = np.where(
            gets_bonus[None, :], tb.action_retention_weeks[None, :], pop.retention_left[rows, None]
        ).astype(np.float64)
        ret_mult = np.where(
            gets_bonus[None, :], tb.action_retention_mult[None, :], pop.retention_mult[rows, None]
        )
        spend = (pm.spend_p / nu)[:, None]
        bought = pop.purchased_ever[rows, None].astype(np.float64)
        debt = np.broadcast_to(pop.pf_debt[rows, None], (n, tb.n_actions)).copy()
        conv = sc.acquisition.prospect_conversion
        total = -np.broadcast_to(tb.action_contact_cost[None, :], (n, tb.n_actions)).copy()
        for w in range(remaining):
            season = tb.season[(pop.week_of_year + w) % 52]
            base = lam[:, None] * season * (bought + (1.0 - bought) * conv)
            repay = debt * pm.pull_forward_repay
            this_lift = lift if w == 0 else 0.0
            rate = np.maximum(base * (1.0 + this_lift) - repay, 0.0) * (arrives_in <= w)
            arriving = arrives_in == w
            # An arrival buys at least once: E[max(K, 1)] = rate + P(K = 0).
            orders = np.where(arriving, rate + np.exp(-rate), rate)
            if w == 0:
                debt = debt + tb.action_pull_forward[None, :] * base * lift - repay
                per_order = (
                    spend * (sc.margin_rate - tb.action_discount_rate[None, :])
                    - tb.action_cost_per_order[None, :]
                )
            else:
                debt = debt - repay
                per_order = spend * sc.margin_rate
            total += survive * orders * per_order
            p_eff = p_drop[:, None] * np.where(ret_left > 0, ret_mult, 1.0)
            bought_now = np.where(arriving, 1.0, survive * (1.0 - np.exp(-rate)))
            bought = bought + (1.0 - bought) * bought_now
            # Dropout chances come with every purchase, or with the base process's only.
            at_risk = rate
            if pm.dropout_on == "base_purchases":
                at_risk = np.minimum(rate, np.maximum(base - repay, 0.0) * (arrives_in <= w))
            survive = survive * np.exp(-at_risk * p_eff) + (1.0 - survive) * (
                pm.reactivation_prob * (arrives_in <= w)
            )
            ret_left = np.maximum(ret_left - 1.0, 0.0)
        return total
