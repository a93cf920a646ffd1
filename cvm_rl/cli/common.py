"""What the ``cvm`` commands share: the error type, reference policies, option parsers.

Its own module so that command modules (``cvm logs``, ``cvm serve``) and ``cvm_rl.cli`` import
one definition without importing each other.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from cvm_rl.bundle import MANIFEST_FILE
from cvm_rl.policies import NoContactPolicy, Policy, RandomPolicy, RuleBasedPolicy
from cvm_rl.policies.greedy import GreedyUpliftPolicy
from cvm_rl.policies.oracle import OraclePolicy
from simulator.config import Scenario

REFERENCE_POLICIES: dict[str, Callable[[Scenario], Policy]] = {
    "no_contact": NoContactPolicy,
    "random": RandomPolicy,
    "rules": RuleBasedPolicy,
    # Fitted on a logged randomized campaign drawn with training seed 0 (held-out seeds are
    # 1000 and up), so it never sees the evaluation populations.
    "greedy": lambda scenario: GreedyUpliftPolicy.fit_from_simulation(scenario, seed=0),
    "oracle": OraclePolicy,
}
"""Policies ``--policies`` can name: baselines, the greedy uplift model, the oracle."""
BASELINES: tuple[str, ...] = ("no_contact", "random", "rules")


class CliError(ValueError):
    """A bad command-line value; printed as one line naming the option."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def bundle_dir(path: str) -> Path:
    """A bundle directory, or a ``cvm train`` run directory holding one."""
    root = Path(path)
    return root / "bundle" if (root / "bundle" / MANIFEST_FILE).is_file() else root
