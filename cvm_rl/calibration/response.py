"""The email channel's response, fitted on a randomized campaign (Hillstrom's MineThatData data).

Customers were randomized to a men's email, a women's email or no email, so the differences
between arms over the two-week window are causal effects of the email. Two levels of detail:

* **per arm** (no model): conversion rate, spend per customer and spend per converter, and each
  email arm's uplift over no email, absolute and relative, with closed-form 95 % intervals
  (normal for differences of means, the log-ratio (Katz) interval for relative uplifts);
* **who responds** (a model): a logistic regression of conversion fitted by maximum likelihood,

      logit P(convert) = x'a + email * (b0 + b_w [women's email] + z'b + b_m [category match]),

  with x = (1, recency, log history, newbie, men's buyer, women's buyer) and
  z = (recency, log history, newbie), recency and log history centred on their sample means.
  The treatment terms say how the email's effect on the log-odds of converting varies; for
  rare conversions a log-odds difference is close to the log of the rate ratio.

The *hurt share* is the share of (customer, email) pairs for which the fitted treatment term
is negative, i.e. the model says that email lowers that customer's conversion. Its interval
comes from a seeded parametric bootstrap: coefficient vectors drawn from their asymptotic
normal distribution. It rests on the model's linear form: the data inform it only through how
the uplift varies with the covariates above.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
from numpy.typing import NDArray
from scipy import stats
from scipy.optimize import minimize

from cvm_rl.calibration._fitting import count_array, float_array, same_length
from cvm_rl.calibration.errors import CalibrationError
from cvm_rl.calibration.result import significant
from cvm_rl.datasets import HILLSTROM_ARMS, HillstromData
from cvm_rl.ope.intervals import Interval, check_n_bootstrap, percentile_interval

ALPHA = 0.05
METHOD = "parametric bootstrap"
CONTROL = HILLSTROM_ARMS[0]
DATASET = "Kevin Hillstrom, MineThatData E-Mail Analytics and Data Mining Challenge (2008)"
ANY_EMAIL = "Any E-Mail"
"""The two email arms pooled: one email channel, as the simulator has."""

BASE_TERMS = ("intercept", "recency", "log_history", "newbie", "mens_buyer", "womens_buyer")
TREATMENT_TERMS = (
    "email",
    "email:womens_arm",
    "email:recency",
    "email:log_history",
    "email:newbie",
    "email:category_match",
)
"""Coefficient names: ``email:*`` terms are the email's effect on the log-odds."""


@dataclass(frozen=True)
class ArmSummary:
    """One arm's outcomes over the two weeks after the campaign."""

    arm: str
    n: int
    conversion: Interval
    spend: Interval
    """Spend per customer ($)."""
    spend_per_converter: Interval


@dataclass(frozen=True)
class ArmUplift:
    """An email arm against no email: differences of the two arms' means."""

    arm: str
    conversion: Interval
    """Conversion rate difference (percentage points / 100)."""
    relative_conversion: Interval
    """Conversion rate ratio minus 1."""
    spend: Interval
    """Spend per customer difference ($)."""
    relative_spend: Interval
    """Spend per customer ratio minus 1."""


@dataclass(frozen=True)
class Coefficient:
    """A logistic-regression coefficient with its standard error and normal interval."""

    name: str
    estimate: float
    std_error: float
    low: float
    high: float

    @property
    def z(self) -> float:
        return self.estimate / self.std_error if self.std_error > 0 else math.nan


@dataclass(frozen=True)
class ResponseFit:
    """The email channel's response on a randomized campaign (see the module docstring)."""

    arms: tuple[ArmSummary, ...]
    uplifts: tuple[ArmUplift, ...]
    coefficients: tuple[Coefficient, ...]
    log_likelihood: float
    recency_mean: float
    """Months; the ``recency`` terms are per month away from this value."""
    log_history_mean: float
    """Mean of log(history $); the ``log_history`` terms are per unit away from it."""
    hurt_share: tuple[tuple[str, Interval], ...]
    """Per email arm and pooled (``Any E-Mail``): share whose conversion email lowers."""
    newbie_uplift: ArmUplift
    """Both emails against none among "newbies" (first purchase in the last twelve months)."""
    established_uplift: ArmUplift
    """... and among the other customers."""
    newbie_uplift_ratio: Interval
    """Newbies' relative conversion uplift over the others': how many times as strongly a new
    customer responds (parametric bootstrap of the four cells' conversion rates)."""
    source: str
    sha256: str
    n_customers: int
    n_bootstrap: int
    seed: int | None

    def arm(self, name: str) -> ArmSummary:
        return next(a for a in self.arms if a.arm == name)

    def uplift(self, name: str) -> ArmUplift:
        return next(u for u in self.uplifts if u.arm == name)

    def coefficient(self, name: str) -> Coefficient:
        return next(c for c in self.coefficients if c.name == name)

    def hurt(self, name: str = ANY_EMAIL) -> Interval:
        return dict(self.hurt_share)[name]

    @property
    def hurt_share_distinguishable_from_zero(self) -> bool:
        """Whether the pooled hurt share's interval excludes 0."""
        return self.hurt().low > 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["hurt_share"] = {name: asdict(interval) for name, interval in self.hurt_share}
        out["hurt_share_distinguishable_from_zero"] = self.hurt_share_distinguishable_from_zero
        return out


def _z(alpha: float) -> float:
    return float(stats.norm.ppf(1 - alpha / 2))


def _normal(estimate: float, std_error: float, alpha: float) -> Interval:
    half = _z(alpha) * std_error
    return Interval(estimate, estimate - half, estimate + half, alpha, "normal")


def _mean_interval(values: NDArray[np.float64], alpha: float) -> Interval:
    n = len(values)
    if n < 2:
        mean = float(np.mean(values)) if n else math.nan
        return Interval(mean, math.nan, math.nan, alpha, "normal")
    return _normal(float(np.mean(values)), float(np.std(values, ddof=1) / math.sqrt(n)), alpha)


def _difference(a: NDArray[np.float64], b: NDArray[np.float64], alpha: float) -> Interval:
    """Mean of ``a`` minus mean of ``b``, independent samples (Welch's standard error)."""
    se = math.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b))
    return _normal(float(np.mean(a) - np.mean(b)), se, alpha)


def _relative(a: NDArray[np.float64], b: NDArray[np.float64], alpha: float) -> Interval:
    """Mean of ``a`` over mean of ``b``, minus 1, with the log-ratio (delta method) interval;
    for 0/1 outcomes this is Katz's interval of a risk ratio."""
    m1, m0 = float(np.mean(a)), float(np.mean(b))
    if m1 <= 0 or m0 <= 0:
        estimate = m1 / m0 - 1 if m0 > 0 else math.nan
        return Interval(estimate, math.nan, math.nan, alpha, "log-ratio")
    se = math.sqrt(np.var(a, ddof=1) / (len(a) * m1**2) + np.var(b, ddof=1) / (len(b) * m0**2))
    log_ratio, half = math.log(m1 / m0), _z(alpha) * se
    low, high = math.exp(log_ratio - half) - 1, math.exp(log_ratio + half) - 1
    return Interval(m1 / m0 - 1, low, high, alpha, "log-ratio")


def summarize_arm(
    name: str, conversion: NDArray[np.float64], spend: NDArray[np.float64]
) -> ArmSummary:
    """One arm's conversion rate, spend per customer and per converter (normal intervals)."""
    return ArmSummary(
        arm=name,
        n=len(conversion),
        conversion=_mean_interval(conversion, ALPHA),
        spend=_mean_interval(spend, ALPHA),
        spend_per_converter=_mean_interval(spend[conversion > 0], ALPHA),
    )


def compare_arms(
    name: str,
    conversion: NDArray[np.float64],
    spend: NDArray[np.float64],
    treated: NDArray[np.bool_],
    control: NDArray[np.bool_],
) -> ArmUplift:
    """The ``treated`` rows against the ``control`` rows of a randomized experiment:
    differences and ratios of conversion and spend per customer, with 95 % intervals."""
    return ArmUplift(
        arm=name,
        conversion=_difference(conversion[treated], conversion[control], ALPHA),
        relative_conversion=_relative(conversion[treated], conversion[control], ALPHA),
        spend=_difference(spend[treated], spend[control], ALPHA),
        relative_spend=_relative(spend[treated], spend[control], ALPHA),
    )


def _checked(
    data: HillstromData,
) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]:
    """Arm codes, conversion (0/1) and spend, checked: every arm present, every customer in one."""
    conv = count_array(data.conversion.astype(np.float64), "conversion").astype(np.float64)
    if np.any(conv > 1):
        raise CalibrationError(f"conversion: expected 0 or 1 at index {int(np.argmax(conv > 1))}")
    spend = float_array(data.spend, "spend")
    recency = float_array(data.recency, "recency")
    history = float_array(data.history, "history")
    arm = data.arm
    same_length(arm=arm, conversion=conv, spend=spend, recency=recency, history=history)
    if np.any(arm < 0):
        i = int(np.argmax(arm < 0))
        raise CalibrationError(
            f"segment: unknown arm {str(data.segment[i])!r} at index {i}; expected {HILLSTROM_ARMS}"
        )
    for code, name in enumerate(HILLSTROM_ARMS):
        n = int(np.count_nonzero(arm == code))
        if n < 2 or not np.any(conv[arm == code] > 0):
            raise CalibrationError(f"segment: arm {name!r} has {n} customers and no conversion")
    if np.any(history <= 0):
        i = int(np.argmax(history <= 0))
        raise CalibrationError(f"history: must be > 0 (it enters as a log), 0 at index {i}")
    return arm, conv, spend


def _covariates(
    data: HillstromData, recency_mean: float, log_history_mean: float
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Centred recency, centred log history and newbie, the covariates of both designs."""
    recency = data.recency.astype(np.float64) - recency_mean
    log_history = np.log(data.history) - log_history_mean
    return recency, log_history, data.newbie.astype(np.float64)


def _treatment_rows(
    data: HillstromData,
    arm: NDArray[np.int64],
    recency: NDArray[np.float64],
    log_history: NDArray[np.float64],
    newbie: NDArray[np.float64],
) -> NDArray[np.float64]:
    email = (arm > 0).astype(np.float64)
    womens_arm = (arm == 2).astype(np.float64)
    match = np.where(arm == 2, data.womens, data.mens).astype(np.float64)
    rows = np.column_stack([np.ones(len(arm)), womens_arm, recency, log_history, newbie, match])
    return rows * email[:, None]


def _fit_logistic(
    design: NDArray[np.float64], y: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], float]:
    """Maximum-likelihood logistic regression: coefficients, their covariance, log-likelihood."""
    n = len(y)

    def objective(beta: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        eta = design @ beta
        ll = y * eta - np.logaddexp(0.0, eta)
        return -float(ll.mean()), -(design.T @ (y - _sigmoid(eta))) / n

    def hessian(beta: NDArray[np.float64]) -> NDArray[np.float64]:
        p = _sigmoid(design @ beta)
        return (design.T * (p * (1 - p))) @ design / n

    start = np.zeros(design.shape[1])
    start[0] = math.log(max(y.mean(), 1e-6) / max(1 - y.mean(), 1e-6))
    result = minimize(
        objective, start, jac=True, hess=hessian, method="trust-exact", options={"gtol": 1e-9}
    )
    _, gradient = objective(result.x)
    if not np.all(np.isfinite(result.x)) or float(np.max(np.abs(gradient))) > 1e-6:
        raise CalibrationError(f"logistic response fit did not converge: {result.message}")
    information = hessian(result.x) * n
    try:
        covariance = np.linalg.inv(information)
    except np.linalg.LinAlgError:
        raise CalibrationError(
            "logistic response fit: the information matrix is singular (a covariate is "
            "constant within the data, or an arm has no converters)"
        ) from None
    if np.any(np.abs(result.x) > 30):
        raise CalibrationError(
            "logistic response fit ran off to infinity (a covariate separates converters)"
        )
    beta = np.asarray(result.x, dtype=np.float64)
    return beta, np.asarray(covariance, dtype=np.float64), -objective(beta)[0] * n


def _sigmoid(eta: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * eta)), dtype=np.float64)


def _draw_blocks(
    mean: NDArray[np.float64], covariance: NDArray[np.float64], n: int, seed: int | None
) -> Iterator[NDArray[np.float64]]:
    rng = np.random.default_rng(seed)
    for start in range(0, n, 64):
        yield rng.multivariate_normal(mean, covariance, size=min(64, n - start))


def fit_email_response(
    data: HillstromData, *, seed: int | None = 0, n_bootstrap: int = 1000
) -> ResponseFit:
    """Fit the email channel's response on a randomized campaign (see the module docstring).

    ``n_bootstrap`` coefficient draws make the hurt share's interval (seeded by ``seed``).
    Raises :class:`CalibrationError` on data the fit cannot use.
    """
    check_n_bootstrap(n_bootstrap)
    arm, conv, spend = _checked(data)
    control = arm == 0
    rows_of = {name: arm == i for i, name in enumerate(HILLSTROM_ARMS)} | {ANY_EMAIL: ~control}
    arms = tuple(summarize_arm(name, conv[rows], spend[rows]) for name, rows in rows_of.items())
    uplifts = tuple(
        compare_arms(name, conv, spend, rows, control)
        for name, rows in rows_of.items()
        if name != CONTROL
    )

    recency_mean = float(np.mean(data.recency))
    log_history_mean = float(np.mean(np.log(data.history)))
    covariates = _covariates(data, recency_mean, log_history_mean)
    recency, log_history, newbie = covariates
    base = np.column_stack(
        [np.ones(len(arm)), recency, log_history, newbie, data.mens, data.womens]
    ).astype(np.float64)
    treatment = _treatment_rows(data, arm, *covariates)
    beta, covariance, log_likelihood = _fit_logistic(np.hstack([base, treatment]), conv)
    se = np.sqrt(np.diag(covariance))
    coefficients = tuple(
        Coefficient(name, float(b), float(s), float(b - _z(ALPHA) * s), float(b + _z(ALPHA) * s))
        for name, b, s in zip((*BASE_TERMS, *TREATMENT_TERMS), beta, se, strict=True)
    )

    # Every customer under each email: the treatment rows as if assigned to it.
    k = len(BASE_TERMS)
    everyone = [_treatment_rows(data, np.full(len(arm), code), *covariates) for code in (1, 2)]
    stacked = np.vstack(everyone)
    groups = {
        HILLSTROM_ARMS[1]: slice(0, len(arm)),
        HILLSTROM_ARMS[2]: slice(len(arm), 2 * len(arm)),
        ANY_EMAIL: slice(0, 2 * len(arm)),
    }
    point = stacked @ beta[k:] < 0
    draws: dict[str, list[float]] = {name: [] for name in groups}
    for block in _draw_blocks(beta[k:], covariance[k:, k:], n_bootstrap, seed):
        hurt = stacked @ block.T < 0
        for name, rows in groups.items():
            draws[name] += hurt[rows].mean(axis=0).tolist()
    hurt_share = tuple(
        (name, percentile_interval(float(point[rows].mean()), np.array(draws[name]), ALPHA, METHOD))
        for name, rows in groups.items()
    )
    is_new = data.newbie.astype(bool)
    newbie_uplift = compare_arms("newbies", conv, spend, ~control & is_new, control & is_new)
    established_uplift = compare_arms("others", conv, spend, ~control & ~is_new, control & ~is_new)
    return ResponseFit(
        arms=arms,
        uplifts=uplifts,
        coefficients=coefficients,
        log_likelihood=float(log_likelihood),
        recency_mean=recency_mean,
        log_history_mean=log_history_mean,
        hurt_share=hurt_share,
        newbie_uplift=newbie_uplift,
        established_uplift=established_uplift,
        newbie_uplift_ratio=_relative_uplift_ratio(
            conv, ~control, is_new, n_bootstrap, None if seed is None else seed + 1
        ),
        source=data.source,
        sha256=data.sha256,
        n_customers=len(arm),
        n_bootstrap=n_bootstrap,
        seed=seed,
    )


def _relative_uplift_ratio(
    conv: NDArray[np.float64],
    treated: NDArray[np.bool_],
    group: NDArray[np.bool_],
    n_bootstrap: int,
    seed: int | None,
) -> Interval:
    """(relative conversion uplift in ``group``) / (relative uplift outside it), with a
    parametric bootstrap interval: each (arm, group) cell's conversions redrawn binomially."""
    cells = [(t, g) for g in (True, False) for t in (True, False)]
    sizes = np.array([np.count_nonzero((treated == t) & (group == g)) for t, g in cells])
    rates = np.array([conv[(treated == t) & (group == g)].mean() for t, g in cells])

    def ratio(r: NDArray[np.float64]) -> NDArray[np.float64]:
        with np.errstate(divide="ignore", invalid="ignore"):
            inside, outside = r[..., 0] / r[..., 1] - 1.0, r[..., 2] / r[..., 3] - 1.0
            out: NDArray[np.float64] = inside / outside
        return out

    rng = np.random.default_rng(seed)
    replicates = rng.binomial(sizes, rates, size=(n_bootstrap, len(cells))) / sizes
    return percentile_interval(
        float(ratio(rates)), ratio(replicates), ALPHA, "parametric bootstrap"
    )


def response_values(fit: ResponseFit) -> dict[str, float]:
    """The email channel response as flat numbers (4 significant digits): the two-week base
    conversion, the pooled emails' relative uplift, the uplift's log-odds slopes, spend per
    converter and the hurt share."""
    any_email = fit.uplift(ANY_EMAIL)
    values = {
        "window_weeks": 2.0,
        "base_conversion": fit.arm(CONTROL).conversion.estimate,
        "relative_uplift": any_email.relative_conversion.estimate,
        "conversion_uplift": any_email.conversion.estimate,
        "spend_uplift_per_customer": any_email.spend.estimate,
        "uplift_log_odds": fit.coefficient("email").estimate,
        "uplift_log_odds_womens_email": fit.coefficient("email:womens_arm").estimate,
        "uplift_log_odds_per_recency_month": fit.coefficient("email:recency").estimate,
        "uplift_log_odds_per_log_history": fit.coefficient("email:log_history").estimate,
        "uplift_log_odds_newbie": fit.coefficient("email:newbie").estimate,
        "uplift_log_odds_category_match": fit.coefficient("email:category_match").estimate,
        "recency_reference_months": fit.recency_mean,
        "log_history_reference": fit.log_history_mean,
        "spend_per_converter": fit.arm(ANY_EMAIL).spend_per_converter.estimate,
        "spend_per_converter_no_email": fit.arm(CONTROL).spend_per_converter.estimate,
        "hurt_share": fit.hurt().estimate,
        "newbie_uplift_ratio": fit.newbie_uplift_ratio.estimate,
    }
    return {key: significant(value) for key, value in values.items()}


def _intervals(fit: ResponseFit) -> dict[str, list[float]]:
    any_email = fit.uplift(ANY_EMAIL)
    intervals: dict[str, Interval | Coefficient] = {
        "base_conversion": fit.arm(CONTROL).conversion,
        "relative_uplift": any_email.relative_conversion,
        "conversion_uplift": any_email.conversion,
        "spend_uplift_per_customer": any_email.spend,
        "uplift_log_odds": fit.coefficient("email"),
        "uplift_log_odds_womens_email": fit.coefficient("email:womens_arm"),
        "uplift_log_odds_per_recency_month": fit.coefficient("email:recency"),
        "uplift_log_odds_per_log_history": fit.coefficient("email:log_history"),
        "uplift_log_odds_newbie": fit.coefficient("email:newbie"),
        "uplift_log_odds_category_match": fit.coefficient("email:category_match"),
        "spend_per_converter": fit.arm(ANY_EMAIL).spend_per_converter,
        "hurt_share": fit.hurt(),
        "newbie_uplift_ratio": fit.newbie_uplift_ratio,
    }
    return {
        key: [significant(value.low), significant(value.high)] for key, value in intervals.items()
    }


def response_fragment(
    fit: ResponseFit,
    *,
    email_response: dict[str, float] | None = None,
    new_customer_multiplier: float | None = None,
) -> str:
    """A TOML ``[email_response]`` table for a scenario: the numbers of
    :func:`response_values`, their 95 % intervals in ``[email_response.interval95]`` and the
    data set in ``[email_response.source]``; with ``email_response`` (every channel's response
    after a simulated fit of email's) and ``new_customer_multiplier``, also
    ``[channels.*] response`` and ``[contact_response]``, the keys a scenario reads."""
    table: dict[str, Any] = dict(response_values(fit))
    table["interval95"] = _intervals(fit)
    table["source"] = {
        "dataset": DATASET,
        "file": fit.source,
        "sha256": fit.sha256,
        "n_customers": fit.n_customers,
        "fitted_by": "cvm calibrate-response",
        "seed": fit.seed if fit.seed is not None else -1,
        "n_bootstrap": fit.n_bootstrap,
    }
    fragment: dict[str, Any] = {"email_response": table}
    if email_response is not None:
        fragment["channels"] = {
            name: {"response": significant(response)} for name, response in email_response.items()
        }
    if new_customer_multiplier is not None:
        fragment["contact_response"] = {
            "new_customer_weeks": 52,
            "new_customer_multiplier": significant(new_customer_multiplier),
        }
    return tomli_w.dumps(fragment)


def write_response_fragment(
    fit: ResponseFit,
    path: str | Path,
    *,
    email_response: dict[str, float] | None = None,
    new_customer_multiplier: float | None = None,
) -> None:
    """Write :func:`response_fragment` to ``path``."""
    text = response_fragment(
        fit, email_response=email_response, new_customer_multiplier=new_customer_multiplier
    )
    Path(path).write_text(text, encoding="utf-8")
