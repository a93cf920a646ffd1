"""The step kernel: one week for a whole population, as numpy array operations.

Both the single-customer :class:`~simulator.env.CustomerLifecycleEnv` and the native
:class:`~simulator.vector_env.CustomerLifecycleVectorEnv` drive a :class:`Population`; no
Python loop runs over customers.

Weekly dynamics, in order (see ``Population.step``):

1. eligibility: a requested action that the mask forbids becomes "no contact"; a contact
   budget, if set, is spent in a random order and the rest is refused;
2. contact effects: the lift of the offer through the channel (segment sensitivity, channel
   response and affinity, damped by channel fatigue), opt-out draws that rise with fatigue,
   "sleeping dog" dropouts, retention effects of loyalty offers, then fatigue builds;
3. dropped-out customers may come back (more likely when a contact reaches them);
4. purchases: Poisson with the BG/NBD latent rate x seasonality x (1 + lift), less the
   purchases that earlier offers pulled forward; after each repeat purchase the customer
   drops out with probability p (geometric), spend per purchase is Gamma-Gamma;
5. reward = margin on purchases - discount cost (on every purchase in the offer week,
   cannibalized ones included) - contact cost.

Randomness: the population's customers are drawn from the generator given to ``create``;
every draw of the weekly dynamics comes from per-customer streams keyed by (dynamics key,
customer, week, purpose) (:mod:`simulator.streams`), so two policies run on the same
population share every draw their decisions do not change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simulator.config import STAGES, Scenario
from simulator.observation import (
    CONTACT_RECENCY_CAP,
    FREQUENCY_CAP,
    MONETARY_CAP,
    RECENCY_CAP,
    ObservationLayout,
    one_hot,
)
from simulator.observation import (
    observation_feature_names as observation_feature_names,  # re-exported: callers import it here
)
from simulator.streams import (
    CustomerStreams,
    Purpose,
    exponential_from_uniform,
    gamma_from_uniform,
    poisson_from_uniform,
)

STAGE_INDEX = {name: i for i, name in enumerate(STAGES)}
RESIDUAL_WEEKS = 52
"""Weeks past the horizon that a customer's residual value covers (a second year)."""
RESIDUAL_WEEKLY_DISCOUNT = 0.9 ** (1 / 52)
"""The residual value's discount per week: 10 % a year."""
PROSPECT_MAX_TENURE = 26


class MaskedActionError(ValueError):
    """Raised in strict mode when a requested action is not eligible."""


@dataclass(frozen=True)
class Tables:
    """Scenario parameters as arrays indexed by action, channel and segment."""

    n_actions: int
    n_channels: int
    n_offers: int
    n_segments: int
    action_offer: np.ndarray  # (A,) offer index, -1 for no contact
    action_channel: np.ndarray  # (A,) channel index, -1 for no contact
    action_contact_cost: np.ndarray  # (A,)
    action_base_lift: np.ndarray  # (A,) offer uplift x channel response
    action_discount_rate: np.ndarray  # (A,)
    action_cost_per_order: np.ndarray  # (A,)
    action_pull_forward: np.ndarray  # (A,)
    action_retention_mult: np.ndarray  # (A,)
    action_retention_weeks: np.ndarray  # (A,)
    channel_opt_in: np.ndarray  # (C,)
    channel_decay: np.ndarray  # (C,)
    channel_fatigue_sens: np.ndarray  # (C,)
    channel_optout_base: np.ndarray  # (C,)
    channel_optout_per_fatigue: np.ndarray  # (C,)
    channel_cap: np.ndarray  # (C,)
    segment_share: np.ndarray  # (S,)
    segment_rate: np.ndarray  # (S,)
    segment_dropout: np.ndarray  # (S,)
    segment_spend: np.ndarray  # (S,)
    segment_sensitivity: np.ndarray  # (S,)
    segment_contact_churn: np.ndarray  # (S,)
    segment_affinity: np.ndarray  # (S, C)
    attribute_cdf: tuple[np.ndarray, ...]  # per attribute: (S, M) cumulative member probabilities
    season: np.ndarray  # (52,) multiplier by week of year (0-based)
    observation: ObservationLayout  # the columns ``Population.observe`` fills

    @classmethod
    def from_scenario(cls, sc: Scenario) -> Tables:
        offers = list(sc.offers.values())
        channels = list(sc.channels.values())
        segments = list(sc.segments.values())
        n_off, n_ch = len(offers), len(channels)
        a_off = np.concatenate([[-1], np.repeat(np.arange(n_off), n_ch)])
        a_ch = np.concatenate([[-1], np.tile(np.arange(n_ch), n_off)])

        def by_action(offer_values: list[float], channel_values: list[float] | None = None):
            out = np.zeros(len(a_off))
            contact = a_off >= 0
            out[contact] = np.asarray(offer_values)[a_off[contact]]
            if channel_values is not None:
                out[contact] *= np.asarray(channel_values)[a_ch[contact]]
            return out

        cost = np.zeros(len(a_off))
        cost[1:] = np.asarray([c.cost for c in channels])[a_ch[1:]]
        retention = np.ones(len(a_off))
        retention[1:] = np.asarray([o.retention_multiplier for o in offers])[a_off[1:]]
        season = np.ones(52)
        for peak in sc.seasonality:
            weeks = _week_range(peak.start_week, peak.end_week)
            season[weeks] *= peak.multiplier
        return cls(
            n_actions=sc.n_actions,
            n_channels=n_ch,
            n_offers=n_off,
            n_segments=len(segments),
            action_offer=a_off,
            action_channel=a_ch,
            action_contact_cost=cost,
            action_base_lift=by_action([o.uplift for o in offers], [c.response for c in channels]),
            action_discount_rate=by_action([o.discount_rate for o in offers]),
            action_cost_per_order=by_action([o.cost_per_order for o in offers]),
            action_pull_forward=by_action([o.pull_forward_share for o in offers]),
            action_retention_mult=retention,
            action_retention_weeks=by_action([o.retention_weeks for o in offers]).astype(np.int32),
            channel_opt_in=np.asarray([c.opt_in_prob for c in channels]),
            channel_decay=np.asarray([c.fatigue_decay for c in channels], dtype=np.float32),
            channel_fatigue_sens=np.asarray([c.fatigue_sensitivity for c in channels]),
            channel_optout_base=np.asarray([c.optout_base for c in channels]),
            channel_optout_per_fatigue=np.asarray([c.optout_per_fatigue for c in channels]),
            channel_cap=np.asarray([c.max_per_window for c in channels], dtype=np.int16),
            segment_share=np.asarray([s.share for s in segments]),
            segment_rate=np.asarray([s.rate_multiplier for s in segments]),
            segment_dropout=np.asarray([s.dropout_multiplier for s in segments]),
            segment_spend=np.asarray([s.spend_multiplier for s in segments]),
            segment_sensitivity=np.asarray([s.offer_sensitivity for s in segments]),
            segment_contact_churn=np.asarray([s.contact_churn_prob for s in segments]),
            segment_affinity=np.asarray(
                [[s.channel_affinity.get(c, 1.0) for c in sc.channels] for s in segments]
            ),
            attribute_cdf=tuple(
                np.cumsum([attr.by_segment[name] for name in sc.segments], axis=1)
                for attr in sc.attributes.values()
            ),
            season=season,
            observation=ObservationLayout.from_scenario(sc),
        )


def _draw_attributes(tb: Tables, segment: np.ndarray, streams: CustomerStreams) -> np.ndarray:
    """(N, K) member index of each attribute, drawn from the customer's segment's
    distribution by inverse transform of the customer's own stream (one per attribute)."""
    n = len(segment)
    out = np.zeros((n, len(tb.attribute_cdf)), dtype=np.int8)
    customers = np.arange(n)
    for k, cdf in enumerate(tb.attribute_cdf):
        u = streams.uniform(Purpose.ATTRIBUTE, k, customers)
        rows = cdf[segment.astype(np.intp)]
        # the first member whose cumulative probability exceeds u (rounding: never past last)
        out[:, k] = np.minimum((u[:, None] >= rows).sum(axis=1), cdf.shape[1] - 1)
    return out


def _week_range(start: int, end: int) -> np.ndarray:
    """0-based weeks of year from ``start`` to ``end`` (1-based, inclusive, may wrap)."""
    if start <= end:
        return np.arange(start - 1, end)
    return np.concatenate([np.arange(start - 1, 52), np.arange(0, end)])


@dataclass
class StepResult:
    """Per-customer outcome of one week; every array has length N."""

    reward: np.ndarray
    revenue: np.ndarray
    margin: np.ndarray
    discount_cost: np.ndarray
    contact_cost: np.ndarray
    purchases: np.ndarray
    executed_action: np.ndarray
    masked_action: np.ndarray
    budget_refused: np.ndarray
    opted_out: np.ndarray
    dropped_out: np.ndarray
    truncated: bool


def prospect_week(
    rate: np.ndarray, p: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A live prospect's week at purchase rate ``rate`` and per-purchase dropout ``p``: the
    chance of a first purchase (free of dropout), the expected repeats after it (each with a
    dropout chance, up to the one it happens on), the chance of ending the week a live
    customer, and of ending it a prospect still."""
    none = np.exp(-rate)
    first = 1.0 - none
    q = 1.0 - p
    with np.errstate(divide="ignore", invalid="ignore"):
        # E[min(N - 1, K); N >= 1] and P(survive the repeats; N >= 1), K ~ Geometric(p)
        repeats = np.where(
            q > 1e-9, ((1.0 - np.exp(-rate * p)) / p - first) / q, 1.0 - none - rate * none
        )
        lives = np.where(q > 1e-9, (np.exp(-rate * p) - none) / q, rate * none)
    return first, repeats, lives, none


@dataclass
class Population:
    """State of N customers. Latent fields (``lam``, ``p_drop``, ``nu``, ``alive``,
    ``fatigue``, ``pf_debt``) are never part of the observation."""

    scenario: Scenario
    tables: Tables
    # latent
    lam: np.ndarray
    p_drop: np.ndarray
    nu: np.ndarray
    alive: np.ndarray
    segment: np.ndarray
    fatigue: np.ndarray  # (N, C) float32
    # observable, static: member index of each scenario attribute (hints at the segment)
    attributes: np.ndarray  # (N, K) int8
    pf_debt: np.ndarray
    retention_mult: np.ndarray
    retention_left: np.ndarray
    arrival_week: np.ndarray  # episode week in which an arriving customer joins
    arrival_opt_in: np.ndarray  # (N, C) opt-ins granted on arrival
    # observable history
    present: np.ndarray
    purchased_ever: np.ndarray
    recency: np.ndarray
    tenure: np.ndarray
    n_repeat: np.ndarray
    n_purchases: np.ndarray
    total_spend: np.ndarray
    reactivated: np.ndarray
    opt_in: np.ndarray  # (N, C) bool
    weeks_since_contact: np.ndarray  # (N, C) int16
    window_counts: np.ndarray  # (N, C) int16 contacts per channel in the cap window
    contact_ring: np.ndarray  # (N, W) int8: channel+1 contacted in each of the last W weeks
    streams: CustomerStreams  # every draw of the dynamics: (key, customer, week, purpose)
    # BG/NBD dropout as a hazard budget: each repeat purchase spends -log(1 - p) of it and the
    # customer drops out when it is spent (P(survive k) = prod (1 - p_i), any p_i); a new life
    # (after a reactivation) gets a new budget. Drawn from the streams by life number, so a
    # customer's lifetime in purchases is shared by every policy run on the population.
    dropout_budget: np.ndarray  # (N,) hazard left in this life
    lives: np.ndarray  # (N,) int32 lives begun in this episode (0 for the first)
    ring_pos: int = 0
    week: int = 0
    strict: bool = False
    masked_total: int = 0
    budget_refused_total: int = 0
    _mask_cache: np.ndarray | None = field(default=None, repr=False)
    _static_features: dict[str, np.ndarray] | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return int(self.lam.shape[0])

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(
        cls,
        scenario: Scenario,
        n: int,
        rng: np.random.Generator,
        *,
        strict: bool = False,
        arrival_week: np.ndarray | None = None,
    ) -> Population:
        """Draw N customers with latent traits and a no-contact purchase history.

        ``arrival_week`` (optional, length N) overrides the population mix: every customer then
        joins, with a first purchase, in the given episode week (0 = the first step).
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        sc, tb = scenario, Tables.from_scenario(scenario)
        pm = sc.purchase
        segment = rng.choice(tb.n_segments, size=n, p=tb.segment_share).astype(np.int16)
        lam = rng.gamma(pm.r, 1.0 / pm.alpha, size=n) * tb.segment_rate[segment]
        p_drop = np.minimum(rng.beta(pm.a, pm.b, size=n) * tb.segment_dropout[segment], 1.0)
        nu = rng.gamma(pm.spend_q, 1.0 / pm.spend_gamma, size=n) / tb.segment_spend[segment]
        opt_in_draw = rng.random((n, tb.n_channels)) < tb.channel_opt_in

        if arrival_week is None:
            kind = rng.random(n)
            acq = sc.acquisition
            is_prospect = kind < acq.prospect_share
            is_arrival = (kind >= acq.prospect_share) & (
                kind < acq.prospect_share + acq.arrival_share
            )
            arrivals = np.zeros(n, dtype=np.int32)
            if sc.horizon_weeks > 1:
                arrivals[is_arrival] = rng.integers(1, sc.horizon_weeks, size=is_arrival.sum())
            else:
                is_arrival[:] = False
        else:
            arrivals = np.asarray(arrival_week, dtype=np.int32)
            if arrivals.shape != (n,):
                raise ValueError(f"arrival_week must have shape ({n},), got {arrivals.shape}")
            is_prospect = np.zeros(n, dtype=bool)
            is_arrival = np.ones(n, dtype=bool)
        is_customer = ~is_prospect & ~is_arrival

        # Existing customers: exact BG/NBD history since a first purchase T0 weeks ago.
        tenure = np.zeros(n, dtype=np.int32)
        recency = np.zeros(n, dtype=np.int32)
        n_repeat = np.zeros(n, dtype=np.int32)
        alive = np.ones(n, dtype=bool)
        idx = np.flatnonzero(is_customer)
        if idx.size and sc.history_weeks > 0:
            t0 = rng.uniform(0.0, sc.history_weeks, size=idx.size)
            events = rng.poisson(lam[idx] * t0)
            lives = rng.geometric(p_drop[idx])  # repeat purchases up to and incl. dropout
            x = np.minimum(events, lives)
            alive[idx] = lives > events
            # The x-th of `events` uniform purchase times is Beta(x, events - x + 1) * T0.
            last = np.zeros(idx.size)
            has = x > 0
            last[has] = rng.beta(x[has], events[has] - x[has] + 1) * t0[has]
            tenure[idx] = np.floor(t0).astype(np.int32)
            recency[idx] = np.floor(t0 - last).astype(np.int32)
            n_repeat[idx] = x
        prospects = np.flatnonzero(is_prospect)
        tenure[prospects] = rng.integers(0, PROSPECT_MAX_TENURE + 1, size=prospects.size)
        recency[prospects] = tenure[prospects]
        purchased_ever = is_customer.copy()
        n_purchases = np.where(is_customer, n_repeat + 1, 0).astype(np.int32)
        total_spend = np.zeros(n)
        if idx.size:
            total_spend[idx] = rng.gamma(n_purchases[idx] * pm.spend_p, 1.0 / nu[idx])

        present = ~is_arrival  # arrivals join (with a first purchase) in their step
        opt_in = opt_in_draw & present[:, None]
        c, w = tb.n_channels, sc.constraints.cap_window_weeks
        return cls(
            scenario=sc,
            tables=tb,
            lam=lam,
            p_drop=p_drop,
            nu=nu,
            alive=alive,
            segment=segment,
            fatigue=np.zeros((n, c), dtype=np.float32),
            pf_debt=np.zeros(n),
            retention_mult=np.ones(n),
            retention_left=np.zeros(n, dtype=np.int32),
            arrival_week=np.where(is_arrival, arrivals, 0).astype(np.int32),
            arrival_opt_in=opt_in_draw,
            present=present,
            purchased_ever=purchased_ever,
            recency=recency,
            tenure=tenure,
            n_repeat=n_repeat,
            n_purchases=n_purchases,
            total_spend=total_spend,
            reactivated=np.zeros(n, dtype=bool),
            opt_in=opt_in,
            weeks_since_contact=np.full((n, c), CONTACT_RECENCY_CAP, dtype=np.int16),
            window_counts=np.zeros((n, c), dtype=np.int16),
            contact_ring=np.zeros((n, w), dtype=np.int8),
            # drawn last, so the customers are those that this rng drew before the streams
            streams=(streams := CustomerStreams.from_rng(rng)),
            dropout_budget=exponential_from_uniform(
                streams.uniform(Purpose.DROPOUT_BUDGET, 0, np.arange(n))
            ),
            lives=np.zeros(n, dtype=np.int32),
            attributes=_draw_attributes(tb, segment, streams),
            strict=strict,
        )

    # ------------------------------------------------------------------ observation
    def stage(self) -> np.ndarray:
        """Observable lifecycle stage index per customer (see ``config.STAGES``)."""
        st = self.scenario.stages
        rec = self.recency
        out = np.full(self.n, STAGE_INDEX["active"], dtype=np.int8)
        out[rec > st.at_risk_weeks] = STAGE_INDEX["at_risk"]
        out[rec > st.lapsed_weeks] = STAGE_INDEX["lapsed"]
        out[rec > st.churned_weeks] = STAGE_INDEX["churned"]
        out[(self.tenure < st.new_weeks) & self.purchased_ever] = STAGE_INDEX["new"]
        out[self.reactivated] = STAGE_INDEX["reactivated"]
        out[~self.purchased_ever] = STAGE_INDEX["prospect"]
        return out

    def observe(self) -> np.ndarray:
        """Observation matrix (N, D) float32 of ``observation_features``, filled by group."""
        angle = 2.0 * np.pi * self.week_of_year / 52.0
        return self.tables.observation.assemble(
            self.n,
            {
                "recency_weeks": np.minimum(self.recency, RECENCY_CAP),
                "frequency": np.minimum(self.n_repeat, FREQUENCY_CAP),
                "monetary_avg": np.minimum(
                    self.total_spend / np.maximum(self.n_purchases, 1), MONETARY_CAP
                ),
                "tenure_weeks": np.minimum(self.tenure, RECENCY_CAP),
                # (N, C) in channel order
                "weeks_since_contact": self.weeks_since_contact,
                "contacts_in_window": self.window_counts,
                "opt_in": self.opt_in,
                "stage": one_hot(self.stage(), len(STAGES)),
                **self._static_one_hots(),
                "week_of_year_sin": np.sin(angle),
                "week_of_year_cos": np.cos(angle),
                "horizon_progress": self.week / self.scenario.horizon_weeks,
            },
        )

    def _static_one_hots(self) -> dict[str, np.ndarray]:
        """The one-hot groups of what never changes (the attributes, and the segment where a
        scenario observes it), built once (at 100,000 customers, rebuilding them every week
        took 2 of the 9 ms of an observation)."""
        if self._static_features is None:
            static = {
                name: one_hot(self.attributes[:, k], len(attribute.members))
                for k, (name, attribute) in enumerate(self.scenario.attributes.items())
            }
            if self.scenario.segment_observed:
                static["segment"] = one_hot(self.segment, self.tables.n_segments)
            self._static_features = static
        return self._static_features

    @property
    def week_of_year(self) -> int:
        """0-based calendar week of the current step."""
        return (self.scenario.start_week - 1 + self.week) % 52

    def uplift_multiplier(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Multiplier of a contact's uplift from the customer's observable history: new
        customers (first purchase fewer than ``contact_response.new_customer_weeks`` ago)
        respond ``new_customer_multiplier`` times as strongly (for ``rows`` when given)."""
        response = self.scenario.contact_response
        which: np.ndarray | slice = slice(None) if rows is None else rows
        new = self.purchased_ever[which] & (self.tenure[which] < response.new_customer_weeks)
        return np.where(new, response.new_customer_multiplier, 1.0)

    def action_mask(self) -> np.ndarray:
        """(N, A) bool: no contact is always allowed; a contact needs the customer present,
        opted in, and under the channel's and the overall frequency caps."""
        if self._mask_cache is not None:
            return self._mask_cache
        tb, cons = self.tables, self.scenario.constraints
        # This week's contact shares the cap window with the last W-1 weeks only: the oldest
        # week of ``window_counts`` leaves the window when this step is taken.
        counts = self.window_counts.copy()
        leaving = self.contact_ring[:, self.ring_pos]
        lidx = np.flatnonzero(leaving)
        counts[lidx, leaving[lidx] - 1] -= 1
        channel_ok = (
            self.opt_in
            & (counts < tb.channel_cap)
            & (counts.sum(axis=1) < cons.max_contacts_per_window)[:, None]
        )
        if cons.budget_per_customer_week is not None:
            channel_ok &= (tb.action_contact_cost[1 : 1 + tb.n_channels] <= self._budget())[None]
        mask = np.empty((self.n, tb.n_actions), dtype=bool)
        mask[:, 0] = True
        mask[:, 1:] = np.tile(channel_ok, tb.n_offers)
        self._mask_cache = mask
        return mask

    def _budget(self) -> float:
        budget = self.scenario.constraints.budget_per_customer_week
        return float("inf") if budget is None else budget * self.n

    def oracle_state(self) -> dict[str, np.ndarray]:
        """Latent state for evaluation and oracle policies only (copies)."""
        return {
            "purchase_rate": self.lam.copy(),
            "dropout_prob": self.p_drop.copy(),
            "spend_rate": self.nu.copy(),
            "alive": self.alive.copy(),
            "fatigue": self.fatigue.copy(),
            "pull_forward_debt": self.pf_debt.copy(),
            "retention_multiplier": np.where(self.retention_left > 0, self.retention_mult, 1.0),
            "segment": self.segment.copy(),
            "present": self.present.copy(),
        }

    def expected_no_contact_margin(
        self,
        weeks: int = RESIDUAL_WEEKS,
        weekly_discount: float = RESIDUAL_WEEKLY_DISCOUNT,
        *,
        absent_as_zero: bool = False,
    ) -> np.ndarray:
        """(N,) expected margin of each customer over the next ``weeks`` weeks if nobody is
        contacted again, week ``w`` (0 = the next step) weighted by ``weekly_discount ** w``:
        the value a customer carries out of the horizon (its "residual value").

        Exact under the no-contact dynamics given the latent state (alive, purchase rate,
        dropout probability, spend rate, pull-forward debt, retention bonus), the remaining
        dropout budget marginalized (BG/NBD's per-purchase dropout is memoryless): for a live
        customer with weekly rate r and per-purchase dropout p, a week's expected purchases are
        (1 - exp(-r p)) / p and it survives the week with probability exp(-r p); a prospect's
        first purchase carries no dropout; a customer who dropped out comes back each week
        with ``reactivation_prob``. Every customer must be present (arrivals have joined),
        unless ``absent_as_zero``: then a customer not yet arrived counts 0 (its value is
        counted from its arrival on, as a measurement over time does).
        """
        if weeks < 0:
            raise ValueError(f"weeks must be >= 0, got {weeks}")
        if not 0.0 < weekly_discount <= 1.0:
            raise ValueError(f"weekly_discount must be in (0, 1], got {weekly_discount}")
        if not absent_as_zero and not self.present.all():
            raise ValueError(
                f"{int((~self.present).sum())} customers have not arrived yet: the residual "
                "value is defined once every customer is present"
            )
        tb, sc = self.tables, self.scenario
        pm = sc.purchase
        purchased, alive = self.purchased_ever, self.alive
        # Probability masses of the four states: (prospect | customer) x (alive | dead).
        prospect_alive = (~purchased & alive).astype(np.float64)
        prospect_dead = (~purchased & ~alive).astype(np.float64)
        customer_alive = (purchased & alive).astype(np.float64)
        customer_dead = (purchased & ~alive).astype(np.float64)
        debt = self.pf_debt.astype(np.float64).copy()
        margin_per_purchase = sc.margin_rate * pm.spend_p / self.nu
        back = pm.reactivation_prob
        total = np.zeros(self.n)
        for w in range(weeks):
            for alive_mass, dead_mass in (
                (prospect_alive, prospect_dead),
                (customer_alive, customer_dead),
            ):
                coming_back = dead_mass * back
                alive_mass += coming_back
                dead_mass -= coming_back
            base = self.lam * tb.season[(self.week_of_year + w) % 52]
            repay = debt * pm.pull_forward_repay
            debt -= repay
            p = self.p_drop * np.where(self.retention_left > w, self.retention_mult, 1.0)
            p = np.clip(p, 1e-12, 1.0)
            # Customers: purchases until the one on which they drop out.
            rate = np.maximum(base - repay, 0.0)
            survive = np.exp(-rate * p)
            purchases = customer_alive * (1.0 - survive) / p
            dying = customer_alive * (1.0 - survive)
            customer_alive -= dying
            customer_dead += dying
            # Prospects: the first purchase is free of dropout, the repeats after it are not.
            rate = np.maximum(base * sc.acquisition.prospect_conversion - repay, 0.0)
            first, repeats, lives, none = prospect_week(rate, p)
            purchases += prospect_alive * (first + repeats)
            customer_alive += prospect_alive * lives
            customer_dead += prospect_alive * (first - lives)
            prospect_alive *= none
            total += weekly_discount**w * purchases * margin_per_purchase
        if absent_as_zero:
            total[~self.present] = 0.0
        return total

    # ------------------------------------------------------------------ dynamics
    def reseed(self, seed: int | None) -> None:
        """New draws for the dynamics from now on, the same customers: the streams' key
        becomes one drawn from ``seed`` (None: from fresh entropy)."""
        self.streams = CustomerStreams.from_rng(np.random.default_rng(seed))
        self.dropout_budget = exponential_from_uniform(
            self.streams.uniform(Purpose.DROPOUT_BUDGET, self.lives, np.arange(self.n))
        )

    def step(self, actions: np.ndarray) -> StepResult:
        """Advance every customer by one week under ``actions`` (length N ints). Every draw
        comes from the customer's own streams (``self.streams``), so a customer's outcome
        depends on its own state and actions only (and on others' through the contact
        budget, when one is set and binding)."""
        tb, sc = self.tables, self.scenario
        pm = sc.purchase
        n = self.n
        actions = np.asarray(actions)
        if actions.shape != (n,):
            raise ValueError(f"actions must have shape ({n},), got {actions.shape}")
        if not np.issubdtype(actions.dtype, np.integer):
            if not np.all(np.mod(actions, 1) == 0):
                raise ValueError("actions must be integers")
            actions = actions.astype(np.int64)
        if actions.size and (actions.min() < 0 or actions.max() >= tb.n_actions):
            raise ValueError(f"actions must be in [0, {tb.n_actions}), got {actions.min()}..")
        rows = np.arange(n)

        # 1. eligibility and budget
        allowed = self.action_mask()[rows, actions]
        masked = ~allowed
        if self.strict and masked.any():
            bad = int(np.flatnonzero(masked)[0])
            raise MaskedActionError(
                f"action {int(actions[bad])} is not eligible for customer {bad} "
                "(opted out, frequency cap or budget); strict mode refuses it"
            )
        executed = np.where(allowed, actions, 0)
        budget_refused = np.zeros(n, dtype=bool)
        contact_cost = tb.action_contact_cost[executed]
        budget = self._budget()
        if contact_cost.sum() > budget:
            draw = self.streams.uniform(Purpose.BUDGET_ORDER, self.week, rows)
            order = np.argsort(draw, kind="stable")
            over = np.cumsum(contact_cost[order]) > budget
            refused = order[over & (contact_cost[order] > 0)]
            executed[refused] = 0
            budget_refused[refused] = True
            contact_cost = tb.action_contact_cost[executed]
        self.masked_total += int(masked.sum())
        self.budget_refused_total += int(budget_refused.sum())

        # 2. contact effects (fatigue before this week's contact damps the response)
        contacted = executed > 0
        ch = tb.action_channel[executed]
        ch_safe = np.maximum(ch, 0)
        fat_before = self.fatigue[rows, ch_safe].astype(np.float64)
        seg = self.segment
        lift = (
            tb.action_base_lift[executed]
            * tb.segment_sensitivity[seg]
            * tb.segment_affinity[seg, ch_safe]
            * self.uplift_multiplier()
            * np.exp(-tb.channel_fatigue_sens[ch_safe] * fat_before)
        )
        lift[~contacted] = 0.0
        opted_out = np.zeros(n, dtype=bool)
        dropped_out = np.zeros(n, dtype=bool)
        cidx = np.flatnonzero(contacted)
        if cidx.size:
            c_ch = ch[cidx]
            p_optout = tb.channel_optout_base[c_ch] * (
                1.0 + tb.channel_optout_per_fatigue[c_ch] * fat_before[cidx]
            )
            out = self.streams.uniform(Purpose.OPT_OUT, self.week, cidx) < np.minimum(p_optout, 1)
            self.opt_in[cidx[out], c_ch[out]] = False
            opted_out[cidx[out]] = True
            churn = self.streams.uniform(Purpose.CONTACT_CHURN, self.week, cidx)
            dog = churn < tb.segment_contact_churn[seg[cidx]]
            dying = cidx[dog & self.alive[cidx]]
            self.alive[dying] = False
            dropped_out[dying] = True
            ret_weeks = tb.action_retention_weeks[executed[cidx]]
            gets = cidx[ret_weeks > 0]
            self.retention_left[gets] = ret_weeks[ret_weeks > 0]
            self.retention_mult[gets] = tb.action_retention_mult[executed[gets]]
        self.fatigue *= tb.channel_decay
        self.fatigue[cidx, ch[cidx]] += 1.0

        # 3. arrivals this week, and dropped-out customers coming back
        arriving = np.flatnonzero(~self.present & (self.arrival_week <= self.week))
        if arriving.size:
            self.present[arriving] = True
            self.opt_in[arriving] = self.arrival_opt_in[arriving]
        dead = np.flatnonzero(~self.alive & self.present)
        if dead.size:
            p_back = pm.reactivation_prob * (1.0 + pm.winback_response * lift[dead])
            winback = self.streams.uniform(Purpose.WINBACK, self.week, dead)
            back = dead[winback < np.minimum(p_back, 1.0)]
            self.alive[back] = True
            self.lives[back] += 1
            self.dropout_budget[back] = exponential_from_uniform(
                self.streams.uniform(Purpose.DROPOUT_BUDGET, self.lives[back], back)
            )

        # 4. purchases
        season = tb.season[self.week_of_year]
        base = self.lam * season
        base = np.where(self.purchased_ever, base, base * sc.acquisition.prospect_conversion)
        repay = self.pf_debt * pm.pull_forward_repay
        rate = np.maximum(base * (1.0 + lift) - repay, 0.0)
        self.pf_debt += tb.action_pull_forward[executed] * base * lift - repay
        active = self.alive & self.present
        rate[~active] = 0.0
        purchase_draw = self.streams.uniform(Purpose.PURCHASES, self.week, rows)
        purchases = poisson_from_uniform(purchase_draw, rate).astype(np.int32)
        purchases[arriving] = np.maximum(purchases[arriving], 1)  # arrival = first purchase

        buyers = np.flatnonzero(purchases)
        revenue = np.zeros(n)
        if buyers.size:
            k = purchases[buyers]
            first = (~self.purchased_ever[buyers]).astype(np.int32)
            repeats = k - first
            p_eff = self.p_drop[buyers] * np.where(
                self.retention_left[buyers] > 0, self.retention_mult[buyers], 1.0
            )
            # The repeats that may end in a dropout: all, or those of the base process alone
            # (its count from the same uniform at the no-offer rate, so never more).
            at_risk = repeats
            if pm.dropout_on == "base_purchases":
                base_rate = np.maximum(base[buyers] - repay[buyers], 0.0)
                base_count = poisson_from_uniform(purchase_draw[buyers], base_rate)
                at_risk = np.clip(np.minimum(base_count, k) - first, 0, None)
            # Each at-risk repeat spends this much of the dropout budget; the one that spends
            # the last of it is the customer's last purchase of this life.
            hazard_left = self.dropout_budget[buyers]
            with np.errstate(divide="ignore", invalid="ignore"):  # p = 1: an infinite hazard
                hazard = -np.log1p(-np.clip(p_eff, 1e-12, 1.0))
                last = np.maximum(np.ceil(hazard_left / hazard), 1.0)
                spent = np.where(at_risk > 0, at_risk * hazard, 0.0)  # 0 x inf spends nothing
            last = np.minimum(last, np.iinfo(np.int32).max).astype(np.int64)
            dies = last <= at_risk
            self.dropout_budget[buyers] = np.where(dies, 0.0, hazard_left - spent)
            # a customer who drops out makes its at-risk repeats up to the dropout; the
            # purchases an offer added (not at risk) are made all the same
            repeats = (np.minimum(at_risk, last) + (repeats - at_risk)).astype(np.int32)
            k = first + repeats
            purchases[buyers] = k
            self.alive[buyers[dies]] = False
            dropped_out[buyers[dies]] = True
            spend = gamma_from_uniform(
                self.streams.uniform(Purpose.SPEND, self.week, buyers),
                k * pm.spend_p,
                1.0 / self.nu[buyers],
            )
            revenue[buyers] = spend
            lapsed_before = self.purchased_ever[buyers] & (
                self.recency[buyers] > sc.stages.lapsed_weeks
            )
            self.reactivated[buyers[lapsed_before]] = True
            self.tenure[buyers[first == 1]] = 0
            self.purchased_ever[buyers] = True
            self.n_repeat[buyers] += repeats
            self.n_purchases[buyers] += k
            self.total_spend[buyers] += spend

        # 5. money
        margin = sc.margin_rate * revenue
        discount_cost = tb.action_discount_rate[executed] * revenue
        discount_cost += tb.action_cost_per_order[executed] * purchases
        reward = margin - discount_cost - contact_cost

        # 6. observable history moves on one week
        bought = purchases > 0
        self.recency = np.where(bought, 0, self.recency + self.present)
        self.tenure += self.present
        self.reactivated &= self.recency <= sc.stages.at_risk_weeks
        self.retention_left = np.maximum(self.retention_left - 1, 0)
        self.weeks_since_contact = np.minimum(self.weeks_since_contact + 1, CONTACT_RECENCY_CAP)
        self.weeks_since_contact[cidx, ch[cidx]] = 0
        leaving = self.contact_ring[:, self.ring_pos]
        lidx = np.flatnonzero(leaving)
        self.window_counts[lidx, leaving[lidx] - 1] -= 1
        self.contact_ring[:, self.ring_pos] = ch + 1
        self.window_counts[cidx, ch[cidx]] += 1
        self.ring_pos = (self.ring_pos + 1) % self.contact_ring.shape[1]
        self.week += 1
        self._mask_cache = None

        return StepResult(
            reward=reward,
            revenue=revenue,
            margin=margin,
            discount_cost=discount_cost,
            contact_cost=contact_cost,
            purchases=purchases,
            executed_action=executed,
            masked_action=masked,
            budget_refused=budget_refused,
            opted_out=opted_out,
            dropped_out=dropped_out,
            truncated=self.week >= sc.horizon_weeks,
        )
