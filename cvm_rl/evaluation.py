"""Run policies on simulated customers and summarize long-run value with confidence intervals."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from cvm_rl.policies.base import Policy
from simulator.config import Scenario
from simulator.vector_env import CustomerLifecycleVectorEnv

METRICS: tuple[str, ...] = (
    "value",
    "revenue",
    "discount_cost",
    "contact_cost",
    "contacts",
    "opt_out_rate",
    "churn_rate",
)
"""Per-customer metrics over the horizon: net value (margin - discount - contact cost),
revenue, costs, contacts per customer, share of customers who opted out of any channel, and
share of customers alive at the start who dropped out by the end (latent, from the oracle)."""


@dataclass(frozen=True)
class PolicyResult:
    policy: str
    seeds: list[int]
    per_seed: dict[str, np.ndarray] = field(repr=False)

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
    env = CustomerLifecycleVectorEnv(n_customers, scenario, oracle_info=True)
    obs, info = env.reset(seed=seed)
    policy.seed(seed)
    alive_at_start = info["oracle"]["alive"] & info["oracle"]["present"]
    totals = dict.fromkeys(("value", "revenue", "discount_cost", "contact_cost", "contacts"), 0.0)
    opted_out = np.zeros(n_customers, dtype=bool)
    for _ in range(scenario.horizon_weeks):
        actions, _ = policy.act(obs, info["action_mask"])
        obs, reward, _, _, info = env.step(actions)
        totals["value"] += reward.sum()
        totals["revenue"] += info["revenue"].sum()
        totals["discount_cost"] += info["discount_cost"].sum()
        totals["contact_cost"] += info["contact_cost"].sum()
        totals["contacts"] += np.count_nonzero(info["executed_action"])
        opted_out |= info["opted_out"]
        if on_step is not None:
            on_step(info)
    dropped = alive_at_start & ~info["oracle"]["alive"]
    result = {k: v / n_customers for k, v in totals.items()}
    result["opt_out_rate"] = float(opted_out.mean())
    result["churn_rate"] = float(dropped.sum() / max(alive_at_start.sum(), 1))
    return result


def evaluate_policies(
    policies: Sequence[Policy],
    scenario: Scenario,
    *,
    n_customers: int = 10_000,
    seeds: Sequence[int] = (1000, 1001, 1002, 1003, 1004),
) -> list[PolicyResult]:
    """Every policy on the same held-out populations (one per seed, common random numbers)."""
    if n_customers < 1:
        raise ValueError(f"n_customers must be >= 1, got {n_customers}")
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    results = []
    for policy in policies:
        runs = [run_episode(policy, scenario, n_customers, seed) for seed in seeds]
        per_seed = {m: np.array([run[m] for run in runs]) for m in METRICS}
        results.append(PolicyResult(policy.name, list(seeds), per_seed))
    return results


def format_table(results: Sequence[PolicyResult], baseline: str | None = "no_contact") -> str:
    """Markdown table: value with 95 % CI over seeds, lift over ``baseline`` with a paired
    95 % CI (every policy ran on the same seeded populations), and the other metrics."""
    base = next((r for r in results if r.policy == baseline), None)
    head = (
        "| policy | value/customer | 95% CI | lift vs no-contact [paired 95% CI] | revenue "
        "| discount | contact "
        "| contacts | opt-out | churn |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        low, high = r.interval("value")
        lift = "n/a"
        if base is not None:
            mean, lift_low, lift_high = r.lift_interval(base)
            lift = f"{mean:+.3f} [{lift_low:+.3f}, {lift_high:+.3f}]"
        lines.append(
            f"| {r.policy} | {r.mean('value'):.3f} | [{low:.3f}, {high:.3f}] | {lift} "
            f"| {r.mean('revenue'):.2f} | {r.mean('discount_cost'):.3f} "
            f"| {r.mean('contact_cost'):.3f} | {r.mean('contacts'):.2f} "
            f"| {r.mean('opt_out_rate'):.3f} | {r.mean('churn_rate'):.3f} |"
        )
    return "\n".join(lines)
