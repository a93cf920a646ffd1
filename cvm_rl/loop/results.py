"""What the closed loop reports: a row per period, each retrain's evaluations and decision,
the promotions with their OPE estimate before and realized lift after, and the plot."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from cvm_rl.loop.config import LoopConfig
    from cvm_rl.loop.engine import RealizedValue


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its interval."""

    estimate: float
    low: float
    high: float

    def __str__(self) -> str:
        return self.format(signed=False)

    def format(self, *, signed: bool) -> str:
        f = "+.3f" if signed else ".3f"
        return f"{self.estimate:{f}} [{self.low:{f}}, {self.high:{f}}]"


@dataclass(frozen=True)
class CandidateEvaluation:
    """One candidate at one retrain: its bundle, and the OPE report's primary lift over the
    serving policy and value per customer-week (the primary estimator's, over the evaluated
    weeks), with its verdict."""

    name: str
    bundle: str
    model_id: str
    estimator: str
    lift: Estimate  # per customer-week (a long-run lift over the evaluated weeks divided by them)
    value_per_week: Estimate  # per customer-week
    verdict: str


@dataclass(frozen=True)
class Retrain:
    """What a retrain after ``period`` did: the rows it trained and evaluated on, each
    candidate's evaluation, the candidate the report ranked first (``considered``), the one
    promoted (None: the serving policy stays) and why, and where the report is;
    ``confirmation``, the recommended candidate's whole-policy evaluation over the last
    weeks when the gate asks for one (:class:`~cvm_rl.loop.closed_loop.LoopConfig`
    ``confirm_window``)."""

    period: int
    serving: str
    train_rows: int
    eval_rows: int
    eval_weeks: int
    logger_value_per_week: Estimate
    candidates: tuple[CandidateEvaluation, ...]
    considered: str | None
    promoted: str | None
    reason: str
    report: str
    seconds: float
    confirmation: CandidateEvaluation | None = None

    def evaluation(self, name: str | None) -> CandidateEvaluation | None:
        return next((c for c in self.candidates if c.name == name), None)


@dataclass(frozen=True)
class PeriodRow:
    """One period (a simulated week) of the loop."""

    period: int
    policy: str  # the served candidate, e.g. "rules" or "clv_planner@p4"
    model_id: str
    decisions: int
    logged: int  # the decisions of this period the service's log holds
    outcomes: int
    requests: int
    value_per_customer: float  # realized reward per customer this week
    explored_share: float
    exploration_cost: float  # per customer: estimated reward without exploration - realized
    # Realized long-run value per customer to date (rewards so far plus the residual value,
    # measured in the simulator), of the loop and of the control arm (the starting campaign
    # served alone to the same customers; NaN without one).
    long_run_value: float = math.nan
    control_long_run_value: float = math.nan
    retrain: Retrain | None = None  # the retrain after this period, if any


@dataclass
class LoopResult:
    config: LoopConfig
    rows: list[PeriodRow] = field(default_factory=list)
    log_path: str = ""
    exit_code: int | None = None
    final_model_id: str = ""
    seconds: float = 0.0
    # Each customer's realized long-run value week by week, in the loop and in the control
    # arm (not written to JSON: the rows and lifts summarize them).
    realized: RealizedValue | None = field(default=None, repr=False)
    control: RealizedValue | None = field(default=None, repr=False)

    def realized_lift(self) -> Estimate | None:
        """The loop's realized long-run value per customer over the run minus the control
        arm's, paired by customer (normal interval at the config's alpha); None without a
        control arm."""
        if self.realized is None or self.control is None:
            return None
        return _paired_mean(
            self.realized.increments().sum(axis=0) - self.control.increments().sum(axis=0),
            self.config.alpha,
        )

    @property
    def retrains(self) -> list[Retrain]:
        return [r.retrain for r in self.rows if r.retrain is not None]

    def promotions(self) -> list[dict[str, Any]]:
        """Each promotion: the OPE estimate of the promoted candidate before it (its lift over
        the serving policy per customer-week, and its value per customer-week), beside what it
        realized while it served: the value per customer-week, and its realized lift over the
        policy it replaced, per customer-week of long-run value (a difference in differences
        against the control arm: the loop minus the control while the candidate served, minus
        the same while the replaced policy served; paired by customer)."""
        out = []
        labels = [r.policy for r in self.rows]
        for retrain in self.retrains:
            if retrain.promoted is None:
                continue
            chosen = retrain.evaluation(retrain.promoted)
            assert chosen is not None
            label = f"{retrain.promoted}@p{retrain.period}"
            after = _run_of(labels, retrain.period, label, forward=True)
            before = _run_of(labels, retrain.period - 1, labels[retrain.period - 1], forward=False)
            served = [self.rows[i].value_per_customer for i in after]
            out.append(
                {
                    "period": retrain.period,
                    "promoted": retrain.promoted,
                    "replaced": retrain.serving,
                    "ope_lift_per_week": dataclasses.asdict(chosen.lift),
                    "ope_window_lift_per_week": _asdict(
                        retrain.confirmation.lift if retrain.confirmation else None
                    ),
                    "ope_value_per_week": dataclasses.asdict(chosen.value_per_week),
                    "serving_logged_value_per_week": dataclasses.asdict(
                        retrain.logger_value_per_week
                    ),
                    "realized_value_per_week_after": float(np.mean(served)) if served else None,
                    "weeks_after": len(served),
                    "weeks_before": len(before),
                    "realized_lift_per_week": _asdict(self._lift_per_week(after, before)),
                }
            )
        return out

    def _lift_per_week(self, after: list[int], before: list[int]) -> Estimate | None:
        if self.realized is None or self.control is None or not after or not before:
            return None
        gap = self.realized.increments() - self.control.increments()
        return _paired_mean(gap[after].mean(axis=0) - gap[before].mean(axis=0), self.config.alpha)

    def table(self) -> str:
        """The per-period table in Markdown."""
        lines = [
            "| period | served | decisions | logged | value/customer | long-run value/customer "
            "to date: loop (control) | explored | exploration cost/customer | OPE of the best "
            "candidate: value/customer-week [95% CI] (lift) | decision |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for r in self.rows:
            ope = decision = ""
            if r.retrain is not None:
                best = r.retrain.evaluation(r.retrain.considered)
                if best is not None:
                    ope = (
                        f"{best.name}: {best.value_per_week} "
                        f"(lift {best.lift.format(signed=True)} {best.estimator})"
                    )
                decision = (
                    f"promote {r.retrain.promoted}"
                    if r.retrain.promoted
                    else f"keep {r.retrain.serving}"
                ) + f": {r.retrain.reason}"
            lines.append(
                f"| {r.period} | {r.policy} | {r.decisions:,} | {r.logged:,} | "
                f"{r.value_per_customer:.3f} | {r.long_run_value:.3f} "
                f"({r.control_long_run_value:.3f}) | {r.explored_share:.1%} | "
                f"{r.exploration_cost:+.3f} | {ope} | {decision} |"
            )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.config).items()}
        return {
            "config": config,
            "rows": [dataclasses.asdict(r) for r in self.rows],
            "promotions": self.promotions(),
            "log_path": self.log_path,
            "exit_code": self.exit_code,
            "final_model_id": self.final_model_id,
            "seconds": self.seconds,
        }

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, allow_nan=True) + "\n")
        return path


def _run_of(labels: Sequence[str], start: int, label: str, *, forward: bool) -> list[int]:
    """Indices of the consecutive periods served by ``label`` from index ``start`` on
    (``forward``) or back."""
    out = []
    step = 1 if forward else -1
    i = start
    while 0 <= i < len(labels) and labels[i] == label:
        out.append(i)
        i += step
    return sorted(out)


def _paired_mean(differences: np.ndarray, alpha: float) -> Estimate:
    """The mean of per-customer differences with its normal interval."""
    from cvm_rl.ope.intervals import normal_interval

    return interval_estimate(normal_interval(differences, alpha))


def _asdict(estimate: Estimate | None) -> dict[str, float] | None:
    return None if estimate is None else dataclasses.asdict(estimate)


def interval_estimate(i: Any, scale: float = 1.0) -> Estimate:
    """An OPE interval (anything with ``estimate``, ``low`` and ``high``) divided by
    ``scale``."""
    return Estimate(i.estimate / scale, i.low / scale, i.high / scale)


def plot_loop(result: LoopResult, path: str | Path) -> Path:
    """Two panels, a PNG at ``path``: above, the value per customer each period (with the
    estimated value without exploration) and the retrains (a promotion solid, with the
    promoted candidate's OPE value per customer-week; a kept policy dotted); below, the
    realized long-run value per customer to date of the loop and of the control arm."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from cvm_rl.plots import DPI

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(9, 7), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax, below = fig.subplots(2, 1, sharex=True)
    periods = [r.period for r in result.rows]
    ax.plot(periods, [r.value_per_customer for r in result.rows], "o-", label="realized")
    ax.plot(
        periods,
        [r.value_per_customer + r.exploration_cost for r in result.rows],
        ":",
        color="grey",
        label="estimated without exploration",
    )
    for retrain in result.retrains:
        x = retrain.period + 0.5
        for axis in (ax, below):
            if retrain.promoted is None:
                axis.axvline(x, color="grey", linestyle=":", linewidth=1)
            else:
                axis.axvline(x, color="tab:green", linewidth=1.5)
        if retrain.promoted is None:
            continue
        chosen = retrain.evaluation(retrain.promoted)
        if chosen is not None:
            v = chosen.value_per_week
            ax.errorbar(
                [x + 0.15],
                [v.estimate],
                yerr=[[v.estimate - v.low], [v.high - v.estimate]],
                fmt="s",
                color="tab:green",
                capsize=3,
            )
        ax.annotate(
            f"→ {retrain.promoted}",
            (x, 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=8,
        )
    ax.set_ylabel("value per customer this week")
    ax.set_title(
        f"closed loop: {result.config.customers:,} customers, retrain every "
        f"{result.config.retrain_every} weeks (green: promotion with its OPE estimate; "
        "dotted: kept)",
        fontsize=9,
    )
    ax.legend(loc="lower right", fontsize=8)
    below.plot(periods, [r.long_run_value for r in result.rows], "o-", label="loop")
    if result.control is not None:
        below.plot(
            periods,
            [r.control_long_run_value for r in result.rows],
            "s--",
            color="tab:orange",
            label=f"control: {result.config.start} alone",
        )
    below.set_xlabel("period (week)")
    below.set_ylabel("long-run value per customer\n(rewards to date + residual)")
    below.legend(loc="lower right", fontsize=8)
    fig.savefig(out, format="png", dpi=DPI)
    fig.clear()
    return out
