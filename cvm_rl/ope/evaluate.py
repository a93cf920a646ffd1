"""Candidates against the logging policy, in memory: every estimator, the lift, the
diagnostics and a recommendation, from one decision log (:func:`evaluate_candidates`).

For each candidate policy:

* single step (value per decision: the week's reward): DM, IPS, SNIPS, DR, SNDR, Switch-DR
  and DRos, with a cross-fitted reward model on ``FeatureTransform.scaled`` features
  (:mod:`cvm_rl.ope.estimators`, summed by :mod:`cvm_rl.ope.single_step_sums`);
* long run (value per customer: the sum of its rewards over the logged weeks): PDIS, WPDIS,
  FQE, sequential DR and WDR, MIS, MDR and WMDR over per-customer trajectories
  (:mod:`cvm_rl.ope.long_run`);
* the lift over the logger, paired: single step, the estimate minus the logged mean reward on
  the SAME bootstrap resamples of rows; long run, the estimate minus the logged mean return
  per customer on the same resamples of customers;
* diagnostics (effective sample size, weight quantiles, support, the effective sample size of
  the cumulative weights week by week) with plain-language warnings, DM and DR values by
  lifecycle stage and segment (the observation's ``stage_*`` and ``segment_*`` one-hot
  features; none by segment where segments are latent), and the share of decisions per channel
  under the logger and the candidate.

When every logged row holds the logger's whole distribution, the logger itself is evaluated
as one more candidate (:data:`~cvm_rl.ope.candidates.LOGGER_CHECK`): a self-check whose lift
must be about 0. The primary estimators and the recommendation are those of
:mod:`cvm_rl.ope.estimators`, :mod:`cvm_rl.ope.long_run` and :mod:`cvm_rl.ope.recommendation`.

Long-run estimators hold every trajectory in memory; an export too large for that is
evaluated single-step by :func:`cvm_rl.ope.streaming.evaluate_export_streaming`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from cvm_rl.logs.arrays import LoggedDecisions
from cvm_rl.ope.candidates import LOGGER_CHECK, candidate_distributions, check_candidates
from cvm_rl.ope.formatting import format_decision_time
from cvm_rl.ope.inputs import MEMORY_NOTE, LogInputError, LogSource, check_decisions
from cvm_rl.ope.intervals import (
    Interval,
    bootstrap_multiplicities,
    check_alpha,
    check_n_bootstrap,
    clustered_multiplicities,
    percentile_interval,
)
from cvm_rl.ope.long_run import (
    customer_trajectories,
    long_run_estimates,
    long_run_primary,
    long_run_warnings,
    trajectory_distribution,
)
from cvm_rl.ope.recommendation import finish_result
from cvm_rl.ope.results import DataSummary, LoggerValue, OpeResult, Settings, model_counts
from cvm_rl.ope.reward_model import CrossFittedRewardModel
from cvm_rl.ope.single_step_sums import (
    CandidateSums,
    LoggedRows,
    RowGroups,
    single_step_result,
)
from cvm_rl.policies.base import Policy
from cvm_rl.policies.features import FeatureTransform
from simulator.config import Scenario

ProgressCallback = Callable[[int, int, str], None]
"""Called as ``progress(done, total, description)`` before each step of an evaluation."""


def evaluate_candidates(
    decisions: LoggedDecisions,
    candidates: Mapping[str, Policy],
    *,
    scenario: Scenario,
    alpha: float = 0.05,
    n_bootstrap: int = 200,
    seed: int = 0,
    long_run: bool = True,
    resample_customers: bool = False,
    reward_model: CrossFittedRewardModel | None = None,
    self_check: bool = True,
    source: LogSource | None = None,
    sources: Mapping[str, str] | None = None,
    progress: ProgressCallback | None = None,
) -> OpeResult:
    """Every candidate against the logger of ``decisions``, in memory (see the module
    docstring). ``scenario`` gives the reward and Q models their feature scaling;
    ``sources`` describes each candidate (e.g. its bundle path); ``source`` the log.
    ``resample_customers``: the single-step intervals resample customers (all their rows
    together) instead of rows, for rows that are not independent within a customer."""
    alpha = check_alpha(alpha)
    check_n_bootstrap(n_bootstrap)
    check_decisions(decisions)
    check_candidates(decisions, candidates)
    source = source or LogSource()
    sources = sources or {}
    reward_model = reward_model or CrossFittedRewardModel(seed=seed)
    data = decisions.data
    n, n_actions = len(decisions), len(decisions.action_names)
    probabilities = decisions.probabilities
    complete = probabilities is not None and not np.isnan(probabilities).any()
    logging_dist = probabilities if complete else None

    n_candidates = len(candidates) + (1 if self_check and logging_dist is not None else 0)
    total = 2 + n_candidates * (2 if long_run else 1) + (1 if long_run else 0)
    done = 0

    def step(description: str) -> None:
        nonlocal done
        if progress is not None:
            progress(done, total, description)
        done += 1

    step("fitting the reward model")
    features = FeatureTransform.from_scenario(scenario).scaled(data.obs)
    fit = reward_model.fit_predict(features, data.actions, data.rewards, n_actions)
    groups = RowGroups.of(decisions.feature_names, decisions.action_names)
    rows = LoggedRows.of(decisions, fit.estimated_rewards, logging_dist, groups)
    step("candidate distributions")
    names = [*candidates, *([LOGGER_CHECK] if self_check and logging_dist is not None else [])]
    dists = candidate_distributions(names, candidates, decisions, logging_dist)

    trajectories = returns = logged_return_reps = None
    logger_return: Interval | None = None
    if long_run:
        step("per-customer trajectories")
        trajectories = customer_trajectories(decisions)
        if trajectories.n_customers < 4:
            raise LogInputError(
                f"customer_id: long-run estimators need at least 4 customers (cross-fitted "
                f"over 2 folds), the log has {trajectories.n_customers}; evaluate single-step "
                "only"
            )
        returns = trajectories.returns()
        logged_return_reps = np.concatenate(
            [
                m @ returns / m.sum(axis=1)
                for m in bootstrap_multiplicities(trajectories.n_customers, n_bootstrap, seed)
            ]
        )
        logger_return = percentile_interval(float(returns.mean()), logged_return_reps, alpha)

    results = []
    for name, dist in dists.items():
        step(f"{name}: single-step estimators")
        sums = CandidateSums(groups, n_bootstrap)
        blocks = (
            clustered_multiplicities(decisions.customer_ids.astype(str), n_bootstrap, seed)
            if resample_customers
            else bootstrap_multiplicities(n, n_bootstrap, seed)
        )
        sums.add(rows, dist, blocks)
        result, logger_reward = single_step_result(
            name,
            sums,
            decisions,
            dist,
            logging_dist,
            alpha=alpha,
            weight_rows=f"all {n:,} rows",
            source=sources.get(name, ""),
            long_run_reason="long-run estimators not run",
        )
        if trajectories is not None and returns is not None and logged_return_reps is not None:
            step(f"{name}: long-run estimators")
            long_estimates, long_diagnostics = long_run_estimates(
                trajectories,
                trajectory_distribution(trajectories, dist),
                returns,
                logged_return_reps,
                scenario=scenario,
                alpha=alpha,
                n_bootstrap=n_bootstrap,
                seed=seed,
            )
            primary, reason = long_run_primary(long_diagnostics)
            result = dataclasses.replace(
                result,
                long_run=long_estimates,
                long_run_primary=primary,
                long_run_primary_reason=reason,
                long_run_diagnostics=long_diagnostics,
                warnings=result.warnings + tuple(long_run_warnings(long_diagnostics)),
            )
        results.append(result)
    counts = np.unique(decisions.customer_ids.astype(str), return_counts=True)[1]
    summary = DataSummary(
        source=source,
        decisions=n,
        customers=len(counts),
        weeks=int(counts.max()),
        mean_weeks=float(counts.mean()),
        first_decision=format_decision_time(int(decisions.decided_at_us.min())),
        last_decision=format_decision_time(int(decisions.decided_at_us.max())),
        models=model_counts(decisions.model_ids),
        logging_probabilities=complete,
        reward_model_rows=n,
    )
    settings = Settings(
        alpha,
        n_bootstrap,
        seed,
        long_run,
        f"percentile bootstrap, {n_bootstrap} resamples (seed {seed}) of "
        f"{'customers' if resample_customers else 'rows'} for single-step values and of "
        "customers for long-run values; each lift from the same resamples as its estimate "
        "(paired); nuisance models fitted once",
    )
    notes = [MEMORY_NOTE] if long_run else []
    if progress is not None:
        progress(total, total, "done")
    return finish_result(
        settings, summary, LoggerValue(logger_reward, logger_return), fit, results, notes
    )
