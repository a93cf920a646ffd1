"""Expected long-run value of each action now, from a belief about each customer's state.

One model of the simulator's equations in expectation, shared by the oracle (a belief that is
the true latent state) and the CLV planner (a belief estimated from observations). For each
customer and each action "take it now and contact nobody afterwards" it gives the expected
net margin to the end of the horizon plus, optionally, the discounted margin of the weeks
after it (the residual value that the long-run metric adds, see
:meth:`simulator.core.Population.expected_no_contact_margin`).

The state is carried as probability masses of four states (prospect or customer, alive or
dropped out) with point values of the traits (purchase rate, dropout probability, spend),
pull-forward debt and a running retention bonus, week by week:

* the contact's week: its cost (plus ``optout_cost`` times its chance of an opt-out);
  sleeping-dog churn of the alive masses; a retention bonus set; uplift damped by the
  channel's fatigue; a dropped-out customer's win-back raised by it; the discount and
  per-order cost paid on every purchase of the week; pull-forward debt added;
* every week: dropped-out customers come back with ``reactivation_prob``; a live customer with
  at-risk rate r and per-purchase dropout p makes (1 - exp(-r p)) / p at-risk purchases and
  survives the week with probability exp(-r p) (BG/NBD's dropout is memoryless: counting r
  purchases for a customer at risk over-counts); purchases an offer adds carry no dropout
  when ``purchase.dropout_on = "base_purchases"``; a prospect's first purchase carries none;
  debt is repaid at ``pull_forward_repay`` a week.

Once the bonus is over and the debt repaid (below 1e-3 purchases), the rest is linear in the
four masses: it is read off a backward recursion of the value per unit of each mass under no
contact (exact), less what is left of the debt at a purchase's margin. What it does not
value: a lost permission beyond ``optout_cost`` (no later contact is planned), fatigue beyond
the contact's week, and the spread of the traits (point values are plugged in, and the value
is not linear in them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.config import Scenario
from simulator.core import Tables, prospect_week

SETTLED_DEBT = 1e-3
"""Pull-forward debt (purchases) below which a plan's state counts as settled."""


@dataclass
class CustomerBelief:
    """What a planner believes about N present customers (arrays of length N unless noted).

    The four masses sum to one per customer. ``action_lift`` is each action's uplift of the
    purchase rate before fatigue (0 for no contact); ``contact_churn`` the chance that a
    contact makes a live customer drop out (a sleeping dog woken).
    """

    prospect_alive: np.ndarray
    prospect_dead: np.ndarray
    customer_alive: np.ndarray
    customer_dead: np.ndarray
    purchase_rate: np.ndarray
    dropout_prob: np.ndarray
    spend_per_order: np.ndarray
    action_lift: np.ndarray  # (N, A)
    contact_churn: np.ndarray
    fatigue: np.ndarray  # (N, C)
    pull_forward_debt: np.ndarray
    retention_left: np.ndarray
    retention_mult: np.ndarray

    @property
    def n(self) -> int:
        return int(self.purchase_rate.shape[0])

    def subset(self, rows: np.ndarray) -> CustomerBelief:
        """The belief about the customers ``rows`` only (in that order)."""
        return CustomerBelief(**{name: value[rows] for name, value in vars(self).items()})


@dataclass(frozen=True)
class Horizon:
    """When the decision is taken and what is counted: ``weeks_left`` weeks of the horizon
    (this one included) at weight 1, then ``residual_weeks`` at ``residual_weekly_discount``
    per week."""

    week_of_year: int
    weeks_left: int
    residual_weeks: int = 0
    residual_weekly_discount: float = 1.0

    @property
    def weeks(self) -> int:
        return max(self.weeks_left, 0) + self.residual_weeks

    def weight(self, w: int) -> float:
        return (
            1.0 if w < self.weeks_left else self.residual_weekly_discount ** (w - self.weeks_left)
        )


def plan_values(
    belief: CustomerBelief,
    scenario: Scenario,
    tables: Tables,
    horizon: Horizon,
    *,
    optout_cost: float = 0.0,
) -> np.ndarray:
    """(N, A) expected value of taking each action now and no contact afterwards, less
    ``optout_cost`` times each contact's chance of an opt-out."""
    n, n_actions = belief.n, tables.n_actions
    values = np.zeros((n, n_actions))
    if horizon.weeks_left <= 0:
        return values
    # Actions that start a retention bonus settle only when it ends: valued apart, so the
    # others stop as soon as their pull-forward debt is repaid.
    bonus = tables.action_retention_weeks > 0
    unit = unit_values(belief, scenario, tables, horizon)
    for actions in (np.flatnonzero(~bonus), np.flatnonzero(bonus)):
        if actions.size:
            values[:, actions] = _action_values(
                belief, scenario, tables, horizon, actions, unit, optout_cost
            )
    return values


def _action_values(
    belief: CustomerBelief,
    scenario: Scenario,
    tables: Tables,
    horizon: Horizon,
    actions: np.ndarray,
    unit: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    optout_cost: float,
) -> np.ndarray:
    """(N, K) values of the actions ``actions`` (see :func:`plan_values`), from the value per
    unit of mass of :func:`unit_values` once settled."""
    n, k = belief.n, actions.size
    sc, tb, pm = scenario, tables, scenario.purchase
    contacted = actions > 0
    channel = np.maximum(tb.action_channel[actions], 0)
    fatigue = belief.fatigue[:, channel]
    lift = belief.action_lift[:, actions] * np.exp(-tb.channel_fatigue_sens[channel] * fatigue)
    lift[:, ~contacted] = 0.0
    churn = belief.contact_churn[:, None] * contacted
    p_optout = np.minimum(
        tb.channel_optout_base[channel] * (1.0 + tb.channel_optout_per_fatigue[channel] * fatigue),
        1.0,
    )
    contact_cost = (tb.action_contact_cost[actions] + optout_cost * p_optout) * contacted
    bonus_weeks = tb.action_retention_weeks[actions]
    gets_bonus = contacted & (bonus_weeks > 0)
    lam, p_base = belief.purchase_rate[:, None], belief.dropout_prob[:, None]
    spend = belief.spend_per_order[:, None]
    conv = sc.acquisition.prospect_conversion
    pull_forward = tb.action_pull_forward[actions]
    per_order_plain = spend * sc.margin_rate
    per_order_offer = (
        spend * (sc.margin_rate - tb.action_discount_rate[actions])
        - tb.action_cost_per_order[actions]
    )

    def plans(x: np.ndarray) -> np.ndarray:
        return np.repeat(x.astype(np.float64)[:, None], k, axis=1)

    prospect_alive, prospect_dead = plans(belief.prospect_alive), plans(belief.prospect_dead)
    customer_alive, customer_dead = plans(belief.customer_alive), plans(belief.customer_dead)
    debt = plans(belief.pull_forward_debt)
    ret_left, ret_mult = plans(belief.retention_left), plans(belief.retention_mult)
    total = -np.broadcast_to(contact_cost, (n, k)).copy()
    # The contact's week first (the only week with a lift), then no contact.
    for alive_mass, dead_mass in ((prospect_alive, prospect_dead), (customer_alive, customer_dead)):
        moved = alive_mass * churn
        alive_mass -= moved
        dead_mass += moved
    ret_left = np.where(gets_bonus, bonus_weeks.astype(np.float64), ret_left)
    ret_mult = np.where(gets_bonus, tb.action_retention_mult[actions], ret_mult)
    # Prospect masses exist only for customers believed possibly not to have bought yet.
    prospects = np.flatnonzero((belief.prospect_alive + belief.prospect_dead) > 0)
    p_plain = np.clip(p_base, 1e-12, 1.0)
    for w in range(horizon.weeks):
        bonus_running = ret_left.any()
        if w > 0 and not bonus_running and debt.max(initial=0.0) < SETTLED_DEBT:
            # Settled: the rest is linear in the masses (less the debt still to repay).
            u_pa, u_pd, u_ca, u_cd = (u[w, :, None] for u in unit)
            total += prospect_alive * u_pa + prospect_dead * u_pd
            total += customer_alive * u_ca + customer_dead * u_cd
            total -= customer_alive * debt * per_order_plain * horizon.weight(w)
            return total
        week_lift = lift if w == 0 else 0.0
        p_back = np.minimum(pm.reactivation_prob * (1.0 + pm.winback_response * week_lift), 1.0)
        for alive_mass, dead_mass in (
            (prospect_alive, prospect_dead),
            (customer_alive, customer_dead),
        ):
            coming_back = dead_mass * p_back
            alive_mass += coming_back
            dead_mass -= coming_back
        base = lam * tb.season[(horizon.week_of_year + w) % 52]
        bought = customer_alive + customer_dead
        repay = debt * pm.pull_forward_repay
        debt = debt + pull_forward * base * (bought + (1.0 - bought) * conv) * week_lift
        debt -= repay
        p = p_plain
        if bonus_running:
            p = np.clip(p_base * np.where(ret_left > 0, ret_mult, 1.0), 1e-12, 1.0)
        p = np.broadcast_to(p, customer_alive.shape)
        rate = np.maximum(base * (1.0 + week_lift) - repay, 0.0)
        at_risk = rate
        if pm.dropout_on == "base_purchases":
            at_risk = np.minimum(rate, np.maximum(base - repay, 0.0))
        # Customers: the at-risk purchases end at the one on which they drop out.
        survive = np.exp(-at_risk * p)
        purchases = customer_alive * ((1.0 - survive) / p + (rate - at_risk))
        dying = customer_alive * (1.0 - survive)
        customer_alive = customer_alive - dying
        customer_dead = customer_dead + dying
        if prospects.size:
            sub_lift = lift[prospects] if w == 0 else 0.0
            first, repeats, lives, none = prospect_week(
                np.maximum(base[prospects] * conv * (1.0 + sub_lift) - repay[prospects], 0.0),
                p[prospects],
            )
            alive_prospects = prospect_alive[prospects]
            purchases[prospects] += alive_prospects * (first + repeats)
            customer_alive[prospects] += alive_prospects * lives
            customer_dead[prospects] += alive_prospects * (first - lives)
            prospect_alive[prospects] = alive_prospects * none
        per_order = per_order_offer if w == 0 else per_order_plain
        total += horizon.weight(w) * purchases * per_order
        ret_left = np.maximum(ret_left - 1.0, 0.0)
    return total


def unit_values(
    belief: CustomerBelief, scenario: Scenario, tables: Tables, horizon: Horizon
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(W + 1, N) value from the start of week w to the end of what is counted, per unit of
    mass in each state (prospect alive, prospect dead, customer alive, customer dead), under
    no contact with no debt and no bonus: a backward recursion of the forward model. The
    prospect states are valued only for customers with prospect mass (0 elsewhere)."""
    pm, conv = scenario.purchase, scenario.acquisition.prospect_conversion
    n, weeks = belief.n, horizon.weeks
    lam = belief.purchase_rate
    p = np.clip(belief.dropout_prob, 1e-12, 1.0)
    margin = belief.spend_per_order * scenario.margin_rate
    back = pm.reactivation_prob
    prospects = np.flatnonzero((belief.prospect_alive + belief.prospect_dead) > 0)
    u_pa, u_pd, u_ca, u_cd = (np.zeros((weeks + 1, n)) for _ in range(4))
    for w in range(weeks - 1, -1, -1):
        g = horizon.weight(w) * margin
        base = lam * tables.season[(horizon.week_of_year + w) % 52]
        survive = np.exp(-base * p)
        ca_next, cd_next = u_ca[w + 1], u_cd[w + 1]
        alive_customer = g * (1.0 - survive) / p + survive * ca_next + (1.0 - survive) * cd_next
        u_ca[w] = alive_customer
        u_cd[w] = back * alive_customer + (1.0 - back) * cd_next
        if prospects.size:
            first, repeats, lives, none = prospect_week(base[prospects] * conv, p[prospects])
            alive_prospect = (
                g[prospects] * (first + repeats)
                + none * u_pa[w + 1, prospects]
                + lives * ca_next[prospects]
                + (first - lives) * cd_next[prospects]
            )
            u_pa[w, prospects] = alive_prospect
            u_pd[w, prospects] = back * alive_prospect + (1.0 - back) * u_pd[w + 1, prospects]
    return u_pa, u_pd, u_ca, u_cd


def no_contact_value(
    belief: CustomerBelief, scenario: Scenario, tables: Tables, horizon: Horizon
) -> np.ndarray:
    """(N,) expected value of contacting nobody from now, for a belief without pull-forward
    debt or a running bonus (what the planner believes): the masses times their unit values."""
    if horizon.weeks_left <= 0:
        return np.zeros(belief.n)
    unit = unit_values(belief, scenario, tables, horizon)
    masses = (
        belief.prospect_alive,
        belief.prospect_dead,
        belief.customer_alive,
        belief.customer_dead,
    )
    total: np.ndarray = sum(m * u[0] for m, u in zip(masses, unit, strict=True))
    return total


def best_actions(values: np.ndarray, mask: np.ndarray, *, min_gain: float = 0.0) -> np.ndarray:
    """Per customer, the eligible contact of largest value in the (N, A) ``values`` if it
    gains more than ``min_gain`` over no contact (column 0); otherwise no contact."""
    gain = np.where(mask, values - values[:, :1], -np.inf)
    gain[:, 0] = -np.inf
    choice = np.argmax(gain, axis=1)
    return np.where(gain[np.arange(len(values)), choice] > min_gain, choice, 0)
