"""How much of the oracle's lift can observable rules reach? A diagnostic for the RL gap.

Evaluates a few hand-written campaigns next to the default rules on the same held-out
populations as ``bandit_vs_rl.py`` (seeds 1000..1004, 20,000 customers each). If a simple
rule beats the trained RL policies, the information in the observations is not what limits
them; the learner is.

    .venv/bin/python experiments/hand_rules.py

Writes ``experiments/results/hand_rules__<scenario>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from cvm_rl.evaluation import evaluate_policies, format_table, results_to_dict
from cvm_rl.policies import NoContactPolicy, Policy, Rule, RuleBasedPolicy
from simulator.config import Scenario, load_scenario

RESULTS = Path(__file__).parent / "results"
ENGAGED = ("new", "active", "reactivated", "at_risk")


@dataclass
class Args:
    scenario: str = "default"
    seeds: int = 5
    eval_customers: int = 20_000
    out: Path = RESULTS

    @property
    def run_name(self) -> str:
        return f"hand_rules__{self.scenario}"


def campaigns(scenario: Scenario) -> list[Policy]:
    def named(name: str, rules: list[Rule], gap: int) -> Policy:
        policy = RuleBasedPolicy(scenario, rules=rules, min_weeks_between_contacts=gap)
        policy.name = name
        return policy

    loyalty = [Rule(stage, "loyalty_bonus", ("email",)) for stage in ENGAGED]
    return [
        NoContactPolicy(scenario),
        RuleBasedPolicy(scenario),
        named("loyalty_email_every_4w", loyalty, 4),
        named("loyalty_email_every_8w", loyalty, 8),
        named("loyalty_email_every_13w", loyalty, 13),
        named("newsletter_email_every_2w", [Rule(s, "none", ("email",)) for s in ENGAGED], 2),
    ]


def main() -> None:
    defaults = Args()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default=defaults.scenario)
    parser.add_argument("--seeds", type=int, default=defaults.seeds)
    parser.add_argument("--eval-customers", type=int, default=defaults.eval_customers)
    parser.add_argument("--out", type=Path, default=defaults.out)
    args = Args(**vars(parser.parse_args()))
    scenario = load_scenario(args.scenario)
    seeds = [1000 + s for s in range(args.seeds)]
    results = evaluate_policies(
        campaigns(scenario), scenario, n_customers=args.eval_customers, seeds=seeds
    )
    table = format_table(results, reference=None)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"run_name": args.run_name, "customers": args.eval_customers, "seeds": seeds}
    payload |= results_to_dict(results, reference=None)
    (args.out / f"{args.run_name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.out / f"{args.run_name}.md").write_text(
        f"# {args.run_name}\n\n`.venv/bin/python experiments/hand_rules.py`: "
        f"{args.eval_customers} held-out customers x {scenario.horizon_weeks} weeks, seeds "
        f"{seeds} (the populations of `bandit_vs_rl.py`).\n\n{table}\n"
    )
    print(f"wrote {args.out / args.run_name}.{{json,md}}")


if __name__ == "__main__":
    main()
