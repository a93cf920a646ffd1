"""``cvm scenario``: list the built-in scenarios, check a scenario file, or show one.

A scenario error names the file, the key and the allowed values:

  $ cvm scenario check my.toml
  error: my.toml: key 'channels.sms.optout_base' = 1.5 is out of range; allowed [0.0, 1.0]
"""

from __future__ import annotations

import argparse
import json

HELP = "list, check or show scenarios"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=["list", "check", "show"],
        help="list: built-in names; check: validate; show: print as JSON",
    )
    parser.add_argument(
        "name", nargs="?", default="default", help="built-in name or TOML path (default: default)"
    )


def run(args: argparse.Namespace) -> int:
    from simulator.config import builtin_scenarios, load_scenario

    if args.action == "list":
        print("\n".join(builtin_scenarios()))
        return 0
    scenario = load_scenario(args.name)
    print(
        f"{args.name}: valid ({len(scenario.segments)} segments, {len(scenario.offers)} offers, "
        f"{len(scenario.channels)} channels, {scenario.n_actions} actions, "
        f"{scenario.horizon_weeks} weeks)"
    )
    if args.action == "show":
        print(json.dumps(scenario.model_dump(), indent=2))
    return 0
