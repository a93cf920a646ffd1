"""Run policies on simulated customers and summarize long-run value with confidence intervals."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import stats

from cvm_rl.policies.base import Policy
from cvm_rl.rollout import rollout
from simulator.config import STAGES, Scenario

GroupBy = Literal["segment", "stage"]
GROUP_BY: tuple[str, ...] = ("segment", "stage")

METRICS: tuple[str, ...] = (
    "value",
    "residual_value",
    "long_run_value",
    "revenue",
    "discount_cost",
    "contact_cost",
    "contacts",
    "opt_out_rate",
    "churn_rate",
)
"""Per-customer metrics: net value over the horizon (margin - discount - contact cost); the
residual value each customer carries out of it (expected margin of the next 52 weeks with no
contact, discounted at 10 % a year, from the latent state: ``Population.
expected_no_contact_margin``; NaN where a customer had not yet arrived); the long-run value,
their sum; revenue, costs, contacts per customer, share of customers who opted out of any
channel, and share of customers alive at the start who dropped out by the end (latent)."""


@dataclass(frozen=True)
class Breakdown:
    """Per-seed breakdowns of one policy's evaluation (first axis = seed, in run order).

    ``*_value`` is the net value per customer of the group over the horizon (NaN where a seed
    drew no customer into the group); ``*_count`` the number of customers in it, so
    ``sum(count * value) / n_customers`` is the overall value. Segments are latent and fixed;
    stages are the observable lifecycle stage at the start of the horizon. ``action_counts``
    counts executed actions per (stage at decision time, action) over all weeks and customers.
    """

    segments: list[str]
    stages: list[str]
    actions: list[str]
    segment_value: np.ndarray  # (n_seeds, n_segments)
    segment_count: np.ndarray  # (n_seeds, n_segments)
    stage_value: np.ndarray  # (n_seeds, n_stages)
    stage_count: np.ndarray  # (n_seeds, n_stages)
    action_counts: np.ndarray  # (n_seeds, n_stages, n_actions)

    def groups(self, by: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(names, per-seed value per customer, per-seed customer count) by segment or stage."""
        if by == "segment":
            return self.segments, self.segment_value, self.segment_count
        if by == "stage":
            return self.stages, self.stage_value, self.stage_count
        raise ValueError(f"by: expected one of {list(GROUP_BY)}, got {by!r}")


@dataclass(frozen=True)
class PolicyResult:
    policy: str
    seeds: list[int]
    per_seed: dict[str, np.ndarray] = field(repr=False)
    breakdown: Breakdown | None = field(default=None, repr=False)

    def mean(self, metric: str) -> float:
        return float(np.mean(self.per_seed[metric]))

    def interval(self, metric: str, confidence: float = 0.95) -> tuple[float, float]:
        """Student-t interval of the mean over seeds (a point when only one seed ran)."""
        return t_interval(self.per_seed[metric], confidence)

    def lift_interval(
        self, baseline: PolicyResult, metric: str = "value", confidence: float = 0.95
    ) -> tuple[float, float, float]:
        """Mean and paired interval of the difference to ``baseline`` over the same seeds."""
        if self.seeds != baseline.seeds:
            raise ValueError("baseline: a paired lift needs results on the same seeds")
        diff = self.per_seed[metric] - baseline.per_seed[metric]
        return (float(np.mean(diff)), *t_interval(diff, confidence))

    def require_breakdown(self) -> Breakdown:
        if self.breakdown is None:
            raise ValueError(
                f"results: policy {self.policy!r} has no breakdown (evaluate it with "
                "evaluate_policies to collect one)"
            )
        return self.breakdown

    def group_values(
        self, by: str, confidence: float = 0.95
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(group names, mean value per customer over seeds (G,), interval (G, 2)) by
        ``"segment"`` or ``"stage"``; seeds that drew nobody into a group are skipped for it
        (all NaN when no seed did)."""
        names, values, _ = self.require_breakdown().groups(by)
        means = np.full(len(names), np.nan)
        bounds = np.full((len(names), 2), np.nan)
        for g in range(len(names)):
            column = values[:, g][np.isfinite(values[:, g])]
            if len(column):
                means[g] = column.mean()
                bounds[g] = t_interval(column, confidence)
        return names, means, bounds

    def group_shares(self, by: str) -> tuple[list[str], np.ndarray]:
        """(group names, share of customers in each group (G,), pooled over seeds)."""
        names, _, counts = self.require_breakdown().groups(by)
        total = counts.sum()
        return names, counts.sum(axis=0) / max(total, 1)

    def action_mix(self, normalize: bool = True) -> np.ndarray:
        """(n_stages, n_actions) executed actions by stage at decision time, summed over
        seeds; with ``normalize`` each stage's row is a share of its decisions (0 for stages
        no customer was ever in)."""
        counts = self.require_breakdown().action_counts.sum(axis=0).astype(float)
        if not normalize:
            return counts
        totals = counts.sum(axis=1, keepdims=True)
        return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def t_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (a point for a single value)."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, mean
    half = float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * stats.sem(values))
    return mean - half, mean + half


def run_episode(
    policy: Policy,
    scenario: Scenario,
    n_customers: int,
    seed: int,
    *,
    on_step: Callable[[dict], None] | None = None,
) -> dict[str, float]:
    """One horizon on a fresh population drawn with ``seed``; per-customer metric means."""
    return run_episode_detailed(policy, scenario, n_customers, seed, on_step=on_step)[0]


def run_episode_detailed(
    policy: Policy,
    scenario: Scenario,
    n_customers: int,
    seed: int,
    *,
    on_step: Callable[[dict], None] | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """:func:`run_episode` plus this seed's breakdown arrays (the fields of
    :class:`Breakdown` without the seed axis), from a few O(N) numpy ops per week."""
    n_stages, n_actions = len(STAGES), scenario.n_actions
    action_counts = np.zeros(n_stages * n_actions, dtype=np.int64)
    value = np.zeros(n_customers)
    totals = dict.fromkeys(("value", "revenue", "discount_cost", "contact_cost", "contacts"), 0.0)
    opted_out = np.zeros(n_customers, dtype=bool)
    for t in rollout(policy, scenario, n_customers=n_customers, seed=seed, oracle_info=True):
        if t.week == 0:
            alive_at_start = t.info["oracle"]["alive"] & t.info["oracle"]["present"]
            segment = t.info["oracle"]["segment"]
            # info["stage"] is the index of the observation's stage_* one-hot.
            start_stage = t.info["stage"].astype(np.int64)
        info = t.next_info
        stage = t.info["stage"].astype(np.int64)  # the stage the policy decided in
        action_counts += np.bincount(
            stage * n_actions + info["executed_action"], minlength=n_stages * n_actions
        )
        value += t.reward
        totals["value"] += t.reward.sum()
        totals["revenue"] += info["revenue"].sum()
        totals["discount_cost"] += info["discount_cost"].sum()
        totals["contact_cost"] += info["contact_cost"].sum()
        totals["contacts"] += np.count_nonzero(info["executed_action"])
        opted_out |= info["opted_out"]
        if on_step is not None:
            on_step(info)
    dropped = alive_at_start & ~info["oracle"]["alive"]
    result = {k: v / n_customers for k, v in totals.items()}
    residual = info["oracle"].get("residual_value")
    result["residual_value"] = float(np.mean(residual)) if residual is not None else np.nan
    result["long_run_value"] = result["value"] + result["residual_value"]
    result["opt_out_rate"] = float(opted_out.mean())
    result["churn_rate"] = float(dropped.sum() / max(alive_at_start.sum(), 1))
    n_segments = len(scenario.segment_names)
    segment_count = np.bincount(segment, minlength=n_segments)
    stage_count = np.bincount(start_stage, minlength=n_stages)
    breakdown = {
        "segment_value": _per_member(
            np.bincount(segment, weights=value, minlength=n_segments), segment_count
        ),
        "segment_count": segment_count,
        "stage_value": _per_member(
            np.bincount(start_stage, weights=value, minlength=n_stages), stage_count
        ),
        "stage_count": stage_count,
        "action_counts": action_counts.reshape(n_stages, n_actions),
    }
    return result, breakdown


def _per_member(totals: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Group totals divided by group sizes, NaN for empty groups."""
    return np.divide(totals, counts, out=np.full(len(totals), np.nan), where=counts > 0)


def evaluate_policies(
    policies: Sequence[Policy | Sequence[Policy]],
    scenario: Scenario,
    *,
    n_customers: int = 10_000,
    seeds: Sequence[int] = (1000, 1001, 1002, 1003, 1004),
) -> list[PolicyResult]:
    """Every policy on the same held-out populations (one per seed, common random numbers).

    An entry may also be a sequence of policies, one per seed (e.g. the same learner trained
    with a different training seed each): the i-th runs on ``seeds[i]``, so the interval over
    seeds includes the training randomness and lifts stay paired by population."""
    if n_customers < 1:
        raise ValueError(f"n_customers must be >= 1, got {n_customers}")
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    results = []
    for entry in policies:
        per_seed_policies = list(entry) if isinstance(entry, Sequence) else [entry] * len(seeds)
        if len(per_seed_policies) != len(seeds) or len({p.name for p in per_seed_policies}) != 1:
            raise ValueError(
                f"policies: a per-seed entry needs {len(seeds)} policies of one name, got "
                f"{[p.name for p in per_seed_policies]}"
            )
        policy = per_seed_policies[0]
        runs = [
            run_episode_detailed(p, scenario, n_customers, seed)
            for p, seed in zip(per_seed_policies, seeds, strict=True)
        ]
        per_seed = {m: np.array([run[m] for run, _ in runs]) for m in METRICS}
        stacked = {key: np.stack([parts[key] for _, parts in runs]) for key in runs[0][1]}
        breakdown = Breakdown(
            segments=scenario.segment_names,
            stages=list(STAGES),
            actions=scenario.action_names(),
            segment_value=stacked["segment_value"],
            segment_count=stacked["segment_count"],
            stage_value=stacked["stage_value"],
            stage_count=stacked["stage_count"],
            action_counts=stacked["action_counts"],
        )
        results.append(PolicyResult(policy.name, list(seeds), per_seed, breakdown))
    return results


def lift_share(
    result: PolicyResult,
    baseline: PolicyResult,
    reference: PolicyResult,
    metric: str = "value",
) -> float | None:
    """Share of ``reference``'s lift over ``baseline`` that ``result`` captures.

    A ratio of means over seeds, (mean(result) - mean(baseline)) / (mean(reference) -
    mean(baseline)), not a mean of per-seed ratios: a seed where the reference barely beats
    the baseline would make its ratio explode. ``None`` when the reference's mean lift is not
    positive (no lift to share).
    """
    denominator = reference.mean(metric) - baseline.mean(metric)
    if not denominator > 0:
        return None
    return (result.mean(metric) - baseline.mean(metric)) / denominator


def lift_share_interval(
    result: PolicyResult,
    baseline: PolicyResult,
    reference: PolicyResult,
    metric: str = "value",
    confidence: float = 0.95,
) -> tuple[float, float, float] | None:
    """:func:`lift_share` with its interval: the ratio of the mean paired lifts over seeds and
    a delta-method interval from their covariance (Student t over seeds; a point for one
    seed). ``None`` when the reference's mean lift is not positive."""
    share = lift_share(result, baseline, reference, metric)
    if share is None:
        return None
    if result.seeds != baseline.seeds or reference.seeds != baseline.seeds:
        raise ValueError("results: a share of lift needs results on the same seeds")
    lift = result.per_seed[metric] - baseline.per_seed[metric]
    reference_lift = reference.per_seed[metric] - baseline.per_seed[metric]
    n = len(lift)
    if n < 2:
        return share, share, share
    gradient = np.array([1.0, -share]) / reference_lift.mean()
    variance = float(gradient @ (np.cov(lift, reference_lift) / n) @ gradient)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * np.sqrt(variance)
    return share, share - half, share + half


def _find(results: Sequence[PolicyResult], name: str | None) -> PolicyResult | None:
    return next((r for r in results if r.policy == name), None)


def format_table(
    results: Sequence[PolicyResult],
    baseline: str | None = "no_contact",
    reference: str | None = "oracle",
) -> str:
    """Markdown table: value with 95 % CI over seeds, lift over ``baseline`` with a paired
    95 % CI (every policy ran on the same seeded populations), the share of ``reference``'s
    lift over ``baseline`` each policy captures (:func:`lift_share`; "n/a" without both or
    when the reference does not beat the baseline), and the other metrics."""
    base = _find(results, baseline)
    ref = _find(results, reference)
    head = (
        f"| policy | value/customer | 95% CI | lift vs {baseline or 'baseline'} [paired 95% CI] "
        f"| share of {reference or 'reference'} lift | residual | long-run value "
        f"| long-run lift [paired 95% CI] | revenue | discount | contact "
        "| contacts | opt-out | churn |"
    )
    lines = [head, "|---|" + "---:|" * 13]
    for r in results:
        low, high = r.interval("value")
        lift = share = long_lift = "n/a"
        if base is not None:
            mean, lift_low, lift_high = r.lift_interval(base)
            lift = f"{mean:+.3f} [{lift_low:+.3f}, {lift_high:+.3f}]"
            mean, lift_low, lift_high = r.lift_interval(base, "long_run_value")
            long_lift = f"{mean:+.3f} [{lift_low:+.3f}, {lift_high:+.3f}]"
            if ref is not None:
                fraction = lift_share(r, base, ref)
                share = "n/a" if fraction is None else f"{100 * fraction:.1f}%"
        lines.append(
            f"| {r.policy} | {r.mean('value'):.3f} | [{low:.3f}, {high:.3f}] | {lift} | {share} "
            f"| {r.mean('residual_value'):.3f} | {r.mean('long_run_value'):.3f} | {long_lift} "
            f"| {r.mean('revenue'):.2f} | {r.mean('discount_cost'):.3f} "
            f"| {r.mean('contact_cost'):.3f} | {r.mean('contacts'):.2f} "
            f"| {r.mean('opt_out_rate'):.3f} | {r.mean('churn_rate'):.3f} |"
        )
    return "\n".join(lines)


def results_to_dict(
    results: Sequence[PolicyResult],
    baseline: str | None = "no_contact",
    reference: str | None = "oracle",
) -> dict[str, Any]:
    """Everything the table and the plots show, as plain JSON-ready data (NaN -> ``None``).

    ``results[policy][metric]`` holds the per-seed values (the layout ``cvm simulate --json``
    always wrote); ``summary[policy]`` the means, 95 % CIs, the paired lift over ``baseline``
    and the share of ``reference``'s lift (``None`` where not defined); ``breakdowns[policy]``
    value per customer by segment and by starting stage (per seed, mean, CI, customer counts)
    and the action mix (executed-action counts per stage, summed over seeds).
    """
    if not results:
        raise ValueError("results: expected at least one PolicyResult")
    base = _find(results, baseline)
    ref = _find(results, reference)
    payload: dict[str, Any] = {
        "baseline": baseline if base is not None else None,
        "reference": reference if ref is not None else None,
        "results": {},
        "summary": {},
        "breakdowns": {},
    }
    for r in results:
        payload["results"][r.policy] = {m: _jsonable(v) for m, v in r.per_seed.items()}
        summary: dict[str, Any] = {
            "seeds": list(r.seeds),
            "mean": {m: r.mean(m) for m in r.per_seed},
            "ci95": {m: list(r.interval(m)) for m in r.per_seed},
            "lift": None,
            "long_run_lift": None,
            "share_of_reference_lift": None,
        }
        if base is not None:
            mean, low, high = r.lift_interval(base)
            summary["lift"] = {"mean": mean, "ci95": [low, high]}
            mean, low, high = r.lift_interval(base, "long_run_value")
            summary["long_run_lift"] = {"mean": mean, "ci95": [low, high]}
            if ref is not None:
                summary["share_of_reference_lift"] = lift_share(r, base, ref)
        payload["summary"][r.policy] = summary
        if r.breakdown is not None:
            payload["breakdowns"][r.policy] = _breakdown_dict(r)
    return payload


def _breakdown_dict(result: PolicyResult) -> dict[str, Any]:
    bd = result.require_breakdown()
    out: dict[str, Any] = {}
    for by in GROUP_BY:
        names, per_seed, counts = bd.groups(by)
        _, means, bounds = result.group_values(by)
        out[by] = {
            "names": list(names),
            "value_per_seed": _jsonable(per_seed),
            "count_per_seed": _jsonable(counts),
            "mean": _jsonable(means),
            "ci95": _jsonable(bounds),
        }
    out["action_mix"] = {
        "stages": list(bd.stages),
        "actions": list(bd.actions),
        "counts": _jsonable(result.action_mix(normalize=False)),
    }
    return out


def _jsonable(values: np.ndarray) -> Any:
    """Nested lists of Python numbers with NaN/inf as ``None`` (strict JSON has no NaN)."""
    array = np.asarray(values)
    if np.issubdtype(array.dtype, np.integer):
        return array.tolist()
    array = array.astype(float)
    out = array.astype(object)
    out[~np.isfinite(array)] = None
    return out.tolist()
