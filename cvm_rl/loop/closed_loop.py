"""The closed loop: serve, log, retrain offline from the log, evaluate off-policy, promote.

:func:`run_loop` starts ``cvm serve`` as its own process (port 0, its decision log and bundle
root under ``out/``) on the starting campaign (the rule-based policy) with epsilon
exploration, and drives a :class:`~cvm_rl.loop.engine.SimulatedCampaignEngine` (a client of
the service) one period, a simulated week, at a time: ``DecideBatch`` for every customer of the
base (in requests of at most ``batch_rows``), the decisions executed in the simulator, the
outcomes reported. Every ``retrain_every`` periods, while the service keeps serving:

1. **Export** the decision log to Parquet (``out/export``; recorded in the log, as ``cvm logs
   export`` does).
2. **Train candidates from the log alone**, on the logs of one half of the customers (a
   seeded split by customer id): ``clv_planner``, the CLV planner with a response estimate
   fitted on the logged decisions (:func:`response_from_log`: each action's uplift of the
   week's purchase rate over no contact, from the logged propensities); ``linucb``, a
   contextual bandit (per-action ridge regression of the week's reward, greedy); ``greedy``,
   the greedy uplift model; and the untrained ``rules``, ``no_contact`` and ``random``
   (a deliberately worse candidate). Each is saved as a bundle under the bundle root.
3. **Evaluate them off-policy against the serving policy** with the OPE report
   (:func:`cvm_rl.ope.evaluate.evaluate_candidates` and :func:`cvm_rl.ope.report.write_report`:
   ``out/ope/pN/report.html``) on the other half's decisions of the last ``retrain_every``
   periods, all made by the serving model. A candidate is valued as it would be served: with
   the same epsilon exploration on its greedy action (the service keeps its exploration
   across reloads), so the lift compares like with like.
4. **Promote** through the service's hot reload (``DecisionAdmin.LoadBundle``, by
   :func:`cvm_rl.loop.replicas.promote`, which confirms it) only the report's
   recommendation: the candidate with the highest lower confidence bound of its primary
   lift, if that bound is above zero; otherwise keep the serving policy and record the
   report's reason.

Each period's row (:class:`PeriodRow`) records the model served, decisions made and logged,
the realized value per customer, the explored share and exploration's cost (the week's
reward per customer the served model would have earned without exploration, estimated by
self-normalized importance sampling on its unexplored decisions, minus what was earned).
Every draw is seeded: the population and its dynamics by ``seed``, the service's exploration
by (model version, event id), the split, the models and the bootstrap by ``seed``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from cvm_rl.logs.arrays import LoggedDecisions
    from cvm_rl.ope.results import OpeResult
    from cvm_rl.policies.base import Policy
    from cvm_rl.policies.planner import ResponseEstimate
    from simulator.config import Scenario

CANDIDATES = ("clv_planner", "linucb", "greedy", "rules", "no_contact", "random")
"""Candidate kinds :func:`run_loop` can train (see the module docstring)."""
DEFAULT_CANDIDATES = ("clv_planner", "linucb", "greedy")
STARTS = ("rules", "no_contact", "random")
"""Policies the loop can start from (built from the scenario alone)."""
BATCH_ROWS = 5_000
"""Rows per ``DecideBatch``: the service's default ``--max-batch-rows``
(``server.config.DEFAULT_MAX_BATCH_ROWS``, not imported here so the CLI's help stays light)."""


@dataclass(frozen=True)
class LoopConfig:
    """What :func:`run_loop` runs: ``customers`` for ``periods`` weeks, retraining every
    ``retrain_every`` periods, with epsilon exploration ``epsilon``; ``candidates`` from
    :data:`CANDIDATES`; ``out`` holds the log, bundles, exports and reports."""

    out: Path
    customers: int = 10_000
    periods: int = 24
    retrain_every: int = 4
    epsilon: float = 0.1
    seed: int = 0
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES
    scenario: str = "default"
    start: str = "rules"  # the starting campaign: an untrained kind, see STARTS
    train_share: float = 0.5  # customers whose logs train candidates; the rest evaluate them
    alpha: float = 0.05
    n_bootstrap: int = 200
    response_prior_weeks: float = 200.0  # shrinks each action's uplift towards none
    batch_rows: int = BATCH_ROWS

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "candidates", tuple(self.candidates))
        for name in ("customers", "periods", "retrain_every", "n_bootstrap", "batch_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.customers < 8:
            raise ValueError(f"customers must be >= 8 (OPE needs 4 per half), got {self.customers}")
        if not 0 < self.epsilon <= 1:
            raise ValueError(f"epsilon must be in (0, 1] (OPE needs it), got {self.epsilon}")
        if not 0 < self.train_share < 1:
            raise ValueError(f"train_share must be in (0, 1), got {self.train_share}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not self.response_prior_weeks >= 0:
            raise ValueError(f"response_prior_weeks must be >= 0, got {self.response_prior_weeks}")
        if self.start not in STARTS:
            raise ValueError(f"start must be one of {', '.join(STARTS)}, got {self.start!r}")
        unknown = [c for c in self.candidates if c not in CANDIDATES]
        if unknown or not self.candidates or len(set(self.candidates)) < len(self.candidates):
            raise ValueError(
                f"candidates must be distinct names from {', '.join(CANDIDATES)}; got "
                f"{', '.join(self.candidates) or 'none'}"
            )


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
    lift: Estimate  # per customer over the evaluated weeks (long run) or per decision
    value_per_week: Estimate  # per customer-week
    verdict: str


@dataclass(frozen=True)
class Retrain:
    """What a retrain after ``period`` did: the rows it trained and evaluated on, each
    candidate's evaluation, the candidate the report ranked first (``considered``), the one
    promoted (None: the serving policy stays) and why, and where the report is."""

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
    retrain: Retrain | None = None  # the retrain after this period, if any


@dataclass
class LoopResult:
    config: LoopConfig
    rows: list[PeriodRow] = field(default_factory=list)
    log_path: str = ""
    exit_code: int | None = None
    final_model_id: str = ""
    seconds: float = 0.0

    @property
    def retrains(self) -> list[Retrain]:
        return [r.retrain for r in self.rows if r.retrain is not None]

    def promotions(self) -> list[dict[str, Any]]:
        """Each promotion: the OPE estimate of the promoted candidate's value per customer-week
        before it, beside the realized value per customer-week while it served (and the
        serving policy's logged value it was compared with)."""
        out = []
        for retrain in self.retrains:
            if retrain.promoted is None:
                continue
            chosen = retrain.evaluation(retrain.promoted)
            assert chosen is not None
            after = [r for r in self.rows if r.period > retrain.period]
            served = []
            for r in after:
                if r.policy != f"{retrain.promoted}@p{retrain.period}":
                    break
                served.append(r.value_per_customer)
            out.append(
                {
                    "period": retrain.period,
                    "promoted": retrain.promoted,
                    "replaced": retrain.serving,
                    "ope_value_per_week": dataclasses.asdict(chosen.value_per_week),
                    "serving_logged_value_per_week": dataclasses.asdict(
                        retrain.logger_value_per_week
                    ),
                    "realized_value_per_week_after": float(np.mean(served)) if served else None,
                    "weeks_after": len(served),
                }
            )
        return out

    def table(self) -> str:
        """The per-period table in Markdown."""
        lines = [
            "| period | served | decisions | logged | value/customer | explored | "
            "exploration cost/customer | OPE of the best candidate: value/customer-week "
            "[95% CI] (lift) | decision |",
            "|---:|---|---:|---:|---:|---:|---:|---|---|",
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
                f"{r.value_per_customer:.3f} | {r.explored_share:.1%} | "
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


# --------------------------------------------------------------------------- candidates
def response_from_log(
    decisions: LoggedDecisions,
    purchased: np.ndarray,
    scenario: Scenario,
    *,
    prior_weeks: float = 200.0,
) -> ResponseEstimate:
    """Each action's uplift of the week's purchase rate over no contact, for new and
    established customers, from the logged decisions and their propensities
    (:func:`~cvm_rl.policies.planner.response_from_decisions`), shrunk towards no uplift by
    ``prior_weeks`` pseudo customer-weeks. ``purchased`` (N,): whether the week had a
    purchase (a reported outcome's ``purchase``), standing for the week's purchases."""
    from cvm_rl.policies.planner import response_from_decisions
    from simulator.observation import observation_feature_names

    if list(decisions.feature_names) != observation_feature_names(scenario):
        raise ValueError("decisions: their features differ from the scenario's observation")
    data = decisions.data
    return response_from_decisions(
        scenario, data.obs, data.actions, data.propensities, purchased, prior_weeks=prior_weeks
    )


def build_candidate(
    name: str,
    scenario: Scenario,
    train: LoggedDecisions,
    purchased: np.ndarray,
    config: LoopConfig,
) -> Policy:
    """Candidate ``name`` (one of :data:`CANDIDATES`) trained on the logged ``train`` rows."""
    from cvm_rl.policies import GreedyUpliftPolicy, LinUCBPolicy
    from cvm_rl.policies.planner import CLVPlannerPolicy

    if name == "clv_planner":
        response = response_from_log(
            train, purchased, scenario, prior_weeks=config.response_prior_weeks
        )
        return CLVPlannerPolicy(scenario, response=response, seed=config.seed)
    if name == "linucb":
        bandit = LinUCBPolicy(scenario, alpha=0.0, seed=config.seed)  # greedy on the ridge fit
        bandit.update(train.data.obs, train.data.executed_actions, train.data.rewards)
        return bandit
    if name == "greedy":
        return GreedyUpliftPolicy(scenario).fit(train.data)
    if name in STARTS:
        return _untrained(name, scenario, config.seed)
    raise ValueError(f"candidate: unknown {name!r}; known: {', '.join(CANDIDATES)}")


def _untrained(name: str, scenario: Scenario, seed: int) -> Policy:
    from cvm_rl.policies import NoContactPolicy, RandomPolicy, RuleBasedPolicy

    kinds: dict[str, type[Policy]] = {
        "rules": RuleBasedPolicy,
        "no_contact": NoContactPolicy,
        "random": RandomPolicy,
    }
    return kinds[name](scenario, seed=seed)


def served_with_epsilon(scenario: Scenario, base: Policy, epsilon: float) -> Policy:
    """``base`` as the service serves it with ``--exploration epsilon``: ``1 - epsilon`` on its
    greedy eligible action (ties split), ``epsilon`` uniform over the eligible actions."""
    from cvm_rl.policies.base import Policy, argmax_probabilities

    class Served(Policy):
        name = base.name

        def _probabilities(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
            greedy = argmax_probabilities(base.action_probabilities(obs, mask), mask)
            uniform = mask / mask.sum(axis=1, keepdims=True)
            probs: np.ndarray = (1.0 - epsilon) * greedy + epsilon * uniform
            return probs

    return Served(scenario)


def customer_fold(customer_ids: Iterable[str], seed: int, train_share: float) -> np.ndarray:
    """True for the customers whose logs train candidates (a seeded split by id)."""
    cut = int(train_share * 2**32)
    return np.array([zlib.crc32(f"{seed}:{c}".encode()) < cut for c in customer_ids], dtype=bool)


# --------------------------------------------------------------------------- the loop
def _interval(i: Any, scale: float = 1.0) -> Estimate:
    return Estimate(i.estimate / scale, i.low / scale, i.high / scale)


def _count_decisions(log_path: Path) -> int:
    from cvm_rl.logs.reader import open_read_only

    with open_read_only(log_path) as reader:
        (count,) = reader.db.execute("SELECT COUNT(*) FROM decisions").fetchone()
    return int(count)


@dataclass
class _Serving:
    label: str
    model_id: str


def run_loop(config: LoopConfig, *, echo: Callable[[str], None] | None = None) -> LoopResult:
    """Run the closed loop of ``config`` (see the module docstring); ``echo`` gets a line per
    period and per retrain."""
    from cvm_rl.bundle import save_bundle
    from cvm_rl.cli.process import serve_process
    from cvm_rl.loop.engine import SimulatedCampaignEngine
    from server.client import DecisionClient
    from simulator.config import load_scenario

    say = echo or (lambda line: None)
    started = time.perf_counter()
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    bundles = out / "bundles"
    bundles.mkdir(exist_ok=True)
    log_path = out / "decisions.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{log_path}{suffix}").unlink(missing_ok=True)
    scenario = load_scenario(config.scenario)
    start = save_bundle(
        _untrained(config.start, scenario, config.seed),
        bundles / f"p0-{config.start}",
        algo=config.start,
        training_config={"loop": "starting campaign"},
    )
    args = [
        "--bundle",
        str(start),
        "--bundle-root",
        str(bundles),
        "--log",
        str(log_path),
        "--exploration",
        "epsilon",
        "--epsilon",
        repr(config.epsilon),
        "--max-batch-rows",
        str(config.batch_rows),
    ]
    result = LoopResult(config, log_path=str(log_path))
    with serve_process(args, out) as server:
        with DecisionClient(server.target) as client:
            serving = _Serving(config.start, client.policy_info().model_id)
            engine = SimulatedCampaignEngine(
                client,
                scenario,
                customers=config.customers,
                seed=config.seed,
                prefix=f"loop-{config.seed}",
                total_weeks=config.periods,
                batch_rows=config.batch_rows,
                return_probabilities=True,  # exact greedy weights for exploration's cost
            )
            logged_before = 0
            for period in range(1, config.periods + 1):
                stats = engine.run(1)
                logged = _count_decisions(log_path)
                row = PeriodRow(
                    period=period,
                    policy=serving.label,
                    model_id=serving.model_id,
                    decisions=stats.decisions,
                    logged=logged - logged_before,
                    outcomes=stats.outcomes_recorded,
                    requests=stats.requests,
                    value_per_customer=stats.value_per_decision,
                    explored_share=stats.explored / stats.decisions,
                    exploration_cost=stats.greedy_value - stats.value_per_decision,
                )
                logged_before = logged
                say(
                    f"[loop] period {period}: {serving.label} ({serving.model_id}), "
                    f"{row.decisions:,} decisions in {row.requests} requests, {row.logged:,} "
                    f"logged, value/customer {row.value_per_customer:.3f}, explored "
                    f"{row.explored_share:.1%}, exploration cost/customer "
                    f"{row.exploration_cost:+.3f}"
                )
                if period % config.retrain_every == 0 and period < config.periods:
                    retrain = _retrain(config, scenario, period, serving, [server.target], log_path)
                    row = dataclasses.replace(row, retrain=retrain)
                    if retrain.promoted is not None:
                        serving = _Serving(
                            f"{retrain.promoted}@p{period}",
                            client.policy_info().model_id,
                        )
                    say(
                        f"[loop] retrain after period {period} ({retrain.seconds:.1f} s; "
                        f"report {retrain.report}): "
                        + (
                            f"promoted {retrain.promoted}"
                            if retrain.promoted
                            else f"kept {retrain.serving}"
                        )
                        + f": {retrain.reason}"
                    )
                result.rows.append(row)
            result.final_model_id = client.policy_info().model_id
        result.exit_code = server.stop()
    result.seconds = time.perf_counter() - started
    return result


def _retrain(
    config: LoopConfig,
    scenario: Scenario,
    period: int,
    serving: _Serving,
    replicas: Sequence[str],
    log_path: Path,
) -> Retrain:
    """Export, train, evaluate, and promote if the report recommends a candidate (on every
    replica at ``replicas``, or on none: :func:`cvm_rl.loop.replicas.promote`)."""
    from cvm_rl.bundle import load_bundle, save_bundle
    from cvm_rl.logs.convert import decisions_from_table
    from cvm_rl.logs.export import export_parquet, read_export
    from cvm_rl.logs.store import now_us
    from cvm_rl.loop.engine import SimulatedCampaignEngine
    from cvm_rl.loop.replicas import promote
    from cvm_rl.ope.evaluate import evaluate_candidates
    from cvm_rl.ope.inputs import LogSource, OpeInputError, status_counts
    from cvm_rl.ope.report import write_report
    from cvm_rl.ope.reward_model import CrossFittedRewardModel

    started = time.perf_counter()
    out = config.out
    export_dir = out / "export"
    # Every outcome is reported within its week, so a window of 0 leaves nothing pending.
    export_parquet(log_path, export_dir, outcome_window_s=0.0, now_us=now_us(), record=True)
    table = read_export(export_dir)
    decisions = decisions_from_table(table)
    purchase_of = dict(
        zip(table.column("event_id").to_pylist(), table.column("purchase").to_pylist(), strict=True)
    )
    purchased = np.array([bool(purchase_of[e]) for e in decisions.event_ids])
    trains = customer_fold(decisions.customer_ids, config.seed, config.train_share)
    weeks = np.array([SimulatedCampaignEngine.week_of(e) for e in decisions.event_ids])
    first_week = period - config.retrain_every  # 0-based weeks of the last K periods
    evaluated = (~trains) & (weeks >= first_week) & (decisions.model_ids == serving.model_id)
    train = decisions.take(np.flatnonzero(trains))
    evaluate = decisions.take(np.flatnonzero(evaluated))

    policies: dict[str, Policy] = {}
    sources: dict[str, str] = {}
    paths: dict[str, Path] = {}
    model_ids: dict[str, str] = {}
    for name in config.candidates:
        policy = build_candidate(name, scenario, train, purchased[trains], config)
        path = save_bundle(
            policy,
            out / "bundles" / f"p{period}-{name}",
            algo=name,
            training_config={
                "loop_period": period,
                "candidate": name,
                "train_rows": len(train),
                "seed": config.seed,
            },
        )
        bundle = load_bundle(path, seed=config.seed)  # evaluate what the service would load
        policies[name] = served_with_epsilon(scenario, bundle.policy, config.epsilon)
        sources[name] = f"{path} ({bundle.model_id})"
        paths[name], model_ids[name] = path, bundle.model_id

    report_dir = out / "ope" / f"p{period}"
    logger_week = Estimate(math.nan, math.nan, math.nan)
    try:
        ope = evaluate_candidates(
            evaluate,
            policies,
            scenario=scenario,
            alpha=config.alpha,
            n_bootstrap=config.n_bootstrap,
            seed=config.seed + period,
            reward_model=CrossFittedRewardModel(seed=config.seed + period),
            source=LogSource.from_counts(
                export_dir, "export", status_counts(["reported"] * len(evaluate))
            ),
            sources=sources,
        )
    except OpeInputError as exc:
        return Retrain(
            period,
            serving.label,
            len(train),
            len(evaluate),
            config.retrain_every,
            logger_week,
            (),
            None,
            None,
            f"not evaluated ({exc}); kept the serving policy",
            "",
            time.perf_counter() - started,
        )
    write_report(ope, report_dir)
    evaluations = _evaluations(ope, paths, model_ids)
    eval_weeks = ope.data.weeks or config.retrain_every
    if ope.logger.per_customer is not None:
        logger_week = _interval(ope.logger.per_customer, eval_weeks)
    recommendation = ope.recommendation
    considered = max(
        evaluations, key=lambda c: c.lift.low if math.isfinite(c.lift.low) else -math.inf
    ).name
    promoted: str | None = None
    if recommendation.candidate is not None:
        name = recommendation.candidate
        if model_ids[name] == serving.model_id:
            reason = f"{name} is the serving model already; {recommendation.reason}"
        else:
            results = promote(replicas, paths[name], model_id=model_ids[name])
            if not all(r.ok for r in results):
                raise RuntimeError(
                    f"promoting {name} failed: " + "; ".join(r.line() for r in results)
                )
            promoted = name
            reason = recommendation.reason
    else:
        reason = recommendation.reason
    return Retrain(
        period=period,
        serving=serving.label,
        train_rows=len(train),
        eval_rows=len(evaluate),
        eval_weeks=eval_weeks,
        logger_value_per_week=logger_week,
        candidates=evaluations,
        considered=considered,
        promoted=promoted,
        reason=reason,
        report=str(report_dir / "report.html"),
        seconds=time.perf_counter() - started,
    )


def _evaluations(
    ope: OpeResult, paths: Mapping[str, Path], model_ids: Mapping[str, str]
) -> tuple[CandidateEvaluation, ...]:
    weeks = ope.data.weeks or 1
    out = []
    for c in ope.candidates:
        if c.self_check:
            continue
        horizon, primary = c.primary
        # A long-run value is per customer over the evaluated weeks; a single-step one per
        # decision, i.e. per customer-week.
        scale = weeks if horizon == "long_run" else 1
        out.append(
            CandidateEvaluation(
                name=c.name,
                bundle=str(paths[c.name]),
                model_id=model_ids[c.name],
                estimator=primary.estimator.upper(),
                lift=_interval(primary.lift),
                value_per_week=_interval(primary.value, scale),
                verdict=c.verdict,
            )
        )
    return tuple(out)


def plot_loop(result: LoopResult, path: str | Path) -> Path:
    """Value per customer each period (with the estimated value without exploration), the
    retrains marked (a promotion solid, a kept policy dotted) with the promoted candidate's OPE
    estimate of its value per customer-week; a PNG at ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from cvm_rl.plots import DPI

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(9, 4.5), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
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
        if retrain.promoted is None:
            ax.axvline(x, color="grey", linestyle=":", linewidth=1)
            continue
        ax.axvline(x, color="tab:green", linewidth=1.5)
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
    ax.set_xlabel("period (week)")
    ax.set_ylabel("value per customer (net margin)")
    ax.set_title(
        f"closed loop: {result.config.customers:,} customers, retrain every "
        f"{result.config.retrain_every} weeks (green: promotion with its OPE estimate; "
        "dotted: kept)",
        fontsize=9,
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(out, format="png", dpi=DPI)
    fig.clear()
    return out
