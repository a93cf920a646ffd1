"""How much an off-policy estimate can be trusted, read from the importance weights alone.

Weights w = pi(a | x) / pi_0(a | x) of the logged actions (single step) or their products
along a trajectory (sequential: pass them to :func:`diagnose_weights`). Reported:

* effective sample size ESS = (sum w)^2 / sum w^2 (Kong 1992), absolute and as a share of n:
  roughly how many rows an equally weighted sample would need to be as informative;
* the weights' quantiles (50, 90, 99, 99.9 %) and maximum: a few huge weights make IPS
  estimates and their intervals unstable;
* the mean weight, whose expectation is 1 when the propensities are right and the target
  stays within the logger's support;
* the share of logged decisions whose action the target never takes (weight 0): rows that
  only DM-type terms use;
* when the logger's full probabilities are given, the share of the target's probability mass
  on actions the logger never takes in that context: that part of the value no estimator
  using only the weights can see (IPS is biased; DR relies on its reward model there).

Each poor value adds a plain-language warning; the thresholds are the constants below.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .base import check_action, check_probabilities, check_pscore, check_same_length

# Fewer effective rows than this share of n: the estimate rests on a handful of rows.
ESS_SHARE_WARNING = 0.01
# A single row weighing more than this many average rows dominates IPS-type estimates.
MAX_WEIGHT_WARNING = 100.0
# More than this share of the target's mass on actions the logger never takes: the value
# there is unobserved.
UNSUPPORTED_MASS_WARNING = 0.05
# More than this share of logged decisions unused by the importance-weighted terms.
ZERO_WEIGHT_SHARE_WARNING = 0.5
# The mean weight is flagged when it is both this far from 1 and further than
# MEAN_WEIGHT_Z standard errors (so that small samples are not flagged for noise).
MEAN_WEIGHT_TOLERANCE = 0.1
MEAN_WEIGHT_Z = 4.0
# A logged propensity may differ from the logger's probability table by this much.
PSCORE_TOLERANCE = 1e-6

WEIGHT_QUANTILES = (0.5, 0.9, 0.99, 0.999)


@dataclass(frozen=True)
class WeightDiagnostics:
    """Summary of importance weights; ``warnings`` explains every value judged poor."""

    n: int
    ess: float
    ess_share: float
    mean_weight: float
    weight_quantiles: dict[str, float]  # "50%", "90%", "99%", "99.9%"
    max_weight: float
    zero_weight_share: float
    unsupported_mass_share: float | None = None
    warnings: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (floats, strings, a list of warnings)."""
        out = asdict(self)
        out["warnings"] = list(self.warnings)
        return out


def _percent(share: float) -> str:
    return f"{100 * share:.3g} %"


def diagnose_weights(
    weights: np.ndarray,
    *,
    unsupported_mass_share: float | None = None,
) -> WeightDiagnostics:
    """Diagnostics of any non-negative importance weights (single-step or trajectory)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or not len(w):
        raise ValueError(f"weights must be a non-empty 1-D array, got shape {w.shape}")
    if not (w.min() >= 0 and np.isfinite(w.max())):
        raise ValueError("weights must be finite and non-negative")
    n = len(w)
    total = float(w.sum())
    squares = float(np.dot(w, w))
    ess = total**2 / squares if squares > 0 else 0.0
    ess_share = ess / n
    mean = total / n
    quantiles = np.quantile(w, WEIGHT_QUANTILES)
    max_weight = float(w.max())
    zero_share = float(np.count_nonzero(w == 0)) / n

    warnings = []
    if ess_share < ESS_SHARE_WARNING:
        warnings.append(
            f"effective sample size {ess:.1f} is {_percent(ess_share)} of the {n} rows "
            f"(below {_percent(ESS_SHARE_WARNING)}): a few rows carry the estimate, so expect "
            "a high variance; prefer DR/SNIPS/clipped estimators or a target closer to the logger"
        )
    if max_weight > MAX_WEIGHT_WARNING:
        warnings.append(
            f"the largest importance weight is {max_weight:.3g} (above {MAX_WEIGHT_WARNING:g}): "
            "one row counts like that many average rows; consider clipping (lambda_) or "
            "shrinkage"
        )
    if zero_share > ZERO_WEIGHT_SHARE_WARNING:
        warnings.append(
            f"the target never takes the logged action in {_percent(zero_share)} of the rows "
            f"(above {_percent(ZERO_WEIGHT_SHARE_WARNING)}): the weighted terms use only the rest"
        )
    if n > 1:
        standard_error = float(np.std(w, ddof=1)) / math.sqrt(n)
        off = abs(mean - 1)
        if off > MEAN_WEIGHT_TOLERANCE and off > MEAN_WEIGHT_Z * standard_error:
            warnings.append(
                f"the mean importance weight is {mean:.3g}, far from its expected 1: the "
                "propensities (pscore) may be wrong, or the target takes actions the logger "
                "never takes"
            )
    if unsupported_mass_share is not None and unsupported_mass_share > UNSUPPORTED_MASS_WARNING:
        warnings.append(
            f"{_percent(unsupported_mass_share)} of the target's probability mass is on actions "
            f"the logger never takes in that context (above {_percent(UNSUPPORTED_MASS_WARNING)})"
            ": the log says nothing about their reward; IPS-type estimates miss it and DR/DM "
            "rely on the reward model's extrapolation there"
        )
    return WeightDiagnostics(
        n=n,
        ess=ess,
        ess_share=ess_share,
        mean_weight=mean,
        weight_quantiles={
            f"{100 * q:g}%": float(v) for q, v in zip(WEIGHT_QUANTILES, quantiles, strict=True)
        },
        max_weight=max_weight,
        zero_weight_share=zero_share,
        unsupported_mass_share=unsupported_mass_share,
        warnings=tuple(warnings),
    )


def diagnose_bandit_feedback(
    action: np.ndarray,
    pscore: np.ndarray,
    action_dist: np.ndarray,
    logging_dist: np.ndarray | None = None,
) -> WeightDiagnostics:
    """Diagnostics of logged single-step decisions for the target ``action_dist`` (n, A).

    ``logging_dist`` (n, A), the logger's probabilities of every action in each logged context
    (the decision log's ``probabilities``), is optional: only with it can the target's mass on
    actions outside the logger's support be measured (a single logged pscore cannot show it).
    It must agree with ``pscore`` at the logged actions."""
    pscore = check_pscore(pscore)
    action = np.asarray(action)
    n = check_same_length(action=action, pscore=pscore)
    dist = check_probabilities(action_dist, n, name="action_dist")
    action = check_action(action, dist.shape[1])
    flat_logged = np.arange(n) * dist.shape[1] + action
    weights = dist.reshape(-1).take(flat_logged) / pscore

    unsupported: float | None = None
    if logging_dist is not None:
        logger = check_probabilities(logging_dist, n, name="logging_dist")
        if logger.shape != dist.shape:
            raise ValueError(
                f"logging_dist must have the shape of action_dist {dist.shape}, got {logger.shape}"
            )
        logged = logger.reshape(-1).take(flat_logged)
        mismatch = np.abs(logged - pscore) > PSCORE_TOLERANCE
        if mismatch.any():
            row = int(np.argmax(mismatch))
            raise ValueError(
                f"pscore must equal logging_dist at the logged action, got {pscore[row]:g} "
                f"against {logged[row]:g} at row {row}"
            )
        unsupported = float(dist[logger == 0].sum()) / n
    return diagnose_weights(weights, unsupported_mass_share=unsupported)
