"""The closed loop: serve, log, retrain offline from the log, evaluate off-policy, promote.

:func:`run_loop` starts ``cvm serve`` as its own process (port 0, its decision log and bundle
root under ``out/``) on the starting campaign (the rule-based policy) with epsilon
exploration, and drives a :class:`~cvm_rl.loop.engine.SimulatedCampaignEngine` (a client of
the service) one period, a simulated week, at a time: ``DecideBatch`` for every customer of the
base (in requests of at most ``batch_rows``), the decisions executed in the simulator, the
outcomes reported. Every ``retrain_every`` periods, while the service keeps serving:

1. **Export** the decision log to Parquet (``out/export``; recorded in the log, as ``cvm logs
   export`` does).
2. **Train candidates from the log alone**, on the logs of one half of the customers (a seeded
   split by customer id): ``clv_planner``, the CLV planner with a response estimate fitted on
   the logged decisions (:func:`~cvm_rl.loop.candidates.response_from_log`: each action's
   uplift of the week's purchase rate over no contact, from the logged propensities); ``fqi``,
   an offline long-run policy by fitted Q iteration (:mod:`cvm_rl.policies.fitted_q`);
   ``q_improve``, greedy on the serving policy's Q-function by fitted Q evaluation (a
   policy-iteration step); ``dr_bandit``, a contextual bandit learned from the logged
   propensities by doubly robust policy learning on the long-run labels; ``linucb``, a
   contextual bandit (per-action ridge regression of the week's reward, greedy); ``greedy``,
   the greedy uplift model; and the untrained ``rules``, ``no_contact`` and ``random`` (a
   deliberately worse candidate). Each is saved as a bundle under the bundle root.
3. **Evaluate them off-policy against the serving policy** with the OPE report
   (:func:`cvm_rl.ope.evaluate.evaluate_candidates` and :func:`cvm_rl.ope.report.write_report`:
   ``out/ope/pN/report.html``) on the other half's decisions made by the serving model, as
   :data:`~cvm_rl.loop.config.ESTIMANDS` says (by default each decision's one-step advantage
   in long-run value).
   A candidate is valued as it would be served: with the same epsilon exploration on its
   greedy action (the service keeps its exploration across reloads), so the lift compares
   like with like.
4. **Promote** through the service's hot reload (``DecisionAdmin.LoadBundle``, by
   :func:`cvm_rl.loop.replicas.promote`, which confirms it) only the report's
   recommendation: the candidate with the highest lower confidence bound of its primary
   lift, if that bound is above zero and (under ``advantage``, unless ``confirm_window`` is
   off) the candidate's whole-policy lift over the last ``retrain_every`` weeks is above zero
   too (:func:`window_veto`); otherwise keep the serving policy and record the reason.

Each period's row (:class:`PeriodRow`) records the model served, decisions made and logged,
the realized value per customer, the explored share and exploration's cost (the week's
reward per customer the served model would have earned without exploration, estimated by
self-normalized importance sampling on its unexplored decisions, minus what was earned), and
the realized long-run value per customer to date (rewards plus the residual value, measured
in the simulator: :class:`~cvm_rl.loop.engine.RealizedValue`) of the loop and of a control
arm, the starting campaign served alone to the same customers in process. A promotion's
realized lift is a difference in differences against the control (:meth:`LoopResult.promotions`).
Every draw is seeded: the population and its dynamics by ``seed``, the service's exploration
by (model version, event id), the split, the models and the bootstrap by ``seed``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cvm_rl.loop.candidates import (
    build_candidate,
    clv_surrogate,
    customer_fold,
    fit_q_function,
    long_run_labels,
    served_with_epsilon,
    untrained,
)
from cvm_rl.loop.config import LoopConfig
from cvm_rl.loop.results import (
    CandidateEvaluation,
    Estimate,
    LoopResult,
    PeriodRow,
    Retrain,
    interval_estimate,
)
from simulator.core import RESIDUAL_WEEKLY_DISCOUNT

if TYPE_CHECKING:
    from cvm_rl.logs.arrays import LoggedDecisions
    from cvm_rl.ope.results import OpeResult
    from cvm_rl.policies.base import Policy
    from simulator.config import Scenario


def _count_decisions(log_path: Path) -> int:
    from cvm_rl.logs.reader import open_read_only

    with open_read_only(log_path) as reader:
        (count,) = reader.db.execute("SELECT COUNT(*) FROM decisions").fetchone()
    return int(count)


@dataclass
class _Serving:
    label: str
    model_id: str
    bundle: Path


def run_loop(config: LoopConfig, *, echo: Callable[[str], None] | None = None) -> LoopResult:
    """Run the closed loop of ``config`` (see the module docstring); ``echo`` gets a line per
    period and per retrain."""
    from cvm_rl.bundle import save_bundle
    from cvm_rl.cli.process import serve_process
    from cvm_rl.loop.engine import SimulatedCampaignEngine, simulate_control
    from server.client import DecisionClient
    from simulator.config import load_scenario

    say = echo or (lambda line: None)
    started = time.perf_counter()
    scenario = load_scenario(config.scenario)
    if config.periods > scenario.horizon_weeks:
        raise ValueError(
            f"periods must be <= the scenario's horizon ({scenario.horizon_weeks} weeks): past "
            f"it the simulator draws new customers; got {config.periods}"
        )
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    bundles = out / "bundles"
    bundles.mkdir(exist_ok=True)
    log_path = out / "decisions.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{log_path}{suffix}").unlink(missing_ok=True)
    result = LoopResult(config, log_path=str(log_path))
    if config.control:
        # The starting campaign served alone (with the same exploration) to the same
        # customers: what the loop's value is compared with.
        starting = served_with_epsilon(
            scenario, untrained(config.start, scenario, config.seed), config.epsilon
        )
        result.control = simulate_control(
            starting,
            scenario,
            customers=config.customers,
            seed=config.seed,
            weeks=config.periods,
        )
    start = save_bundle(
        untrained(config.start, scenario, config.seed),
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
    with serve_process(args, out) as server:
        with DecisionClient(server.target) as client:
            serving = _Serving(config.start, client.policy_info().model_id, start)
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
                    long_run_value=float(engine.value.history[period].mean()),
                    control_long_run_value=(
                        float(result.control.history[period].mean())
                        if result.control is not None
                        else math.nan
                    ),
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
                        chosen = retrain.evaluation(retrain.promoted)
                        assert chosen is not None
                        serving = _Serving(
                            f"{retrain.promoted}@p{period}",
                            client.policy_info().model_id,
                            Path(chosen.bundle),
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
            result.realized = engine.value
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
    train = decisions.take(np.flatnonzero(trains))
    serving_q = None
    if "q_improve" in config.candidates:
        serving_policy = served_with_epsilon(
            scenario, load_bundle(serving.bundle, seed=config.seed).policy, config.epsilon
        )
        serving_q = fit_q_function(config, scenario, train, serving_policy, period)
    surrogate = clv_surrogate(scenario) if config.tail_value else None

    def labelled(rows: LoggedDecisions) -> LoggedDecisions:
        # Discounted as the realized long-run value is (see ESTIMANDS).
        return long_run_labels(rows, RESIDUAL_WEEKLY_DISCOUNT, surrogate, weeks=config.label_weeks)

    labelled_train = labelled(train) if "dr_bandit" in config.candidates else None
    # The held-out customers' decisions made by the serving model: what OPE reads.
    held_out = (~trains) & (decisions.model_ids == serving.model_id)
    window = None
    if config.estimand == "window" or config.confirm_window:
        # Those of the last K periods: the window the whole-policy (sequential) estimators
        # read.
        weeks = np.array([SimulatedCampaignEngine.week_of(e) for e in decisions.event_ids])
        first_week = period - config.retrain_every  # 0-based weeks of the last K periods
        window = decisions.take(np.flatnonzero(held_out & (weeks >= first_week)))
    if config.estimand == "advantage":
        # Every one of them, labelled with its long-run value.
        evaluate = labelled(decisions.take(np.flatnonzero(held_out)))
    else:
        assert window is not None
        evaluate = window

    policies: dict[str, Policy] = {}
    sources: dict[str, str] = {}
    paths: dict[str, Path] = {}
    model_ids: dict[str, str] = {}
    for name in config.candidates:
        policy = build_candidate(
            name,
            scenario,
            train,
            purchased[trains],
            config,
            serving_q=serving_q,
            labelled=labelled_train,
            period=period,
        )
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
            long_run=config.estimand == "window",
            # A customer's labelled weeks share its fitted future: resample customers.
            resample_customers=config.estimand == "advantage",
            # Long-run labels are nonlinear in the state (the CLV terms): boosted trees.
            reward_model=CrossFittedRewardModel(
                regressor="hist_gradient_boosting" if config.estimand == "advantage" else "ridge",
                seed=config.seed + period,
            ),
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
    if config.estimand == "advantage":
        logger_week = interval_estimate(ope.logger.per_decision)
    elif ope.logger.per_customer is not None:
        logger_week = interval_estimate(ope.logger.per_customer, eval_weeks)
    recommendation = ope.recommendation
    considered = max(
        evaluations, key=lambda c: c.lift.low if math.isfinite(c.lift.low) else -math.inf
    ).name
    promoted: str | None = None
    confirmation: CandidateEvaluation | None = None
    if recommendation.candidate is not None:
        name = recommendation.candidate
        same = model_ids[name] == serving.model_id
        if config.estimand == "advantage" and config.confirm_window and not same:
            assert window is not None
            confirmation = _confirm_window(
                config, scenario, period, window, name, policies[name], sources, paths, model_ids
            )
        vetoed = window_veto(confirmation, config)
        if same:
            reason = f"{name} is the serving model already; {recommendation.reason}"
        elif vetoed is not None:
            reason = f"{recommendation.reason}; but {vetoed}; kept the serving policy"
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
        confirmation=confirmation,
    )


def window_veto(confirmation: CandidateEvaluation | None, config: LoopConfig) -> str | None:
    """Why the whole-policy evaluation ``confirmation`` vetoes a promotion (its lift's lower
    bound is not above zero, or could not be computed), or None (no veto, or none asked)."""
    if confirmation is None or confirmation.lift.low > 0:
        return None
    return (
        f"its whole-policy lift over the last {config.retrain_every} weeks is not above 0 with "
        f"{1 - config.alpha:.0%} confidence: {confirmation.lift.format(signed=True)} per "
        f"customer-week ({confirmation.estimator})"
    )


def _confirm_window(
    config: LoopConfig,
    scenario: Scenario,
    period: int,
    window: LoggedDecisions,
    name: str,
    policy: Policy,
    sources: Mapping[str, str],
    paths: Mapping[str, Path],
    model_ids: Mapping[str, str],
) -> CandidateEvaluation:
    """The recommended candidate valued as a whole policy over the window's logged rewards
    (the sequential estimators; report in ``out/ope/pN-window``); a lift that is not above
    zero vetoes the promotion (NaN bounds, e.g. too few customers, veto too)."""
    from cvm_rl.ope.evaluate import evaluate_candidates
    from cvm_rl.ope.inputs import OpeInputError
    from cvm_rl.ope.report import write_report
    from cvm_rl.ope.reward_model import CrossFittedRewardModel

    nan = Estimate(math.nan, math.nan, math.nan)
    try:
        ope = evaluate_candidates(
            window,
            {name: policy},
            scenario=scenario,
            alpha=config.alpha,
            n_bootstrap=config.n_bootstrap,
            seed=config.seed + period,
            reward_model=CrossFittedRewardModel(seed=config.seed + period),
            self_check=False,
            sources={name: sources[name]},
        )
    except OpeInputError:
        return CandidateEvaluation(name, str(paths[name]), model_ids[name], "none", nan, nan, "")
    write_report(ope, config.out / "ope" / f"p{period}-window")
    (evaluation,) = _evaluations(ope, paths, model_ids)
    return evaluation


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
                lift=interval_estimate(primary.lift, scale),
                value_per_week=interval_estimate(primary.value, scale),
                verdict=c.verdict,
            )
        )
    return tuple(out)
