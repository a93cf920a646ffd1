"""``cvm calibrate-response``: fit the email channel's response on a randomized campaign.

Reads the Hillstrom MineThatData email campaign (2008; 64,000 customers randomized to a men's
email, a women's email or no email; the copy shipped with cvm-rl by default), prints each arm's
two-week conversion and spend, each email's uplift over no email with 95 % intervals, how the
uplift varies with recency, spend history, newness and category match (a logistic regression
with treatment interactions), and the share of customers whom email hurts; ``--out`` writes an
``[email_response]`` TOML fragment. With ``--scenario``, it also runs the campaign in the
simulator and fits the scenario's ``channels.email.response`` so that one plain email moves
conversion as it did in the data (``--match absolute``: the arms' difference, or
``relative``: their ratio), with new customers responding as many times more strongly as the
data's newbies did (``contact_response.new_customer_multiplier``), and adds both to the
fragment.

  cvm calibrate-response --scenario default --out email_response.toml
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cvm_rl.cli.common import CliError, positive_int

NAME = "calibrate-response"
HELP = "fit the email response on the Hillstrom randomized campaign"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="PATH",
        help="campaign CSV (plain or .gz) in the Hillstrom layout (default: the shipped copy)",
    )
    parser.add_argument(
        "--any-checksum",
        action="store_true",
        help="accept a --data file whose sha256 differs from the published data (another "
        "campaign in the same layout)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="PATH",
        help="write a TOML [email_response] fragment",
    )
    parser.add_argument(
        "--scenario",
        default=None,
        metavar="NAME_OR_PATH",
        help="also fit this scenario's channels.email.response by simulating the campaign",
    )
    parser.add_argument(
        "--match",
        choices=("absolute", "relative"),
        default="absolute",
        help="which conversion uplift the simulated campaign reproduces: the arms' difference "
        "(extra buyers per email) or their ratio (default: %(default)s)",
    )
    parser.add_argument(
        "--customers",
        type=positive_int,
        default=200_000,
        metavar="N",
        help="simulated population for --scenario (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the hurt share's bootstrap and of the simulated campaign",
    )
    parser.add_argument(
        "--n-bootstrap",
        type=positive_int,
        default=1000,
        metavar="N",
        help="coefficient draws for the hurt share's interval (>= 2)",
    )


def _interval(interval: object, scale: float = 1.0, unit: str = "") -> str:
    low, high, estimate = (scale * getattr(interval, key) for key in ("low", "high", "estimate"))
    return f"{estimate:.3g}{unit} [{low:.3g}, {high:.3g}]"


def run(args: argparse.Namespace) -> int:
    """Load, fit, print the tables, optionally write the fragment."""
    from cvm_rl.calibration import CalibrationError
    from cvm_rl.calibration.response import (
        ANY_EMAIL,
        CONTROL,
        fit_email_response,
        write_response_fragment,
    )
    from cvm_rl.datasets import HILLSTROM_SHA256, DatasetError, hillstrom_email

    if args.n_bootstrap < 2:
        raise CliError(f"--n-bootstrap: expected at least 2, got {args.n_bootstrap}")
    try:
        data = hillstrom_email(
            args.data, expected_sha256=None if args.any_checksum else HILLSTROM_SHA256
        )
        fit = fit_email_response(data, seed=args.seed, n_bootstrap=args.n_bootstrap)
    except (DatasetError, CalibrationError, OSError) as exc:
        raise CliError(f"--data: {' '.join(str(exc).splitlines())}") from None
    channel_fit = None
    if args.scenario is not None:
        from cvm_rl.calibration.email_experiment import (
            EmailExperiment,
            conversion_uplift,
            fit_email_channel_response,
            with_email_response,
        )
        from simulator.config import ScenarioError, load_scenario

        try:
            scenario = load_scenario(args.scenario)
        except ScenarioError as exc:
            raise CliError(f"--scenario: {exc}") from None
        # New customers respond more strongly (the data's newbies); the scenario takes that
        # ratio first, and the channel's response is then fitted with it in place.
        new_customer_multiplier = fit.newbie_uplift_ratio.estimate
        scenario = scenario.with_overrides(
            {"contact_response.new_customer_multiplier": new_customer_multiplier}
        )
        target = conversion_uplift(fit.uplift(ANY_EMAIL), args.match).estimate
        design = EmailExperiment(n_customers=args.customers, seed=args.seed)
        try:
            channel_fit = fit_email_channel_response(scenario, target, design, moment=args.match)
        except CalibrationError as exc:
            raise CliError(f"--scenario: {exc}") from None
    try:
        if args.out is not None:
            write_response_fragment(
                fit,
                args.out,
                email_response=None
                if channel_fit is None
                else {
                    name: channel.response
                    for name, channel in with_email_response(
                        scenario, channel_fit.response
                    ).channels.items()
                },
                new_customer_multiplier=None
                if channel_fit is None
                else fit.newbie_uplift_ratio.estimate,
            )
    except OSError as exc:
        raise CliError(f"--out: {exc}") from None

    print(f"{fit.n_customers} customers from {fit.source} (sha256 {fit.sha256[:12]}...)")
    print("two weeks after the campaign, 95 % intervals:")
    print(f"{'arm':<14} {'n':>6}  {'conversion %':<22} {'spend $/customer':<22} uplift vs no email")
    for arm in fit.arms:
        uplift = (
            ""
            if arm.arm == CONTROL
            else (
                f"conversion {_interval(fit.uplift(arm.arm).conversion, 100, ' pp')}, "
                f"relative {_interval(fit.uplift(arm.arm).relative_conversion, 100, ' %')}, "
                f"spend {_interval(fit.uplift(arm.arm).spend, 1, ' $')}"
            )
        )
        print(
            f"{arm.arm:<14} {arm.n:>6}  {_interval(arm.conversion, 100):<22} "
            f"{_interval(arm.spend):<22} {uplift}"
        )
    print(
        "spend per converter $: "
        + ", ".join(f"{arm.arm} {_interval(arm.spend_per_converter)}" for arm in fit.arms)
    )
    print(
        f"logistic regression of conversion (log-likelihood {fit.log_likelihood:.2f}; recency "
        f"centred on {fit.recency_mean:.3g} months, log history on {fit.log_history_mean:.3g}):"
    )
    print(f"{'term':<22} {'estimate':>9} {'s.e.':>8} {'z':>6}  95 % interval")
    for c in fit.coefficients:
        print(
            f"{c.name:<22} {c.estimate:>9.4f} {c.std_error:>8.4f} {c.z:>6.2f}  "
            f"[{c.low:.4f}, {c.high:.4f}]"
        )
    print(
        f"newbies (first purchase in the last 12 months): relative conversion uplift "
        f"{_interval(fit.newbie_uplift.relative_conversion, 100, ' %')}; others "
        f"{_interval(fit.established_uplift.relative_conversion, 100, ' %')}; ratio "
        f"{_interval(fit.newbie_uplift_ratio)}"
    )
    for name, share in fit.hurt_share:
        print(f"email hurts ({name}): {_interval(share, 100, ' %')} of customers")
    verdict = (
        "distinguishable from 0"
        if fit.hurt_share_distinguishable_from_zero
        else "not distinguishable from 0"
    )
    print(
        f"hurt share: {verdict}; the data allow up to {100 * fit.hurt().high:.3g} % "
        f"({fit.n_bootstrap} parametric bootstrap draws, seed {fit.seed})"
    )
    if channel_fit is not None:
        sim = channel_fit.simulated
        print(
            f"scenario {args.scenario!r}: contact_response.new_customer_multiplier = "
            f"{fit.newbie_uplift_ratio.estimate:.4g}, channels.email.response = "
            f"{channel_fit.response:.4g} "
            f"reproduces the {args.match} conversion uplift of one email "
            f"({channel_fit.evaluations} simulated campaigns of {sim.n_population:,} customers, "
            f"{sim.n_eligible:,} eligible): simulated conversion uplift "
            f"{_interval(sim.uplift.conversion, 100, ' pp')}, relative "
            f"{_interval(sim.uplift.relative_conversion, 100, ' %')}, spend relative "
            f"{_interval(sim.uplift.relative_spend, 100, ' %')}"
        )
    if args.out is not None:
        print(f"wrote {args.out}")
    return 0
