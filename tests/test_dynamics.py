"""Invariants of the weekly kernel (``simulator.core.Population``), each recomputed
independently from the scenario and the observable history rather than from ``Tables``.

Statistical effects use fixed seeds and enough customers that the expected effect is many
standard errors away from the asserted bound.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from itertools import pairwise

import gymnasium as gym
import numpy as np
import pytest

from simulator import ENV_ID, CustomerLifecycleVectorEnv, MaskedActionError
from simulator.config import STAGES, Scenario
from simulator.core import CONTACT_RECENCY_CAP, Population, StepResult, observation_feature_names

# ----------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class ActionInfo:
    """Per-action parameters decoded from the scenario with ``decode_action``."""

    channel: np.ndarray  # channel index, -1 for no contact
    contact_cost: np.ndarray
    discount_rate: np.ndarray
    cost_per_order: np.ndarray

    @classmethod
    def of(cls, sc: Scenario) -> ActionInfo:
        n = sc.n_actions
        channel = np.full(n, -1)
        cost, rate, per_order = np.zeros(n), np.zeros(n), np.zeros(n)
        for action in range(n):
            offer, ch = sc.decode_action(action)
            if offer is None or ch is None:
                continue
            channel[action] = sc.channel_names.index(ch)
            cost[action] = sc.channels[ch].cost
            rate[action] = sc.offers[offer].discount_rate
            per_order[action] = sc.offers[offer].cost_per_order
        return cls(channel, cost, rate, per_order)


def _action(sc: Scenario, offer: str, channel: str) -> int:
    return sc.action_names().index(f"{offer}@{channel}")


def _cols(sc: Scenario, prefix: str) -> list[int]:
    """Observation columns ``prefix + channel`` in channel order."""
    names = observation_feature_names(sc)
    return [names.index(f"{prefix}{ch}") for ch in sc.channels]


def _col(sc: Scenario, name: str) -> int:
    return observation_feature_names(sc).index(name)


def _expected_stage(
    sc: Scenario,
    recency: np.ndarray,
    tenure: np.ndarray,
    purchased_ever: np.ndarray,
    reactivated: np.ndarray,
) -> np.ndarray:
    """Lifecycle stage by precedence: prospect, reactivated, new, churned, lapsed, at_risk."""
    st = sc.stages
    names = np.select(
        [
            ~purchased_ever,
            reactivated,
            tenure < st.new_weeks,
            recency > st.churned_weeks,
            recency > st.lapsed_weeks,
            recency > st.at_risk_weeks,
        ],
        ["prospect", "reactivated", "new", "churned", "lapsed", "at_risk"],
        default="active",
    )
    return np.array([STAGES.index(str(s)) for s in names])


@dataclass
class Step:
    actions: np.ndarray
    mask: np.ndarray  # pre-step mask
    obs: np.ndarray  # pre-step observation
    obs_after: np.ndarray
    alive: np.ndarray  # pre-step latent alive
    present: np.ndarray  # pre-step
    result: StepResult


def _run(
    sc: Scenario,
    n: int,
    seed: int,
    policy=None,
    weeks: int | None = None,
) -> tuple[Population, list[Step]]:
    """Run a population under ``policy(week, pop, rng) -> actions`` (default: uniform)."""
    rng = np.random.default_rng(seed)
    action_rng = np.random.default_rng(seed + 1_000)
    pop = Population.create(sc, n, rng)
    steps = []
    obs = pop.observe()
    for week in range(sc.horizon_weeks if weeks is None else weeks):
        if policy is None:
            actions = action_rng.integers(0, sc.n_actions, size=n)
        else:
            actions = policy(week, pop, action_rng)
        mask = pop.action_mask().copy()
        alive, present = pop.alive.copy(), pop.present.copy()
        result = pop.step(actions)
        obs_after = pop.observe()
        steps.append(Step(actions, mask, obs, obs_after, alive, present, result))
        obs = obs_after
    return pop, steps


@pytest.fixture(scope="module")
def random_run(default_scenario: Scenario) -> tuple[Population, list[Step]]:
    """2000 customers of the default scenario, a full episode of uniform random actions."""
    return _run(default_scenario, 2000, seed=11)


# ----------------------------------------------------------------------------- money


def test_reward_conservation_and_independent_terms(
    default_scenario: Scenario, random_run: tuple[Population, list[Step]]
) -> None:
    sc = default_scenario
    info = ActionInfo.of(sc)
    _pop, steps = random_run
    assert len(steps) == sc.horizon_weeks
    n_discounted = n_per_order = n_contacts = 0
    for step in steps:
        r = step.result
        ex = r.executed_action
        np.testing.assert_allclose(r.reward, r.margin - r.discount_cost - r.contact_cost)
        np.testing.assert_allclose(r.margin, sc.margin_rate * r.revenue)
        np.testing.assert_array_equal(r.contact_cost, info.contact_cost[ex])
        np.testing.assert_allclose(
            r.discount_cost,
            info.discount_rate[ex] * r.revenue + info.cost_per_order[ex] * r.purchases,
        )
        np.testing.assert_array_equal(r.revenue > 0, r.purchases > 0)
        assert (r.revenue >= 0).all() and (r.purchases >= 0).all()
        assert np.issubdtype(r.purchases.dtype, np.integer)
        assert np.isfinite(r.reward).all()
        n_discounted += int(((info.discount_rate[ex] > 0) & (r.purchases > 0)).sum())
        n_per_order += int(((info.cost_per_order[ex] > 0) & (r.purchases > 0)).sum())
        n_contacts += int((ex > 0).sum())
    # The checks above were exercised on every kind of cost.
    assert n_discounted > 20 and n_per_order > 5 and n_contacts > 1000


def test_no_contact_policy_costs_nothing(default_scenario: Scenario) -> None:
    sc = default_scenario
    n = 2000
    pop, steps = _run(sc, n, seed=12, policy=lambda w, p, r: np.zeros(n, dtype=np.int64))
    wsc, ciw = _cols(sc, "weeks_since_contact_"), _cols(sc, "contacts_in_window_")
    for step in steps:
        r = step.result
        assert (r.contact_cost == 0).all() and (r.discount_cost == 0).all()
        assert (r.executed_action == 0).all()
        assert not r.masked_action.any() and not r.budget_refused.any()
        assert not r.opted_out.any()
        np.testing.assert_allclose(r.reward, sc.margin_rate * r.revenue)
        assert (step.obs_after[:, wsc] == CONTACT_RECENCY_CAP).all()
        assert (step.obs_after[:, ciw] == 0).all()
    assert (pop.oracle_state()["fatigue"] == 0).all()
    assert sum(int(s.result.purchases.sum()) for s in steps) > 100


# ----------------------------------------------------------------------------- masking


def test_masked_actions_are_never_executed(default_scenario: Scenario) -> None:
    """Through the vector env: the previous step's info['action_mask'] decides."""
    sc = default_scenario
    n = 2000
    info_ch = ActionInfo.of(sc).channel
    wsc, ciw = _cols(sc, "weeks_since_contact_"), _cols(sc, "contacts_in_window_")
    venv = gym.make_vec(ENV_ID, num_envs=n, vectorization_mode="vector_entry_point")
    assert isinstance(venv, CustomerLifecycleVectorEnv)
    rng = np.random.default_rng(21)
    obs, info = venv.reset(seed=21)
    n_masked = n_executed = 0
    for _ in range(sc.horizon_weeks):
        mask = info["action_mask"].copy()
        actions = rng.integers(0, sc.n_actions, size=n)
        forbidden = ~mask[np.arange(n), actions]
        obs_after, _reward, _te, _tr, info = venv.step(actions)
        ex = info["executed_action"]
        np.testing.assert_array_equal(info["masked_action"], forbidden)
        assert (ex[forbidden] == 0).all()
        assert (info["contact_cost"][forbidden] == 0).all()
        assert not info["budget_refused"].any()  # no budget in the default scenario
        # Eligible requests are executed as requested.
        np.testing.assert_array_equal(ex[~forbidden], actions[~forbidden])
        # Customers whose request was masked were not contacted on any channel.
        for ch in range(len(sc.channels)):
            before, after = obs[forbidden][:, wsc[ch]], obs_after[forbidden][:, wsc[ch]]
            np.testing.assert_array_equal(after, np.minimum(before + 1, CONTACT_RECENCY_CAP))
            assert (obs_after[forbidden][:, ciw[ch]] <= obs[forbidden][:, ciw[ch]]).all()
            # ... and those contacted were contacted on the executed channel only.
            on_ch = info_ch[ex] == ch
            assert (obs_after[on_ch][:, wsc[ch]] == 0).all()
        n_masked += int(forbidden.sum())
        n_executed += int((ex > 0).sum())
        obs = obs_after
    assert venv.population.masked_total == n_masked
    assert n_masked > 1000 and n_executed > 1000
    venv.close()


def test_strict_masking_refuses_without_changing_state(default_scenario: Scenario) -> None:
    sc = default_scenario
    n = 500
    rng = np.random.default_rng(31)
    pop = Population.create(sc, n, rng, strict=True)
    for _ in range(3):  # some history first, only eligible actions
        mask = pop.action_mask()
        pop.step(np.where(mask[:, 1], 1, 0))
    mask = pop.action_mask().copy()
    customer, action = (int(x) for x in np.argwhere(~mask)[0])
    actions = np.where(mask[:, 2], 2, 0)
    actions[customer] = action
    snapshot = {
        f.name: getattr(pop, f.name).copy()
        for f in fields(pop)
        if isinstance(getattr(pop, f.name), np.ndarray)
    }
    scalars = (pop.week, pop.ring_pos, pop.masked_total, pop.budget_refused_total)
    rng_state = rng.bit_generator.state
    with pytest.raises(MaskedActionError, match=f"action {action} is not eligible"):
        pop.step(actions)
    assert (pop.week, pop.ring_pos, pop.masked_total, pop.budget_refused_total) == scalars
    assert rng.bit_generator.state == rng_state
    for name, value in snapshot.items():
        np.testing.assert_array_equal(getattr(pop, name), value, err_msg=name)
    # Without the offending action the step goes through.
    actions[customer] = 0
    result = pop.step(actions)
    np.testing.assert_array_equal(result.executed_action, actions)
    assert pop.week == 4


def test_opt_in_only_changes_by_opt_out_and_opt_outs_are_permanent(
    default_scenario: Scenario, random_run: tuple[Population, list[Step]]
) -> None:
    sc = default_scenario
    info_ch = ActionInfo.of(sc).channel
    opt_cols = _cols(sc, "opt_in_")
    _pop, steps = random_run
    n_ch = len(sc.channels)
    opted_out = np.zeros((steps[0].obs.shape[0], n_ch), dtype=bool)
    n_events = 0
    for step in steps:
        r = step.result
        # Channels this customer opted out of earlier stay masked and unobserved-as-opted-in.
        for ch in range(n_ch):
            on_ch = info_ch == ch
            assert not step.mask[opted_out[:, ch]][:, on_ch].any()
            assert (step.obs[opted_out[:, ch], opt_cols[ch]] == 0).all()
        # An opt-out happens only on the channel of an executed contact ...
        ex_ch = info_ch[r.executed_action]
        assert (ex_ch[r.opted_out] >= 0).all()
        new = np.zeros_like(opted_out)
        idx = np.flatnonzero(r.opted_out)
        new[idx, ex_ch[idx]] = True
        # ... and is the only way an observed opt-in goes from 1 to 0.
        dropped = (step.obs[:, opt_cols] == 1) & (step.obs_after[:, opt_cols] == 0)
        np.testing.assert_array_equal(dropped, new)
        opted_out |= new
        n_events += len(idx)
    assert n_events > 20


def test_mask_requires_opt_in(
    default_scenario: Scenario, random_run: tuple[Population, list[Step]]
) -> None:
    sc = default_scenario
    info_ch = ActionInfo.of(sc).channel
    opt_cols = _cols(sc, "opt_in_")
    _pop, steps = random_run
    for step in steps:
        assert step.mask[:, 0].all()
        for ch in range(len(sc.channels)):
            not_opted = step.obs[:, opt_cols[ch]] == 0
            assert not step.mask[not_opted][:, info_ch == ch].any()
            # Same-channel actions share eligibility regardless of the offer.
            block = step.mask[:, info_ch == ch]
            assert (block == block[:, :1]).all()


def _contact_history(sc: Scenario, steps: list[Step]) -> np.ndarray:
    """(T, N, C) executed contacts per channel, from ``executed_action`` and decode_action."""
    info_ch = ActionInfo.of(sc).channel
    ex = np.stack([s.result.executed_action for s in steps])
    ch = info_ch[ex]
    onehot = np.zeros((*ex.shape, len(sc.channels)), dtype=np.int64)
    t_idx, n_idx = np.nonzero(ch >= 0)
    onehot[t_idx, n_idx, ch[t_idx, n_idx]] = 1
    return onehot


def _window_sums(history: np.ndarray, width: int) -> np.ndarray:
    """Sum over the trailing ``width`` weeks ending at each week (shorter at the start)."""
    csum = np.cumsum(history, axis=0)
    out = csum.copy()
    out[width:] -= csum[:-width]
    return out


def test_frequency_caps_hold_over_every_window(
    default_scenario: Scenario, random_run: tuple[Population, list[Step]]
) -> None:
    sc = default_scenario
    _pop, steps = random_run
    history = _contact_history(sc, steps)
    width = sc.constraints.cap_window_weeks
    per_channel = _window_sums(history, width)  # (T, N, C)
    caps = np.array([sc.channels[c].max_per_window for c in sc.channels])
    assert (per_channel <= caps).all()
    assert (per_channel.sum(axis=2) <= sc.constraints.max_contacts_per_window).all()
    # The caps were actually reached (the check is not vacuous).
    assert (per_channel == caps).any(axis=(0, 1)).all()
    assert (per_channel.sum(axis=2) == sc.constraints.max_contacts_per_window).any()


def test_observed_contact_counters_match_history(
    default_scenario: Scenario, random_run: tuple[Population, list[Step]]
) -> None:
    sc = default_scenario
    _pop, steps = random_run
    history = _contact_history(sc, steps)
    per_channel = _window_sums(history, sc.constraints.cap_window_weeks)
    wsc, ciw = _cols(sc, "weeks_since_contact_"), _cols(sc, "contacts_in_window_")
    n_weeks = len(steps)
    last = np.full(history.shape[1:], -10_000)
    for t, step in enumerate(steps):
        np.testing.assert_array_equal(step.obs_after[:, ciw], per_channel[t])
        last = np.where(history[t] > 0, t, last)
        expected = np.minimum(t - last, CONTACT_RECENCY_CAP)
        np.testing.assert_array_equal(step.obs_after[:, wsc], expected)
    assert n_weeks == sc.horizon_weeks


def test_mask_allows_exactly_what_the_cap_window_allows(
    default_scenario: Scenario, random_run: tuple[Population, list[Step]]
) -> None:
    """A contact in week t is eligible iff opted in and, counting it, weeks t-W+1..t hold at
    most max_per_window contacts on its channel and max_contacts_per_window in total."""
    sc = default_scenario
    info_ch = ActionInfo.of(sc).channel
    _pop, steps = random_run
    history = _contact_history(sc, steps)
    width = sc.constraints.cap_window_weeks
    caps = np.array([sc.channels[c].max_per_window for c in sc.channels])
    opt_cols = _cols(sc, "opt_in_")
    zero = np.zeros(history.shape[1:], dtype=np.int64)
    for t, step in enumerate(steps):
        past = history[max(0, t - width + 1) : t].sum(axis=0) if t else zero  # W-1 weeks
        ok = (
            (step.obs[:, opt_cols] == 1)
            & (past + 1 <= caps)
            & (past.sum(axis=1, keepdims=True) + 1 <= sc.constraints.max_contacts_per_window)
        )
        for ch in range(len(sc.channels)):
            np.testing.assert_array_equal(
                step.mask[:, info_ch == ch], np.repeat(ok[:, ch : ch + 1], (info_ch == ch).sum(), 1)
            )


def test_one_contact_per_one_week_window_allows_weekly_contact(
    default_scenario: Scenario,
) -> None:
    sc = default_scenario.with_overrides(
        {
            "horizon_weeks": 8,
            "constraints.cap_window_weeks": 1,
            "constraints.max_contacts_per_window": 1,
            "channels.email.max_per_window": 1,
            "channels.email.optout_base": 0.0,
        }
    )
    email = _action(sc, "none", "email")
    n = 300
    _pop, steps = _run(sc, n, seed=41, policy=lambda w, p, r: np.full(n, email))
    opted = steps[0].obs[:, _col(sc, "opt_in_email")] == 1
    assert opted.sum() > 100
    for step in steps:
        assert (step.result.executed_action[opted] == email).all()


# ----------------------------------------------------------------------------- budget


def test_budget_caps_total_contact_cost(default_scenario: Scenario) -> None:
    n, per_customer = 2000, 0.01
    sc = default_scenario.with_overrides(
        {"horizon_weeks": 12, "constraints.budget_per_customer_week": per_customer}
    )
    info = ActionInfo.of(sc)
    wsc = _cols(sc, "weeks_since_contact_")
    pop, steps = _run(sc, n, seed=51)
    n_refused = 0
    for step in steps:
        r = step.result
        requested_ok = step.mask[np.arange(n), step.actions]
        assert r.contact_cost.sum() <= per_customer * n + 1e-9
        refused = r.budget_refused
        assert (r.executed_action[refused] == 0).all()
        assert (r.contact_cost[refused] == 0).all()
        # Only eligible, costly requests are refused; the rest run as requested.
        assert requested_ok[refused].all()
        assert (info.contact_cost[step.actions[refused]] > 0).all()
        assert not (refused & r.masked_action).any()
        kept = requested_ok & ~refused
        np.testing.assert_array_equal(r.executed_action[kept], step.actions[kept])
        # A refused customer was not contacted.
        np.testing.assert_array_equal(
            step.obs_after[refused][:, wsc],
            np.minimum(step.obs[refused][:, wsc] + 1, CONTACT_RECENCY_CAP),
        )
        n_refused += int(refused.sum())
    assert n_refused > 1000
    assert pop.budget_refused_total == n_refused


def test_budget_below_a_channel_cost_masks_that_channel(default_scenario: Scenario) -> None:
    n = 1000
    call_cost = default_scenario.channels["call_centre"].cost
    info = ActionInfo.of(default_scenario)
    calls = info.channel == default_scenario.channel_names.index("call_centre")
    for budget_total, masked in [(0.5 * call_cost, True), (2.0 * call_cost, False)]:
        sc = default_scenario.with_overrides(
            {"constraints.budget_per_customer_week": budget_total / n}
        )
        pop = Population.create(sc, n, np.random.default_rng(52))
        opted = pop.observe()[:, _col(sc, "opt_in_call_centre")] == 1
        assert opted.sum() > 100
        assert bool(pop.action_mask()[opted][:, calls].any()) is not masked


# ----------------------------------------------------------------------------- latent effects


def test_deeper_discounts_raise_purchases_in_the_offer_week(default_scenario: Scenario) -> None:
    sc = default_scenario
    n = 300_000
    rng = np.random.default_rng(61)
    pop = Population.create(sc, n, rng)
    d5, d20 = _action(sc, "discount_5", "email"), _action(sc, "discount_20", "email")
    eligible = pop.action_mask()[:, d5] & pop.oracle_state()["alive"]
    arm = np.random.default_rng(62).integers(0, 3, size=n)
    actions = np.zeros(n, dtype=np.int64)
    actions[eligible & (arm == 1)] = d5
    actions[eligible & (arm == 2)] = d20
    result = pop.step(actions)
    assert (result.executed_action == actions).all()
    means, ses = [], []
    for k in range(3):
        x = result.purchases[eligible & (arm == k)]
        assert x.size > 20_000
        means.append(x.mean())
        ses.append(x.std() / np.sqrt(x.size))
    none, five, twenty = means
    assert five - none > 4 * np.hypot(ses[0], ses[1]), means
    assert twenty - five > 4 * np.hypot(ses[1], ses[2]), means


def test_contacting_sleeping_dogs_makes_them_leave(default_scenario: Scenario) -> None:
    sc = default_scenario
    n = 20_000
    email = _action(sc, "none", "email")

    def weekly(_week: int, pop: Population, _rng: np.random.Generator) -> np.ndarray:
        return np.where(pop.action_mask()[:, email], email, 0)

    def never(_week: int, _pop: Population, _rng: np.random.Generator) -> np.ndarray:
        return np.zeros(n, dtype=np.int64)

    contacted, _ = _run(sc, n, seed=71, policy=weekly)
    control, _ = _run(sc, n, seed=71, policy=never)
    start = Population.create(sc, n, np.random.default_rng(71))  # the same initial customers
    seg = start.oracle_state()["segment"]
    opted = start.observe()[:, _col(sc, "opt_in_email")] == 1
    base = start.oracle_state()["alive"] & opted
    alive_contacted = contacted.oracle_state()["alive"]
    alive_control = control.oracle_state()["alive"]
    drop = {}
    for s, name in enumerate(sc.segment_names):
        sel = base & (seg == s)
        assert sel.sum() > 500
        drop[name] = alive_control[sel].mean() - alive_contacted[sel].mean()
    assert sc.segments["sleeping_dogs"].contact_churn_prob > 0
    assert drop["sleeping_dogs"] > 0.3
    # The effect is specific to the segment with a contact churn risk.
    assert drop["sleeping_dogs"] > 5 * max(abs(drop["mainstream"]), 0.01)


def test_fatigue_raises_opt_out_rate(default_scenario: Scenario) -> None:
    # Caps loose enough for weekly contact on email.
    sc = default_scenario.with_overrides(
        {"channels.email.max_per_window": 5, "constraints.max_contacts_per_window": 5}
    )
    n = 10_000
    email = _action(sc, "none", "email")
    email_ch = sc.channel_names.index("email")

    def every(k: int):
        def policy(week: int, pop: Population, _rng: np.random.Generator) -> np.ndarray:
            if week % k:
                return np.zeros(n, dtype=np.int64)
            return np.where(pop.action_mask()[:, email], email, 0)

        return policy

    rates, ses, fatigue = {}, {}, {}
    for k in (1, 4):
        pop, steps = _run(sc, n, seed=81, policy=every(k))
        contacts = sum(int((s.result.executed_action == email).sum()) for s in steps)
        outs = sum(int(s.result.opted_out.sum()) for s in steps)
        rates[k] = outs / contacts
        ses[k] = np.sqrt(rates[k] * (1 - rates[k]) / contacts)
        fatigue[k] = pop.oracle_state()["fatigue"][:, email_ch].max()
    assert rates[1] - rates[4] > 4 * np.hypot(ses[1], ses[4]), rates
    assert fatigue[1] > fatigue[4]


def test_seasonality_shapes_purchases(default_scenario: Scenario) -> None:
    sc = default_scenario
    n = 20_000
    assert sc.start_week == 1
    peaks = {p.multiplier: p for p in sc.seasonality}
    high, low = peaks[max(peaks)], peaks[min(peaks)]
    assert high.start_week <= high.end_week and low.start_week <= low.end_week
    high_weeks = range(high.start_week - 1, high.end_week)  # episode weeks (start_week 1)
    low_weeks = range(low.start_week - 1, low.end_week)

    def ratio(scenario: Scenario) -> float:
        _pop, steps = _run(scenario, n, seed=91, policy=lambda w, p, r: np.zeros(n, dtype=int))
        rate = np.array(
            [
                s.result.purchases[s.alive & s.present].sum() / (s.alive & s.present).sum()
                for s in steps
            ]
        )
        return rate[list(high_weeks)].mean() / rate[list(low_weeks)].mean()

    seasonal = ratio(sc)
    flat = ratio(sc.with_overrides({"seasonality": []}))
    assert seasonal > 1.4
    assert 0.8 < flat < 1.2
    expected = high.multiplier / low.multiplier
    assert seasonal / flat == pytest.approx(expected, rel=0.2)


def test_dead_customers_never_purchase(default_scenario: Scenario) -> None:
    sc = default_scenario.with_overrides({"purchase.reactivation_prob": 0.0})
    _pop, steps = _run(sc, 2000, seed=101)
    n_dead = n_died = 0
    for step, following in pairwise(steps):
        r = step.result
        dead = ~step.alive
        assert (r.purchases[dead] == 0).all()
        assert (r.revenue[dead] == 0).all()
        assert not r.dropped_out[dead].any()
        # With no reactivation the dead stay dead, and whoever died now is flagged.
        assert not following.alive[dead].any()
        np.testing.assert_array_equal(step.alive & ~following.alive, r.dropped_out)
        n_dead += int(dead.sum())
        n_died += int(r.dropped_out.sum())
    assert n_dead > 1000 and n_died > 50


def test_reactivation_brings_the_dead_back(default_scenario: Scenario) -> None:
    sc = default_scenario.with_overrides({"purchase.reactivation_prob": 1.0, "horizon_weeks": 4})
    n = 2000
    rng = np.random.default_rng(102)
    pop = Population.create(sc, n, rng)
    dead = ~pop.alive & pop.present
    assert dead.sum() > 200
    result = pop.step(np.zeros(n, dtype=np.int64))
    np.testing.assert_array_equal(pop.alive[dead], ~result.dropped_out[dead])
    assert result.purchases[dead].sum() > 0


def test_arrivals_join_with_a_first_purchase(default_scenario: Scenario) -> None:
    horizon, n = 12, 2000
    sc = default_scenario.with_overrides(
        {
            "horizon_weeks": horizon,
            "acquisition.arrival_share": 1.0,
            "acquisition.prospect_share": 0.0,
        }
    )
    rng = np.random.default_rng(111)
    pop = Population.create(sc, n, rng)
    arrival = pop.arrival_week.copy()
    assert (arrival >= 0).all() and (arrival < horizon).all()
    counts = np.bincount(arrival, minlength=horizon)
    assert (counts[counts > 0] > 0.5 * n / horizon).all() and (counts > 0).sum() >= horizon - 1
    opt_cols = _cols(sc, "opt_in_")
    prospect = STAGES.index("prospect")
    action_rng = np.random.default_rng(112)
    for week in range(horizon):
        obs, mask = pop.observe(), pop.action_mask()
        waiting = arrival > week
        arriving = arrival == week
        # Not yet arrived: only "no contact", nothing observed but the prospect stage.
        assert not mask[waiting][:, 1:].any()
        assert (obs[waiting][:, opt_cols] == 0).all()
        assert (pop.stage()[waiting | arriving] == prospect).all()
        assert not pop.oracle_state()["present"][waiting | arriving].any()
        result = pop.step(action_rng.integers(0, sc.n_actions, size=n))
        assert (result.purchases[waiting] == 0).all()
        assert (result.executed_action[waiting | arriving] == 0).all()
        assert (result.purchases[arriving] >= 1).all()
        assert (result.revenue[arriving] > 0).all()
        assert pop.oracle_state()["present"][arriving].all()
        after = pop.observe()
        assert (after[arriving, _col(sc, "recency_weeks")] == 0).all()
        assert (pop.stage()[arriving] == STAGES.index("new")).all()
    # Opt-ins granted on arrival follow the channels' opt-in probabilities.
    opt_share = pop.observe()[:, opt_cols].mean(axis=0)
    expected = np.array([sc.channels[c].opt_in_prob for c in sc.channels])
    np.testing.assert_allclose(opt_share, expected, atol=0.05)


def test_explicit_arrival_week_zero_arrives_in_the_first_step(
    default_scenario: Scenario,
) -> None:
    n = 500
    rng = np.random.default_rng(121)
    pop = Population.create(default_scenario, n, rng, arrival_week=np.zeros(n, dtype=int))
    assert not pop.oracle_state()["present"].any()
    assert not pop.action_mask()[:, 1:].any()
    result = pop.step(np.zeros(n, dtype=np.int64))
    assert (result.purchases >= 1).all()
    assert pop.oracle_state()["present"].all()
    with pytest.raises(ValueError, match="arrival_week"):
        Population.create(default_scenario, n, rng, arrival_week=np.zeros(n + 1, dtype=int))


# ----------------------------------------------------------------------------- stages


def test_stage_matches_reimplementation(default_scenario: Scenario) -> None:
    sc = default_scenario
    n = 3000
    rng = np.random.default_rng(131)
    action_rng = np.random.default_rng(132)
    pop = Population.create(sc, n, rng)
    names = observation_feature_names(sc)
    stage_cols = [names.index(f"stage_{s}") for s in STAGES]
    rec_col, ten_col = names.index("recency_weeks"), names.index("tenure_weeks")
    seen = np.zeros(len(STAGES), dtype=np.int64)
    # Reactivation tracked from the observable history alone.
    reactivated = np.zeros(n, dtype=bool)
    for _week in range(sc.horizon_weeks):
        obs = pop.observe()
        stage = pop.stage()
        # (a) from the population's own history fields
        expected = _expected_stage(sc, pop.recency, pop.tenure, pop.purchased_ever, pop.reactivated)
        np.testing.assert_array_equal(stage, expected)
        # (b) from the observation and the tracked flag
        purchased_ever = obs[:, stage_cols[STAGES.index("prospect")]] == 0
        from_obs = _expected_stage(
            sc, obs[:, rec_col], obs[:, ten_col], purchased_ever, reactivated
        )
        np.testing.assert_array_equal(stage, from_obs)
        np.testing.assert_array_equal(obs[:, stage_cols].argmax(axis=1), stage)
        assert (obs[:, stage_cols].sum(axis=1) == 1).all()
        seen += np.bincount(stage, minlength=len(STAGES))

        result = pop.step(action_rng.integers(0, sc.n_actions, size=n))
        bought = result.purchases > 0
        reactivated |= bought & purchased_ever & (obs[:, rec_col] > sc.stages.lapsed_weeks)
        after = pop.observe()
        reactivated &= after[:, rec_col] <= sc.stages.at_risk_weeks
        # Recency and tenure move as documented.
        present = pop.oracle_state()["present"]
        np.testing.assert_array_equal(
            after[:, rec_col], np.where(bought, 0, obs[:, rec_col] + present)
        )
        first = bought & ~purchased_ever
        np.testing.assert_array_equal(
            after[:, ten_col], np.where(first, 1, obs[:, ten_col] + present)
        )
    assert (seen > 0).all(), dict(zip(STAGES, seen, strict=True))


def test_new_customers_respond_by_the_new_customer_multiplier(default_scenario: Scenario) -> None:
    """Only customers whose first purchase is recent get the multiplier; with common random
    numbers the others' outcomes are unchanged and the new ones buy at least as much."""
    plain = default_scenario.with_overrides({"contact_response.new_customer_multiplier": 1.0})
    strong = default_scenario.with_overrides({"contact_response.new_customer_multiplier": 5.0})
    a = Population.create(plain, 20_000, np.random.default_rng(11))
    b = Population.create(strong, 20_000, np.random.default_rng(11))
    weeks = strong.contact_response.new_customer_weeks
    new = a.purchased_ever & (a.tenure < weeks)
    assert 0.05 < new.mean() < 0.5
    np.testing.assert_array_equal(b.uplift_multiplier(), np.where(new, 5.0, 1.0))
    np.testing.assert_array_equal(a.uplift_multiplier(), 1.0)
    email = _action(plain, "discount_10", "email")
    actions = np.where(a.action_mask()[:, email], email, 0)
    out_a, out_b = a.step(actions), b.step(actions)
    contacted_new = new & (actions > 0)
    np.testing.assert_array_equal(out_a.purchases[~new], out_b.purchases[~new])
    assert (out_b.purchases[contacted_new] >= out_a.purchases[contacted_new]).all()
    assert out_b.purchases[contacted_new].sum() > 1.2 * out_a.purchases[contacted_new].sum()
