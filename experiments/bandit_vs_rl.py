"""Which policy creates the most long-run customer value on the default scenario?

No contact, uniform random, the rule-based campaign, the greedy one-step uplift model, the
contextual bandits (LinUCB, linear Thompson sampling), the CLV planner from observations
(the scenario's response, and the response measured on a randomized campaign of the training
seed) and long-run RL (MaskablePPO; PPO with ``--rl maskable_ppo ppo``), against the oracle
that sees the latent state (valuing the long run, and its horizon-only variant). Ranked on
the long-run value (the horizon's net margin plus the residual value customers carry out
of it); the headline reports each paired lift, the share of the oracle's lift, and the gap
to the oracle split into what observations cannot tell (oracle minus the best observable
policy) and what the learner leaves (the best observable policy minus RL).

RL levers of the long-run issue: ``--terminal-value``, ``--shaping``, ``--expected-rewards``
(see ``cvm train --help``); ``--rl-runs DIR ...`` evaluates existing run directories (one
per training seed, in seed order) instead of training RL here.

Every learner is trained once per seed ``k`` (training populations drawn from seed ``k``)
and evaluated on the held-out population of seed ``1000 + k``, the same population every
other policy meets for that seed: the 95 % intervals over seeds include the training
randomness, and lifts are paired by population.

    .venv/bin/python experiments/bandit_vs_rl.py            # the full run (about half an hour)
    .venv/bin/python experiments/bandit_vs_rl.py --quick    # a smoke run in about a minute

Writes ``experiments/results/<run name>.{json,md}`` and PNG plots next to them; the trained
bundles go to ``runs/experiments/<run name>/<algo>-seed<k>/`` (``robustness.py`` reads them).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from cvm_rl.bundle import load_bundle
from cvm_rl.cli.evaluate import write_evaluation_plots
from cvm_rl.evaluation import (
    PolicyResult,
    evaluate_policies,
    format_table,
    lift_share_interval,
    results_to_dict,
)
from cvm_rl.plots import plot_learning_curves
from cvm_rl.policies import NoContactPolicy, Policy, RandomPolicy, RuleBasedPolicy
from cvm_rl.policies.greedy import GreedyUpliftPolicy
from cvm_rl.policies.oracle import OraclePolicy
from cvm_rl.policies.planner import CLVPlannerPolicy, estimate_response
from cvm_rl.train_config import HELD_OUT_SEED_START
from cvm_rl.training import TrainConfig, load_learning_curve, train
from simulator.config import load_scenario

RESULTS = Path(__file__).parent / "results"
RUNS = Path(__file__).parents[1] / "runs" / "experiments"
"""Run directories (bundles, TensorBoard logs) of the trained learners; not committed."""


def runs_dir(run_name: str) -> Path:
    return RUNS / run_name


@dataclass
class Args:
    scenario: str = "default"
    seeds: int = 5
    """Training seeds 0..seeds-1; held-out evaluation seeds 1000..1000+seeds-1."""
    eval_customers: int = 20_000
    bandits: list[str] = field(default_factory=lambda: ["linucb", "lints"])
    bandit_steps: int = 2_080_000
    """Customer-weeks of online bandit learning (10k customers x 4 horizons)."""
    rl: list[str] = field(default_factory=lambda: ["maskable_ppo"])
    rl_steps: int = 16_000_000
    optout_cost: float = 0.0
    """Charged per opt-out in the RL training reward (see ``TrainConfig.optout_cost``)."""
    terminal_value: bool = False
    shaping: bool = False
    expected_rewards: bool = False
    rl_runs: list[Path] = field(default_factory=list)
    """Existing RL run directories, one per training seed (then ``rl`` names their algo)."""
    greedy_customers: int = 20_000
    """Customers in the logged randomized campaign the greedy uplift model is fitted on."""
    workers: int = 2
    """Training processes run at once (one torch thread each)."""
    quick: bool = False
    out: Path = RESULTS

    @property
    def run_name(self) -> str:
        rl = "+".join(self.rl) or "no-rl"
        tag = "quick" if self.quick else f"{self.rl_steps // 1_000_000}M"
        if self.optout_cost:
            tag += f"-optout{self.optout_cost:g}"
        for lever in ("terminal_value", "shaping", "expected_rewards"):
            if getattr(self, lever):
                tag += "-" + lever.replace("_", "")
        if self.rl_runs:
            tag = "runs-" + "-".join(p.name for p in self.rl_runs)[:60]
        return f"bandit_vs_rl__{self.scenario}__{rl}-{tag}__{self.seeds}seeds"


def parse_args() -> Args:
    defaults = Args()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default=defaults.scenario)
    parser.add_argument("--seeds", type=int, default=defaults.seeds)
    parser.add_argument("--eval-customers", type=int, default=defaults.eval_customers)
    parser.add_argument("--bandits", nargs="*", default=defaults.bandits)
    parser.add_argument("--bandit-steps", type=int, default=defaults.bandit_steps)
    parser.add_argument("--rl", nargs="*", default=defaults.rl)
    parser.add_argument("--rl-steps", type=int, default=defaults.rl_steps)
    parser.add_argument("--optout-cost", type=float, default=defaults.optout_cost)
    parser.add_argument("--terminal-value", action="store_true")
    parser.add_argument("--shaping", action="store_true")
    parser.add_argument("--expected-rewards", action="store_true")
    parser.add_argument("--rl-runs", nargs="*", type=Path, default=[])
    parser.add_argument("--greedy-customers", type=int, default=defaults.greedy_customers)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run")
    parser.add_argument("--out", type=Path, default=defaults.out)
    args = Args(**vars(parser.parse_args()))
    if args.quick:
        args = replace(
            args,
            seeds=2,
            eval_customers=2_000,
            bandit_steps=104_000,
            rl_steps=106_496,
            greedy_customers=2_000,
        )
    return args


def main() -> None:
    args = parse_args()
    scenario = load_scenario(args.scenario)
    train_seeds = list(range(args.seeds))
    eval_seeds = [HELD_OUT_SEED_START + s for s in train_seeds]
    print(f"run {args.run_name}: train seeds {train_seeds}, held-out seeds {eval_seeds}")
    started = time.perf_counter()

    if args.rl_runs and (len(args.rl) != 1 or len(args.rl_runs) != args.seeds):
        raise SystemExit("--rl-runs: one run directory per seed, and one --rl algo")
    jobs = []
    # Long RL runs first, so the short bandit runs fill the last free core.
    for algo in [*([] if args.rl_runs else args.rl), *args.bandits]:
        for seed in train_seeds:
            config = TrainConfig(algo=algo, scenario=args.scenario, seed=seed)
            config.steps = args.bandit_steps if algo in args.bandits else args.rl_steps
            config.optout_cost = args.optout_cost
            if algo in args.rl:
                config.terminal_value = args.terminal_value
                config.shaping = args.shaping
                config.expected_rewards = args.expected_rewards
            if algo in args.bandits:
                config.n_envs = 2_000 if args.quick else 10_000
            jobs.append((config, runs_dir(args.run_name) / f"{algo}-seed{seed}"))
    # Independent runs, one torch thread each: a process per core trains two at once.
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        done = list(pool.map(train_job, jobs))
    learned: dict[str, list[Policy]] = {}
    curves: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    train_seconds: dict[str, list[float]] = {}
    trained = [
        (config.algo, run, seconds) for (config, run), seconds in zip(jobs, done, strict=True)
    ]
    trained += [(args.rl[0], run, float("nan")) for run in args.rl_runs]
    for algo, run, seconds in trained:
        # Evaluate what was saved: the bundle a server would load, not the live object.
        learned.setdefault(algo, []).append(load_bundle(run / "bundle").policy)
        curves.setdefault(algo, []).append(load_learning_curve(run))
        train_seconds.setdefault(algo, []).append(round(seconds, 1))
    greedy = [
        GreedyUpliftPolicy.fit_from_simulation(
            scenario, n_customers=args.greedy_customers, seed=seed
        )
        for seed in train_seeds
    ]
    estimated_planner = [
        CLVPlannerPolicy(scenario, response=estimate_response(scenario, seed=seed))
        for seed in train_seeds
    ]
    horizon_oracle = OraclePolicy(scenario, residual_weeks=0)
    horizon_oracle.name = "oracle_horizon"
    policies: list[Policy | list[Policy]] = [
        NoContactPolicy(scenario),
        RandomPolicy(scenario),
        RuleBasedPolicy(scenario),
        greedy,
        CLVPlannerPolicy(scenario),
        estimated_planner,
        *learned.values(),
        horizon_oracle,
        OraclePolicy(scenario),
    ]
    results = evaluate_policies(
        policies, scenario, n_customers=args.eval_customers, seeds=eval_seeds
    )
    table = format_table(results)
    print(table)
    headline = headline_checks(results, args)
    for line in headline:
        print(line)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    plots = write_evaluation_plots(results, out / args.run_name)
    references = {r.policy: r.mean("value") for r in results if r.policy in ("rules", "oracle")}
    # Learning curves show the validation value of the horizon (what training reports).
    plots.append(
        plot_learning_curves(
            curves,
            out / args.run_name / "learning_curves.png",
            title=f"Training on '{args.scenario}': validation value ({args.seeds} seeds)",
            references=references,
        )
    )
    payload = {
        "run_name": args.run_name,
        "args": json.loads(json.dumps(asdict(args), default=str)),
        "train_seeds": train_seeds,
        "eval_seeds": eval_seeds,
        "train_seconds": train_seconds,
        "curves": {
            algo: [{"steps": s.tolist(), "value": v.tolist()} for s, v in runs]
            for algo, runs in curves.items()
        },
        "headline": headline,
        "total_seconds": round(time.perf_counter() - started, 1),
        **results_to_dict(results),
    }
    (out / f"{args.run_name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    command = "experiments/bandit_vs_rl.py" + (" --quick" if args.quick else "")
    if args.optout_cost:
        command += f" --optout-cost {args.optout_cost:g}"
    for lever in ("terminal_value", "shaping", "expected_rewards"):
        if getattr(args, lever):
            command += " --" + lever.replace("_", "-")
    if args.rl_runs:
        command += f" --rl {args.rl[0]} --rl-runs " + " ".join(str(p) for p in args.rl_runs)
    if args.seeds != Args.seeds:
        command += f" --seeds {args.seeds}"
    if args.bandits != Args().bandits:
        command += " --bandits " + " ".join(args.bandits)
    (out / f"{args.run_name}.md").write_text(
        f"# {args.run_name}\n\n`.venv/bin/python {command}` on scenario '{args.scenario}': "
        f"{args.eval_customers} held-out customers x {scenario.horizon_weeks} weeks per seed, "
        f"training seeds {train_seeds}, held-out seeds {eval_seeds}; value = net margin per "
        f"customer over the horizon, long-run = value + residual; intervals are 95 % over "
        f"seeds.\n\n{table}\n\n"
        + "\n".join(f"- {line}" for line in headline)
        + "\n\nPlots: "
        + ", ".join(f"[{p.name}]({args.run_name}/{p.name})" for p in plots)
        + f"\n\nTotal time {payload['total_seconds']} s.\n"
    )
    print(f"wrote {out / args.run_name}.{{json,md}} and {len(plots)} plots")


def train_job(job: tuple[TrainConfig, Path]) -> float:
    config, run = job
    result = train(config, run)
    print(f"  trained {config.algo} seed {config.seed}: {result.seconds:.0f} s", flush=True)
    return result.seconds


def headline_checks(results: list[PolicyResult], args: Args) -> list[str]:
    """The long-run issue's headline, checked rather than asserted: does the best RL policy
    beat the estimated-response planner, the rules and the best myopic learner on long-run
    value (paired 95 % intervals above zero), with every training seed above the rules, no
    more opt-outs than the rules, and at least 60 % of the oracle's lift?"""
    metric = "long_run_value"
    by_name = {r.policy: r for r in results}
    rl = [by_name[a] for a in args.rl if a in by_name]
    if not rl or "rules" not in by_name or "no_contact" not in by_name:
        return ["headline: needs an RL policy, the rules and no contact"]
    best_rl = max(rl, key=lambda r: r.mean(metric))
    myopic = [by_name[a] for a in [*args.bandits, "greedy"] if a in by_name]
    rivals = [by_name[n] for n in ("clv_planner_estimated", "clv_planner", "rules") if n in by_name]
    if myopic:
        rivals.append(max(myopic, key=lambda r: r.mean(metric)))
    lines = []
    for rival in rivals:
        lift, low, high = best_rl.lift_interval(rival, metric)
        verdict = "above zero" if low > 0 else "NOT above zero"
        lines.append(
            f"{best_rl.policy} vs {rival.policy}: long-run {lift:+.3f} per customer, paired 95% "
            f"CI [{low:+.3f}, {high:+.3f}] ({verdict})"
        )
    rules = by_name["rules"]
    above = best_rl.per_seed[metric] > rules.per_seed[metric]
    lines.append(
        f"training seeds above the rules on long-run value: {int(above.sum())}/{len(above)}"
    )
    rl_opt, rules_opt = best_rl.mean("opt_out_rate"), rules.mean("opt_out_rate")
    lines.append(
        f"opt-out rate: {best_rl.policy} {rl_opt:.3f} vs rules {rules_opt:.3f} "
        f"({'not above' if rl_opt <= rules_opt else 'ABOVE'} the rules')"
    )
    oracle, base = by_name.get("oracle"), by_name["no_contact"]
    if oracle is not None:
        for who in [
            best_rl,
            *(
                by_name[n]
                for n in ("clv_planner", "clv_planner_estimated", "rules")
                if n in by_name
            ),
        ]:
            shared = lift_share_interval(who, base, oracle, metric)
            text = "n/a" if shared is None else "{:.0%} [{:.0%}, {:.0%}]".format(*shared)
            lines.append(f"share of the oracle's long-run lift, {who.policy}: {text}")
        observable = [r for r in results if r.policy not in ("oracle", "oracle_horizon")]
        best_obs = max(observable, key=lambda r: r.mean(metric))
        gap = oracle.mean(metric) - best_rl.mean(metric)
        observability = oracle.mean(metric) - best_obs.mean(metric)
        lines.append(
            f"gap to the oracle {gap:+.3f} = observability gap {observability:+.3f} (oracle - "
            f"best observable policy, {best_obs.policy}) + learner's gap "
            f"{gap - observability:+.3f} ({best_obs.policy} - {best_rl.policy})"
        )
    return lines


if __name__ == "__main__":
    main()
