"""Candidate policies against a log: the checks that they can be evaluated on it, and their
action distributions on its rows.

When every logged row holds the logger's whole distribution, the logger itself is evaluated
as one more candidate from those probabilities (:data:`LOGGER_CHECK`): a self-check whose lift
must be about 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cvm_rl.logs.arrays import LoggedDecisions
from cvm_rl.ope.inputs import CandidateError
from cvm_rl.policies.base import Policy

LOGGER_CHECK = "logger (self-check)"
"""The candidate made of the logger's own logged probabilities (a lift of about 0 expected)."""


def schema_mismatch(
    features: Sequence[str],
    actions: Sequence[str],
    log_features: Sequence[str],
    log_actions: Sequence[str],
) -> str | None:
    """The first difference between a policy's schema and the log's, in words (None if the
    same)."""
    for what, mine, theirs in (
        ("feature", list(features), list(log_features)),
        ("action", list(actions), list(log_actions)),
    ):
        if mine == theirs:
            continue
        for i, (a, b) in enumerate(zip(mine, theirs, strict=False)):
            if a != b:
                return f"{what} {i} is {a!r}, the log's is {b!r}"
        return f"it has {len(mine)} {what}s, the log has {len(theirs)}"
    return None


def check_candidates(decisions: LoggedDecisions, candidates: Mapping[str, Policy]) -> None:
    """Candidates that can be evaluated on the rows of ``decisions`` (CandidateError naming
    the first that cannot: none at all, the self-check's name taken, a policy reading the
    simulator's latent state, other features or actions than the log's)."""
    if not candidates:
        raise CandidateError("no candidate policy to evaluate")
    for name, policy in candidates.items():
        if name == LOGGER_CHECK:
            raise CandidateError(f"{name!r} is the name of the logger's self-check; rename it")
        if getattr(policy, "uses_latent_state", False):
            raise CandidateError(
                f"{name}: reads the simulator's latent state, which a log does not hold; it "
                "cannot be evaluated off-policy"
            )
        mismatch = schema_mismatch(
            policy.feature_names,
            policy.scenario.action_names(),
            decisions.feature_names,
            decisions.action_names,
        )
        if mismatch is not None:
            raise CandidateError(
                f"{name}: its features or actions differ from the log's ({mismatch})"
            )


def _candidate_distribution(name: str, policy: Policy, obs: np.ndarray, mask: np.ndarray) -> Any:
    try:
        return policy.action_probabilities(obs, mask)
    except ValueError as exc:
        raise CandidateError(f"{name}: {exc}") from None


def candidate_distributions(
    names: Sequence[str],
    candidates: Mapping[str, Policy],
    decisions: LoggedDecisions,
    logging_probabilities: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """Each candidate's (N, A) distribution on the rows; the self-check's is the logger's."""
    out = {}
    for name in names:
        if name == LOGGER_CHECK:
            assert logging_probabilities is not None
            out[name] = logging_probabilities
        else:
            out[name] = _candidate_distribution(
                name, candidates[name], decisions.data.obs, decisions.data.mask
            )
    return out
