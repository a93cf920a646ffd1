"""The CLV planner: what a marketing-science team builds before RL, from observations only.

Each week, for each customer, it forms a belief from the observation alone and values every
eligible action with the same model of the dynamics as the oracle
(:mod:`cvm_rl.policies.lifecycle_value`), then takes the action of largest expected gain in
long-run value over no contact, if positive:

* **Who the customer may be.** A posterior over the scenario's segments from their shares, the
  profile attributes' per-segment frequencies and the likelihood of the customer's purchase
  history under each segment's BG/NBD model (the scenario's r, alpha, a, b with the segment's
  rate and dropout multipliers; a prospect's: no purchase in its weeks seen).
* **Within each segment** (Fader, Hardie and Lee 2005; Fader and Hardie's Gamma-Gamma):
  P(alive | x, t_x, T), the posterior mean purchase rate (r + x) / (alpha + T) and dropout
  probability a / (a + b + x) of a live customer, and the posterior mean spend per order from
  the average spend of the x + 1 orders seen.
* **The response.** ``response=None`` reads every contact effect from the scenario (segment
  sensitivity and channel affinity, the new-customer multiplier, sleeping-dog churn): what a
  perfect response model would give. A :class:`ResponseEstimate` instead uses the uplift of
  the week's purchases per action that a randomized campaign measured, for new and for
  established customers (:func:`estimate_response`), and knows no sleeping-dog churn: what a
  firm can fit. Both take the offers' terms (discounts, costs, the loyalty bonus's retention
  and the pull-forward share) from the scenario, as a firm knows its own offers.
* **Fatigue** from the observed contact history: each channel's last contact ``k`` weeks ago
  counts ``decay ** k``, the others in the cap window one week older.

It keeps no memory between calls (a served model sees one request at a time), so it assumes
no running loyalty bonus and no pulled-forward purchases; the oracle knows both. It never
reads the latent state: it has no ``bind``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import betaln, gammaln

from cvm_rl.policies.base import Policy, check_number, one_hot
from cvm_rl.policies.baselines import ExplorationPolicy
from cvm_rl.policies.lifecycle_value import (
    CustomerBelief,
    Horizon,
    best_actions,
    no_contact_value,
    plan_values,
)
from simulator.config import Scenario
from simulator.core import RESIDUAL_WEEKLY_DISCOUNT, RESIDUAL_WEEKS, Tables
from simulator.observation import observation_feature_names

NEW, ESTABLISHED = 1, 0
"""Columns of :attr:`ResponseEstimate.lift`: customers within ``new_customer_weeks`` of their
first purchase, and the others."""
CAMPAIGN_STREAM = 0x5EED_CA
"""Tags the campaign's assignment stream apart from the population's (same seed)."""


@dataclass(frozen=True)
class ResponseEstimate:
    """Uplift of a week's purchases per action (A, 2): ``lift[a, NEW]`` for new customers,
    ``lift[a, ESTABLISHED]`` for the others (row 0, no contact, is 0); ``orders[a, g]`` how
    many logged customer-weeks each came from."""

    lift: np.ndarray
    orders: np.ndarray

    def __post_init__(self) -> None:
        for name in ("lift", "orders"):
            value = np.asarray(getattr(self, name), dtype=np.float64)
            if value.ndim != 2 or value.shape[1] != 2 or not np.isfinite(value).all():
                raise ValueError(f"{name} must be a finite (A, 2) array, got shape {value.shape}")
            object.__setattr__(self, name, value)


def estimate_response(
    scenario: Scenario,
    *,
    n_customers: int = 200_000,
    weeks: int = 4,
    no_contact_share: float = 0.5,
    seed: int = 0,
) -> ResponseEstimate:
    """Run a randomized campaign in the simulator and measure each action's uplift with
    :func:`response_from_decisions`: every week each customer gets no contact with
    probability ``no_contact_share``, else a uniform eligible contact
    (:class:`~cvm_rl.policies.baselines.ExplorationPolicy`, drawing from a stream of its own);
    the outcome is the week's purchase count."""
    from cvm_rl.rollout import rollout  # rollout imports the policies package

    policy = ExplorationPolicy(scenario, no_contact_share=no_contact_share)
    policy.rng = np.random.default_rng([CAMPAIGN_STREAM, seed])
    obs, actions, propensities, purchases = [], [], [], []
    steps = rollout(
        policy, scenario, n_customers=n_customers, weeks=weeks, seed=seed, reseed_policy=False
    )
    for t in steps:
        obs.append(t.obs)
        actions.append(t.executed)
        propensities.append(t.decisions.propensities)
        purchases.append(t.next_info["purchases"])
    return response_from_decisions(
        scenario,
        np.concatenate(obs),
        np.concatenate(actions),
        np.concatenate(propensities),
        np.concatenate(purchases),
    )


def response_from_decisions(
    scenario: Scenario,
    obs: np.ndarray,
    actions: np.ndarray,
    propensities: np.ndarray,
    purchases: np.ndarray,
    *,
    prior_weeks: float = 0.0,
) -> ResponseEstimate:
    """Each action's uplift of the week's purchases over no contact, for new and established
    customers (prospects left out), from logged decisions with their propensities: per
    (action, group) the self-normalized inverse-propensity mean of ``purchases`` (a count or a
    purchase flag) among the rows that took the action, shrunk towards no contact's mean by
    ``prior_weeks`` pseudo customer-weeks (an action seen in few rows keeps an uplift near 0);
    an action nobody took keeps uplift 0."""
    names = observation_feature_names(scenario)
    n_actions = scenario.n_actions
    customer = obs[:, names.index("stage_prospect")] < 0.5
    tenure = obs[:, names.index("tenure_weeks")]
    new = tenure < scenario.contact_response.new_customer_weeks
    cell = (np.asarray(actions, dtype=np.int64) * 2 + np.where(new, NEW, ESTABLISHED))[customer]
    weight = 1.0 / np.asarray(propensities, dtype=np.float64)[customer]
    outcome = np.asarray(purchases, dtype=np.float64)[customer]
    size = n_actions * 2
    rows = np.bincount(cell, minlength=size).reshape(-1, 2).astype(np.float64)
    total_weight = np.bincount(cell, weights=weight, minlength=size).reshape(-1, 2)
    weighted = np.bincount(cell, weights=weight * outcome, minlength=size).reshape(-1, 2)
    rate = np.divide(weighted, total_weight, out=np.zeros_like(weighted), where=total_weight > 0)
    base = rate[:1]
    shrunk = (rows * rate + prior_weeks * base) / np.maximum(rows + prior_weeks, 1e-12)
    lift = np.divide(shrunk, base, out=np.ones_like(shrunk), where=(rows > 0) & (base > 0)) - 1.0
    lift[0] = 0.0
    return ResponseEstimate(lift=lift, orders=rows)


class CLVPlannerPolicy(Policy):
    """Expected long-run value planner on a BG/NBD + Gamma-Gamma belief (see the module)."""

    name = "clv_planner"
    uses_latent_state = False

    def __init__(
        self,
        scenario: Scenario,
        *,
        response: ResponseEstimate | None = None,
        optout_cost: float = 0.0,
        min_gain: float = 0.0,
        residual_weeks: int = RESIDUAL_WEEKS,
        seed: int | None = None,
    ) -> None:
        super().__init__(scenario, seed=seed)
        self.tables = Tables.from_scenario(scenario)
        if response is not None and response.lift.shape != (self.n_actions, 2):
            raise ValueError(
                f"response: lift must have shape ({self.n_actions}, 2), got {response.lift.shape}"
            )
        self.response = response
        self.optout_cost = check_number("optout_cost", optout_cost, low=0.0, strict=False)
        self.min_gain = check_number("min_gain", min_gain, low=0.0, strict=False)
        if residual_weeks < 0:
            raise ValueError(f"residual_weeks must be >= 0, got {residual_weeks}")
        self.residual_weeks = int(residual_weeks)
        if response is not None:
            self.name = "clv_planner_estimated"
        sc = scenario
        self._attribute_columns = [
            self.feature_index[f"{name}_{member}"]
            for name, attribute in sc.attributes.items()
            for member in attribute.members
        ]
        self._attribute_log_probs = np.log(
            np.maximum(
                [
                    [attribute.by_segment[s][m] for s in sc.segment_names]
                    for attribute in sc.attributes.values()
                    for m in range(len(attribute.members))
                ],
                1e-300,
            )
        ).reshape(len(self._attribute_columns), self.tables.n_segments)
        self._segment_columns = (
            [self.feature_index[f"segment_{s}"] for s in sc.segment_names]
            if sc.segment_observed
            else []
        )

    # ------------------------------------------------------------------ the policy
    def _probabilities(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        best = np.zeros(len(obs), dtype=np.int64)
        rows = np.flatnonzero(mask[:, 1:].any(axis=1))
        if rows.size:
            values = self.expected_values(obs[rows])
            best[rows] = best_actions(values, mask[rows], min_gain=self.min_gain)
        return one_hot(best, self.n_actions)

    def expected_values(self, obs: np.ndarray) -> np.ndarray:
        """(N, A) expected long-run value of each action now (no contact after), averaged over
        the segment posterior."""
        return self._by_horizon(obs, self._action_values)

    def customer_value(self, obs: np.ndarray) -> np.ndarray:
        """(N,) expected long-run value of each customer with no contact from now: the
        posterior CLV (the potential of ``cvm train --shaping``)."""
        return self._by_horizon(obs, self._no_contact_value)[:, 0]

    def _action_values(self, belief: CustomerBelief, horizon: Horizon) -> np.ndarray:
        return plan_values(
            belief, self.scenario, self.tables, horizon, optout_cost=self.optout_cost
        )

    def _no_contact_value(self, belief: CustomerBelief, horizon: Horizon) -> np.ndarray:
        return no_contact_value(belief, self.scenario, self.tables, horizon)[:, None]

    def _by_horizon(
        self, obs: np.ndarray, value: Callable[[CustomerBelief, Horizon], np.ndarray]
    ) -> np.ndarray:
        """``value(belief, horizon)`` for each (customer, segment) row, averaged over the
        segment posterior; customers are grouped by their week (one group in a simulated week)."""
        obs = self.check_obs(obs, np.float64)
        weights, belief = self.belief(obs)
        n, n_segments = weights.shape
        progress = obs[:, self.feature_index["horizon_progress"]]
        angle = np.arctan2(
            obs[:, self.feature_index["week_of_year_sin"]],
            obs[:, self.feature_index["week_of_year_cos"]],
        )
        week_of_year = np.rint(angle * 52 / (2 * np.pi)).astype(np.int64) % 52
        week = np.rint(progress * self.scenario.horizon_weeks).astype(np.int64)
        values: np.ndarray | None = None
        for key in np.unique(np.stack([week_of_year, week], axis=1), axis=0):
            rows = np.flatnonzero((week_of_year == key[0]) & (week == key[1]))
            stacked = (rows[:, None] * n_segments + np.arange(n_segments)).ravel()
            horizon = Horizon(
                week_of_year=int(key[0]),
                weeks_left=self.scenario.horizon_weeks - int(key[1]),
                residual_weeks=self.residual_weeks,
                residual_weekly_discount=RESIDUAL_WEEKLY_DISCOUNT,
            )
            per_segment = value(belief.subset(stacked), horizon)
            per_segment = per_segment.reshape(rows.size, n_segments, -1)
            if values is None:
                values = np.zeros((n, per_segment.shape[2]))
            values[rows] = np.einsum("nsa,ns->na", per_segment, weights[rows])
        assert values is not None
        return values

    # ------------------------------------------------------------------ the belief
    def belief(self, obs: np.ndarray) -> tuple[np.ndarray, CustomerBelief]:
        """The segment posterior (N, S) and a belief per (customer, segment), stacked
        customer-major (row ``i * S + s``)."""
        sc, tb, pm = self.scenario, self.tables, self.scenario.purchase
        f = self.feature_index
        n, n_segments = len(obs), tb.n_segments
        prospect = obs[:, f["stage_prospect"]] > 0.5
        x = np.where(prospect, 0.0, obs[:, f["frequency"]])
        big_t = obs[:, f["tenure_weeks"]]
        t_x = np.where(prospect, 0.0, np.maximum(big_t - obs[:, f["recency_weeks"]], 0.0))
        orders = x + 1.0
        spend_total = obs[:, f["monetary_avg"]] * orders
        # Per segment: BG/NBD with the segment's multipliers (a + b kept, mean of p scaled).
        r = pm.r
        alpha = pm.alpha / tb.segment_rate
        a = np.minimum(pm.a * tb.segment_dropout, 0.95 * (pm.a + pm.b))
        b = pm.a + pm.b - a
        conv = sc.acquisition.prospect_conversion
        log_lik = np.empty((n, n_segments))
        p_alive = np.empty((n, n_segments))
        rate = np.empty((n, n_segments))
        for s in range(n_segments):
            log_lik[:, s] = np.where(
                prospect,
                r * (np.log(alpha[s]) - np.log(alpha[s] + conv * big_t)),
                _bgnbd_log_likelihood(x, t_x, big_t, r, alpha[s], a[s], b[s]),
            )
            p_alive[:, s] = np.where(
                prospect, 1.0, _bgnbd_p_alive(x, t_x, big_t, r, alpha[s], a[s], b[s])
            )
            rate[:, s] = np.where(
                prospect, r / (alpha[s] + conv * big_t), (r + x) / (alpha[s] + big_t)
            )
        dropout = a[None, :] / (a + b + x[:, None])
        log_post = log_lik + self._segment_log_prior(obs)
        weights = np.exp(log_post - log_post.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        # Gamma-Gamma: spend per order of a customer with `orders` orders averaging m.
        gamma = pm.spend_gamma * tb.segment_spend
        spend = np.where(
            prospect[:, None],
            pm.spend_p * gamma / (pm.spend_q - 1.0),
            pm.spend_p
            * (gamma + spend_total[:, None])
            / (pm.spend_p * orders[:, None] + pm.spend_q - 1.0),
        )
        lift, churn = self._response(obs, prospect)
        channel_fatigue = self._fatigue(obs)
        bought = ~prospect

        def stack(per_segment: np.ndarray) -> np.ndarray:
            return per_segment.reshape(n * n_segments, *per_segment.shape[2:])

        def repeat(per_customer: np.ndarray) -> np.ndarray:
            return np.repeat(per_customer, n_segments, axis=0)

        alive = stack(p_alive)
        return weights, CustomerBelief(
            prospect_alive=np.where(repeat(bought), 0.0, alive),
            prospect_dead=np.where(repeat(bought), 0.0, 1.0 - alive),
            customer_alive=np.where(repeat(bought), alive, 0.0),
            customer_dead=np.where(repeat(bought), 1.0 - alive, 0.0),
            purchase_rate=stack(rate),
            dropout_prob=stack(dropout),
            spend_per_order=stack(spend),
            action_lift=stack(lift),
            contact_churn=stack(churn),
            fatigue=repeat(channel_fatigue),
            pull_forward_debt=np.zeros(n * n_segments),
            retention_left=np.zeros(n * n_segments),
            retention_mult=np.ones(n * n_segments),
        )

    def _response(self, obs: np.ndarray, prospect: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, A) uplift before fatigue and (N, S) contact churn."""
        tb, response = self.tables, self.scenario.contact_response
        n, n_segments = len(obs), tb.n_segments
        new = ~prospect & (obs[:, self.feature_index["tenure_weeks"]] < response.new_customer_weeks)
        if self.response is not None:
            lift = self.response.lift[:, np.where(new, NEW, ESTABLISHED)].T
            return np.repeat(lift[:, None, :], n_segments, axis=1), np.zeros((n, n_segments))
        channel = np.maximum(tb.action_channel, 0)
        per_segment = (
            tb.action_base_lift[None, :]
            * tb.segment_sensitivity[:, None]
            * tb.segment_affinity[:, channel]
        )
        per_segment[:, 0] = 0.0
        multiplier = np.where(new, response.new_customer_multiplier, 1.0)
        lift = multiplier[:, None, None] * per_segment[None, :, :]
        return lift, np.broadcast_to(tb.segment_contact_churn, (n, n_segments)).copy()

    def _fatigue(self, obs: np.ndarray) -> np.ndarray:
        """(N, C) fatigue from each channel's weeks since contact and contacts in the window."""
        tb = self.tables
        names = self.scenario.channel_names
        since = obs[:, [self.feature_index[f"weeks_since_contact_{c}"] for c in names]]
        count = obs[:, [self.feature_index[f"contacts_in_window_{c}"] for c in names]]
        decay = tb.channel_decay.astype(np.float64)[None, :]
        return decay**since * (1.0 + np.maximum(count - 1.0, 0.0) * decay)

    def _segment_log_prior(self, obs: np.ndarray) -> np.ndarray:
        """(N, S) log prior share plus log P(attributes | segment) (the attributes are one-hot:
        one product with the stacked per-segment log frequencies); with the segment observed
        (an ablation), its one-hot decides."""
        out = np.log(self.tables.segment_share) + obs[:, self._attribute_columns] @ (
            self._attribute_log_probs
        )
        if self._segment_columns:
            out = out + np.where(obs[:, self._segment_columns] > 0.5, 0.0, -np.inf)
        return out

    # ------------------------------------------------------------------ bundles
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "optout_cost": self.optout_cost,
            "min_gain": self.min_gain,
            "residual_weeks": self.residual_weeks,
        }
        if self.response is not None:
            state["response_lift"] = self.response.lift
            state["response_orders"] = self.response.orders
        return state

    @classmethod
    def from_state_dict(
        cls, state: dict[str, Any], scenario: Scenario, *, seed: int | None = None
    ) -> CLVPlannerPolicy:
        state = dict(state)
        lift, orders = state.pop("response_lift", None), state.pop("response_orders", None)
        response = None if lift is None else ResponseEstimate(lift=lift, orders=orders)
        unknown = set(state) - {"optout_cost", "min_gain", "residual_weeks"}
        if unknown:
            raise ValueError(f"state: unknown keys {sorted(unknown)} for a CLV planner")
        return cls(scenario, response=response, seed=seed, **state)


def _bgnbd_log_likelihood(
    x: np.ndarray, t_x: np.ndarray, big_t: np.ndarray, r: float, alpha: float, a: float, b: float
) -> np.ndarray:
    """Log-likelihood of (x, t_x, T) under BG/NBD (Fader, Hardie and Lee 2005, eq. 6)."""
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = betaln(a, b + x) - betaln(a, b)
    a3 = -(r + x) * np.log(alpha + big_t)
    with np.errstate(divide="ignore", invalid="ignore"):
        a4 = np.where(
            x > 0,
            np.log(a) - np.log(np.maximum(b + x - 1.0, 1e-300)) - (r + x) * np.log(alpha + t_x),
            -np.inf,
        )
    return a1 + a2 + np.logaddexp(a3, a4)


def _bgnbd_p_alive(
    x: np.ndarray, t_x: np.ndarray, big_t: np.ndarray, r: float, alpha: float, a: float, b: float
) -> np.ndarray:
    """P(alive | x, t_x, T) under BG/NBD (Fader, Hardie and Lee 2005, eq. 11)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_odds = (
            np.log(a)
            - np.log(np.maximum(b + x - 1.0, 1e-300))
            + (r + x) * (np.log(alpha + big_t) - np.log(alpha + t_x))
        )
        return np.where(x > 0, 1.0 / (1.0 + np.exp(log_odds)), 1.0)
