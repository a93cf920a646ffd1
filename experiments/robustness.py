"""How do the policies' verdicts depend on the simulator's invented levers?

Every lever of the default scenario that no data pins down is moved, one at a time, to the
low and the high end of a plausible range, and the policies, trained on the default scenario
and unchanged, are evaluated in each world on the same held-out populations: the loyalty
bonus's retention multiplier and duration, the email channel's response (fitted on Hillstrom's
campaign, moved from the low end of what the data allow to a relative-uplift match, every
channel with it), the offers' uplift, the pull-forward share, the
sleeping dogs' share (taken from the mainstream segment) and contact churn, which purchases
carry BG/NBD's dropout, channel fatigue, the opt-out hazard and the channel costs (see
:data:`LEVERS`, each with why its range). The oracle is rebuilt for each world (it knows the
true world), so "share of oracle lift" stays the yardstick.

Learners come from ``bandit_vs_rl.py``'s run (``--source-run``, one bundle per training
seed, paired with held-out population ``1000 + seed``) or from bundle directories given with
``--bundles`` (each one evaluated on every population, named by its directory).

    .venv/bin/python experiments/bandit_vs_rl.py             # first: trains and saves bundles
    .venv/bin/python experiments/robustness.py               # then: evaluates them perturbed
    .venv/bin/python experiments/robustness.py --bundles runs/a runs/b --seeds 5

Writes ``experiments/results/<run name>.{json,md}`` (lift over no contact and rank of each
policy per world) and a tornado plot per policy (its lift at each lever's low and high end
around the default world's).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bandit_vs_rl import RESULTS, runs_dir  # the run layout that script writes

from cvm_rl.bundle import load_bundle
from cvm_rl.calibration.email_experiment import with_email_response
from cvm_rl.evaluation import PolicyResult, evaluate_policies, format_table, results_to_dict
from cvm_rl.policies import NoContactPolicy, Policy, RuleBasedPolicy
from cvm_rl.policies.greedy import GreedyUpliftPolicy
from cvm_rl.policies.oracle import OraclePolicy
from simulator.config import Scenario, load_scenario


@dataclass
class Args:
    source_run: str = "bandit_vs_rl__default__maskable_ppo-16M__5seeds"
    """Run name of ``bandit_vs_rl.py`` whose bundles to evaluate (unless ``bundles``)."""
    bundles: list[Path] = field(default_factory=list)
    """Bundle (or ``cvm train`` run) directories to evaluate instead, each on every seed."""
    seeds: int = 5
    eval_customers: int = 20_000
    greedy_customers: int = 20_000
    out: Path = RESULTS

    @property
    def run_name(self) -> str:
        if self.bundles:
            names = "-".join(b.name if b.name != "bundle" else b.parent.name for b in self.bundles)
            return f"robustness__levers__{names}__{self.seeds}seeds"
        return f"robustness__levers__{self.source_run}"


@dataclass(frozen=True)
class Lever:
    """One invented parameter: its two ends, as overrides of the default scenario."""

    name: str
    why: str  # where the range comes from
    low: tuple[str, dict[str, Any]]  # (label, overrides)
    high: tuple[str, dict[str, Any]]


def _scaled(base: Scenario, section: str, key: str, factor: float, cap: float | None = None):
    items = getattr(base, section)
    out = {}
    for name, value in items.items():
        scaled = getattr(value, key) * factor
        out[f"{section}.{name}.{key}"] = min(scaled, cap) if cap is not None else scaled
    return out


def _contact_response(base: Scenario, email: float) -> dict[str, float]:
    """Every channel's response with email's at ``email`` and the others' ratios to it kept."""
    scaled = with_email_response(base, email)
    return {f"channels.{name}.response": c.response for name, c in scaled.channels.items()}


def levers(base: Scenario) -> list[Lever]:
    """The invented levers and their plausible ranges (judgment calls, stated as such)."""
    dogs, mainstream = base.segments["sleeping_dogs"], base.segments["mainstream"]

    def dog_share(share: float) -> dict[str, Any]:
        moved = share - dogs.share
        return {
            "segments.sleeping_dogs.share": share,
            "segments.mainstream.share": mainstream.share - moved,
        }

    return [
        Lever(
            "loyalty bonus retention multiplier",
            "default 0.5 halves dropout; 1.0 is no retention effect at all, 0.3 a strong one. "
            "Studies of loyalty programmes find small or no effects on retention (Sharp & Sharp "
            "1997; Verhoef 2003; Leenheer et al. 2007): the default sits at the favourable end",
            ("x0.3", {"offers.loyalty_bonus.retention_multiplier": 0.3}),
            ("x1.0 (none)", {"offers.loyalty_bonus.retention_multiplier": 1.0}),
        ),
        Lever(
            "contact response",
            "email's response fitted on Hillstrom's campaign to the extra buyers per email "
            "(0.542, the data's interval 0.38 to 0.69); matching the data's relative uplift "
            "(+87 %) instead would take 6.52. Every channel moves with email",
            ("email 0.38 (data's low end)", _contact_response(base, 0.38)),
            ("email 6.52 (relative match)", _contact_response(base, 6.52)),
        ),
        Lever(
            "new-customer response",
            "new customers' uplift 3.67 times the others' in the default, as Hillstrom's "
            "newbies against the others (interval 1.5 to 12.3); 1.0 is no difference",
            ("x1.0 (none)", {"contact_response.new_customer_multiplier": 1.0}),
            ("x12.3 (data's high end)", {"contact_response.new_customer_multiplier": 12.3}),
        ),
        Lever(
            "loyalty bonus duration",
            "default 26 weeks; a quarter to a year",
            ("13 weeks", {"offers.loyalty_bonus.retention_weeks": 13}),
            ("52 weeks", {"offers.loyalty_bonus.retention_weeks": 52}),
        ),
        Lever(
            "offer uplift",
            "every offer's uplift halved or raised by half. A meta-analysis of promotional "
            "price elasticities (Bijmolt, van Heerde & Pieters 2005, mean about -3.6) implies "
            "+36 % sales for 10 % off and +72 % for 20 %: the default's discounts by email "
            "(+100 %, +186 % in the offer week) sit above it, the x0.5 end near it",
            ("x0.5", _scaled(base, "offers", "uplift", 0.5)),
            ("x1.5", _scaled(base, "offers", "uplift", 1.5)),
        ),
        Lever(
            "pull-forward share",
            "none of the added purchases pulled forward, or twice the default share (0.3). "
            "Van Heerde, Gupta & Wittink (2003) attribute about a third of a promotion's unit "
            "bump to purchase acceleration",
            ("x0", _scaled(base, "offers", "pull_forward_share", 0.0)),
            ("x2", _scaled(base, "offers", "pull_forward_share", 2.0, cap=1.0)),
        ),
        Lever(
            "sleeping-dog share",
            "default 10 % of customers, from none to 20 % (taken from the mainstream); "
            "Hillstrom's data allow a hurt share of 0 to 17 % (cvm calibrate-response)",
            ("0 %", dog_share(0.0)),
            ("20 %", dog_share(0.20)),
        ),
        Lever(
            "sleeping-dog contact churn",
            "default 8 % chance to leave per contact; a quarter to twice that (no published "
            "figure: a judgement call)",
            ("2 %", {"segments.sleeping_dogs.contact_churn_prob": 0.02}),
            ("16 %", {"segments.sleeping_dogs.contact_churn_prob": 0.16}),
        ),
        Lever(
            "dropout on offer-induced purchases",
            "BG/NBD's per-purchase dropout read as causal (default) or not",
            ("every purchase (default)", {}),
            ("base purchases only", {"purchase.dropout_on": "base_purchases"}),
        ),
        Lever(
            "channel fatigue",
            "every channel's fatigue sensitivity halved or doubled (a judgement call)",
            ("x0.5", _scaled(base, "channels", "fatigue_sensitivity", 0.5)),
            ("x2", _scaled(base, "channels", "fatigue_sensitivity", 2.0)),
        ),
        Lever(
            "opt-out hazard",
            "every channel's base opt-out chance per contact halved or doubled (email's "
            "default 0.4 % per send; email benchmark reports put unsubscribes at about 0.1 to "
            "0.5 % per campaign)",
            ("x0.5", _scaled(base, "channels", "optout_base", 0.5)),
            ("x2", _scaled(base, "channels", "optout_base", 2.0)),
        ),
        Lever(
            "channel costs",
            "every channel's cost per contact halved or doubled (defaults: 0.02 email, 0.08 "
            "SMS, 0.005 push, 3.0 call-centre, in the order of vendors' list prices)",
            ("x0.5", _scaled(base, "channels", "cost", 0.5)),
            ("x2", _scaled(base, "channels", "cost", 2.0)),
        ),
    ]


def world_label(lever: Lever, end: tuple[str, dict[str, Any]]) -> str:
    """The world of one end of a lever ("default" when the end is the default)."""
    label, overrides = end
    return f"{lever.name}: {label}" if overrides else "default"


def worlds(base: Scenario) -> dict[str, Scenario]:
    """The default world and every lever's two ends, as validated scenario copies."""
    out = {"default": base}
    for lever in levers(base):
        for end in (lever.low, lever.high):
            if end[1]:
                out[world_label(lever, end)] = base.with_overrides(end[1])
    return out


def learned_policies(args: Args) -> list[Policy | list[Policy]]:
    """The learners: one per training seed from ``bandit_vs_rl.py``'s run, or each bundle of
    ``--bundles`` on every population (renamed after its directory when names repeat)."""
    if args.bundles:
        from cvm_rl.cli.common import bundle_dir

        loaded = [load_bundle(bundle_dir(path), seed=0) for path in args.bundles]
        names = [b.policy.name for b in loaded]
        for bundle, path in zip(loaded, args.bundles, strict=True):
            if names.count(bundle.policy.name) > 1:
                bundle.policy.name = f"{bundle.policy.name} ({path.name})"
        return [b.policy for b in loaded]
    run = runs_dir(args.source_run)
    if not run.is_dir():
        raise SystemExit(f"{run}: no such run; train it with experiments/bandit_vs_rl.py first")
    learned: dict[str, list[Policy]] = {}
    for seed in range(args.seeds):
        for bundle_path in sorted(run.glob(f"*-seed{seed}/bundle")):
            bundle = load_bundle(bundle_path, seed=seed)
            learned.setdefault(bundle.policy.name, []).append(bundle.policy)
    missing = {k: len(v) for k, v in learned.items() if len(v) != args.seeds}
    if not learned or missing:
        raise SystemExit(f"{run}: expected {args.seeds} seeds per learner, found {missing}")
    return list(learned.values())


def parse_args(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    defaults = Args()
    parser.add_argument("--source-run", default=defaults.source_run)
    parser.add_argument("--bundles", type=Path, nargs="+", default=[])
    parser.add_argument("--seeds", type=int, default=defaults.seeds)
    parser.add_argument("--eval-customers", type=int, default=defaults.eval_customers)
    parser.add_argument("--greedy-customers", type=int, default=defaults.greedy_customers)
    parser.add_argument("--out", type=Path, default=defaults.out)
    return Args(**vars(parser.parse_args(argv)))


def run(args: Args) -> dict[str, Any]:
    started = time.perf_counter()
    base = load_scenario("default")
    learned = learned_policies(args)
    train_seeds = list(range(args.seeds))
    eval_seeds = [1000 + s for s in train_seeds]
    greedy: list[Policy] = [
        GreedyUpliftPolicy.fit_from_simulation(base, n_customers=args.greedy_customers, seed=s)
        for s in train_seeds
    ]
    tables: dict[str, list[PolicyResult]] = {}
    for label, world in worlds(base).items():
        policies: list[Policy | list[Policy]] = [
            NoContactPolicy(base),
            RuleBasedPolicy(base),
            greedy,
            *learned,
            OraclePolicy(world),
        ]
        tables[label] = evaluate_policies(
            policies, world, n_customers=args.eval_customers, seeds=eval_seeds
        )
        print(f"## {label}\n\n{format_table(tables[label])}\n", flush=True)
    lifts = lift_table(tables)
    ranks = rank_table(tables)
    print(lifts, "\n\n", ranks, sep="")
    args.out.mkdir(parents=True, exist_ok=True)
    plot = tornado_plot(tables, levers(base), args.out / args.run_name / "tornado.png")
    total_seconds = round(time.perf_counter() - started, 1)
    payload: dict[str, Any] = {
        "run_name": args.run_name,
        "source": [str(b) for b in args.bundles] or args.source_run,
        "eval_seeds": eval_seeds,
        "eval_customers": args.eval_customers,
        "levers": [
            {"name": lv.name, "why": lv.why, "low": lv.low[0], "high": lv.high[0]}
            for lv in levers(base)
        ],
        "total_seconds": total_seconds,
        "worlds": {label: results_to_dict(results) for label, results in tables.items()},
    }
    (args.out / f"{args.run_name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    ranges = "\n".join(
        f"- **{lv.name}**: {lv.low[0]} / {lv.high[0]} ({lv.why})" for lv in levers(base)
    )
    body = "\n\n".join(f"### {label}\n\n{format_table(r)}" for label, r in tables.items())
    command = "experiments/robustness.py" + (
        " --bundles " + " ".join(str(b) for b in args.bundles) if args.bundles else ""
    )
    (args.out / f"{args.run_name}.md").write_text(
        f"# {args.run_name}\n\n`.venv/bin/python {command} --seeds {args.seeds}` "
        f"({args.eval_customers:,} held-out customers per seed, seeds {eval_seeds}); policies "
        "trained on 'default', evaluated unchanged; the oracle knows each world. Total time "
        f"{total_seconds / 60:.1f} min.\n\n## The levers and their ranges\n\n"
        f"{ranges}\n\n## Lift over no contact by world (paired 95% CI over the populations)"
        f"\n\n{lifts}\n\n## Rank by value per customer (1 = best; the oracle left out)\n\n"
        f"{ranks}\n\nPlot: [tornado.png]({args.run_name}/{plot.name})\n\n"
        f"## Every world\n\n{body}\n"
    )
    print(f"wrote {args.out / args.run_name}.{{json,md}}")
    return payload


def _by_name(results: list[PolicyResult]) -> dict[str, PolicyResult]:
    return {r.policy: r for r in results}


def lift_table(tables: dict[str, list[PolicyResult]]) -> str:
    """Rows = worlds, columns = policies: lift over no contact with its paired CI."""
    first = next(iter(tables.values()))
    names = [r.policy for r in first if r.policy != "no_contact"]
    lines = ["| world | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for world, results in tables.items():
        by_name = _by_name(results)
        cells = []
        for name in names:
            mean, low, high = by_name[name].lift_interval(by_name["no_contact"])
            cells.append(f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]")
        lines.append(f"| {world} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rank_table(tables: dict[str, list[PolicyResult]]) -> str:
    """Rows = worlds, columns = policies but the oracle: rank by mean value per customer."""
    first = next(iter(tables.values()))
    names = [r.policy for r in first if r.policy != "oracle"]
    lines = ["| world | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for world, results in tables.items():
        by_name = _by_name(results)
        order = sorted(names, key=lambda n: -by_name[n].mean("value"))
        lines.append(f"| {world} | " + " | ".join(str(order.index(n) + 1) for n in names) + " |")
    return "\n".join(lines)


def tornado_plot(
    tables: dict[str, list[PolicyResult]], all_levers: list[Lever], path: Path
) -> Path:
    """One panel per policy (the oracle and no contact left out): for each lever, a bar from
    the policy's lift over no contact at one end of the lever to the other, around the
    default world's lift (the vertical line); levers sorted by the widest swing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def lift(world: str, name: str) -> float:
        by_name = _by_name(tables[world])
        return by_name[name].lift_interval(by_name["no_contact"])[0]

    names = [r.policy for r in tables["default"] if r.policy not in ("no_contact", "oracle")]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.5), sharey=True)
    order = sorted(
        all_levers,
        key=lambda lv: max(
            abs(lift(world_label(lv, lv.high), n) - lift(world_label(lv, lv.low), n)) for n in names
        ),
    )
    for ax, name in zip(axes if len(names) > 1 else [axes], names, strict=True):
        centre = lift("default", name)
        for row, lever in enumerate(order):
            low = lift(world_label(lever, lever.low), name)
            high = lift(world_label(lever, lever.high), name)
            ax.barh(row, low - centre, left=centre, color="#4C72B0", height=0.6)
            ax.barh(row, high - centre, left=centre, color="#DD8452", height=0.6)
        ax.axvline(centre, color="black", lw=0.8)
        ax.axvline(0.0, color="grey", lw=0.8, ls=":")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("lift over no contact, per customer")
    axes_list = axes if len(names) > 1 else [axes]
    axes_list[0].set_yticks(range(len(order)), [lv.name for lv in order], fontsize=8)
    fig.legend(["default", "no contact", "low end", "high end"], loc="lower center", ncol=4)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    run(parse_args())


if __name__ == "__main__":
    main()
