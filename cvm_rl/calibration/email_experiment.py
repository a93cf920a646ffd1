"""Hillstrom's experiment run in the simulator, and the email response that reproduces it.

The simulated experiment mirrors the campaign: a population simulated for a burn-in without
contact, then the customers who bought in the last ``eligible_recency_weeks`` and can receive
email randomized 50/50 to a plain email (``none@email``: the scenario's first offer by email,
as Hillstrom's emails carried no discount) or nothing, then ``window_weeks`` with no further
contact. Conversion (any purchase) and spend per customer are compared per arm.

The two businesses differ: a music retailer's recent buyers (CDNOW-calibrated) buy about ten
times as often in two weeks as Hillstrom's apparel customers, so the data's effect of one email
cannot carry over both as an absolute and as a relative uplift. :func:`fit_email_channel_response`
finds the email channel's ``response`` (the multiplier of every offer's uplift by email; every
other channel's is scaled with it, so how channels compare stays an assumption of the scenario)
at which the simulated experiment reproduces one of them: the ``absolute`` conversion uplift (the
arms' difference: extra buyers per email sent, the default) or the ``relative`` one (the
arms' ratio). It is a one-parameter simulated-moments fit: Brent's root finder over a fixed
population, whose per-customer random streams keep every draw common across candidate values,
so the simulated uplift moves smoothly with the parameter. The other moment, and spend, are
left free as checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import brentq

from cvm_rl.calibration.errors import CalibrationError
from cvm_rl.calibration.response import ArmSummary, ArmUplift, compare_arms, summarize_arm
from cvm_rl.ope.intervals import Interval
from cvm_rl.rollout import Decisions, rollout
from simulator.config import Scenario
from simulator.observation import observation_feature_names

EMAIL_ACTION = "none@email"
NEWBIE_WEEKS = 52
"""Hillstrom's "newbie": a first purchase within the last twelve months."""
ASSIGNMENT_STREAM = 0x6A11  # tags the assignment's seed sequence apart from the population's


@dataclass(frozen=True)
class EmailExperiment:
    """The simulated campaign's design (defaults: Hillstrom's two-week window)."""

    n_customers: int = 200_000
    burn_in_weeks: int = 8
    window_weeks: int = 2
    eligible_recency_weeks: int = 52
    seed: int = 0
    """Seeds the population and, through a generator of its own, the 50/50 assignment."""


@dataclass(frozen=True)
class SimulatedExperiment:
    n_population: int
    n_eligible: int
    control: ArmSummary
    email: ArmSummary
    uplift: ArmUplift
    email_refused: int
    """Customers randomized to email whose email the environment did not send."""
    new_customer_uplift: ArmUplift
    """Among customers whose first purchase is less than a year old (Hillstrom's newbies)."""
    established_uplift: ArmUplift
    """Among the others."""


def simulate_email_experiment(scenario: Scenario, design: EmailExperiment) -> SimulatedExperiment:
    """Burn-in, randomize eligible customers to ``none@email`` or nothing, quiet weeks."""
    names = scenario.action_names()
    if EMAIL_ACTION not in names:
        raise CalibrationError(
            f"scenario {scenario.name!r} has no action {EMAIL_ACTION!r} (an offer 'none' and a "
            "channel 'email'): the Hillstrom experiment needs a plain email"
        )
    email_action = names.index(EMAIL_ACTION)
    # The assignment's own stream: a generator seeded like the population's would draw the
    # very uniforms that picked each customer's segment, and confound the arms with it.
    rng = np.random.default_rng([ASSIGNMENT_STREAM, design.seed])
    state: dict[str, np.ndarray] = {}
    features = observation_feature_names(scenario)
    recency_col, prospect_col = features.index("recency_weeks"), features.index("stage_prospect")
    tenure_col = features.index("tenure_weeks")

    def decide(obs: np.ndarray, mask: np.ndarray, week: int) -> Decisions:
        n = len(obs)
        actions = np.zeros(n, dtype=np.int64)
        if week == design.burn_in_weeks:
            bought = obs[:, recency_col] < design.eligible_recency_weeks
            eligible = bought & mask[:, email_action] & (obs[:, prospect_col] == 0)
            treated = eligible & (rng.random(n) < 0.5)
            state["eligible"], state["treated"] = eligible, treated
            state["new"] = obs[:, tenure_col] < NEWBIE_WEEKS
            actions[treated] = email_action
        return Decisions(actions, np.ones(n))

    n = design.n_customers
    purchases, revenue = np.zeros(n), np.zeros(n)
    refused = 0
    last = design.burn_in_weeks + design.window_weeks
    for t in rollout(decide, scenario, n_customers=n, seed=design.seed, weeks=last):
        if t.week == design.burn_in_weeks:
            refused = int(np.count_nonzero(state["treated"] & (t.executed != email_action)))
        if t.week >= design.burn_in_weeks:
            purchases += t.next_info["purchases"]
            revenue += t.next_info["revenue"]
    eligible, treated, new = state["eligible"], state["treated"], state["new"]
    control = eligible & ~treated
    conversion = (purchases > 0).astype(np.float64)

    def within(name: str, group: np.ndarray) -> ArmUplift:
        return compare_arms(name, conversion, revenue, treated & group, control & group)

    return SimulatedExperiment(
        n_population=n,
        n_eligible=int(eligible.sum()),
        control=summarize_arm("no email", conversion[control], revenue[control]),
        email=summarize_arm(EMAIL_ACTION, conversion[treated], revenue[treated]),
        uplift=compare_arms(EMAIL_ACTION, conversion, revenue, treated, control),
        email_refused=refused,
        new_customer_uplift=within("new customers", new),
        established_uplift=within("others", ~new),
    )


Moment = Literal["absolute", "relative"]
MOMENTS: tuple[str, ...] = ("absolute", "relative")


def conversion_uplift(uplift: ArmUplift, moment: Moment) -> Interval:
    """The arms' difference (``absolute``) or ratio minus one (``relative``) of conversion."""
    return uplift.conversion if moment == "absolute" else uplift.relative_conversion


@dataclass(frozen=True)
class EmailChannelFit:
    """``channels.email.response`` at which the simulated conversion uplift of one plain email
    (``moment``: the arms' difference or ratio) equals ``target``."""

    response: float
    moment: str
    target: float
    simulated: SimulatedExperiment
    evaluations: int


def with_email_response(scenario: Scenario, response: float) -> Scenario:
    """The scenario with email's ``response`` set and every other channel's scaled by the
    same factor: how the channels compare stays the scenario's assumption. (A scenario whose
    email response is 0 keeps the others' as they are.)"""
    current = scenario.channels["email"].response
    factor = response / current if current > 0 else 1.0
    return scenario.with_overrides(
        {
            f"channels.{name}.response": float(response)
            if name == "email"
            else channel.response * factor
            for name, channel in scenario.channels.items()
        }
    )


def fit_email_channel_response(
    scenario: Scenario,
    target: float,
    design: EmailExperiment = EmailExperiment(),
    *,
    moment: Moment = "absolute",
    bracket: tuple[float, float] = (0.0, 40.0),
    xtol: float = 1e-3,
) -> EmailChannelFit:
    """Solve: simulated conversion uplift of ``none@email`` over nothing (``moment``) =
    ``target`` (a fraction: 0.005 is half a percentage point, or a 0.5 relative uplift)."""
    if moment not in MOMENTS:
        raise CalibrationError(f"moment must be one of {MOMENTS}, got {moment!r}")
    if not np.isfinite(target) or target <= 0:
        raise CalibrationError(f"target must be a finite number > 0, got {target}")
    evaluations = 0

    def gap(response: float) -> float:
        nonlocal evaluations
        evaluations += 1
        sim = simulate_email_experiment(with_email_response(scenario, response), design)
        return conversion_uplift(sim.uplift, moment).estimate - target

    low, high = bracket
    gap_low, gap_high = gap(low), gap(high)
    if gap_low > 0 or gap_high < 0:
        raise CalibrationError(
            f"no email response in [{low}, {high}] gives a {moment} conversion uplift of "
            f"{target:.4g}: the simulated uplift runs from {gap_low + target:.4g} to "
            f"{gap_high + target:.4g}"
        )
    response = float(brentq(gap, low, high, xtol=xtol))
    simulated = simulate_email_experiment(with_email_response(scenario, response), design)
    return EmailChannelFit(
        response=response,
        moment=moment,
        target=target,
        simulated=simulated,
        evaluations=evaluations + 1,
    )
