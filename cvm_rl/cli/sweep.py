"""``cvm sweep``: a hyperparameter and seed sweep of ``cvm train`` runs on Ray Tune.

Every combination of the grid is a trial: a ``cvm train`` run in its own directory under
OUT/trials/, with one CPU and one torch thread. The best trial is chosen on its validation
value (the validation population, seed 10,000 + the training seed), never on the held-out
evaluation seeds, which stay for ``cvm evaluate --bundles OUT/best``. OUT also receives
sweep.json and sweep.csv (one row per trial) and Tune's files (tune/). Needs the 'tune' extra.

  cvm sweep --algo maskable_ppo --steps 2000000 --terminal-value \\
      --grid learning_rate=1e-4,5e-4 --seeds 0 1 2 --out runs/sweep
  cvm sweep --space sweep.toml --out runs/sweep --address auto   # on a running Ray cluster

A --space file (TOML, or the same as JSON) has a [base] table of TrainConfig fields and a
[grid] table of value lists; options given on the command line replace its entries.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cvm_rl.cli.common import (
    CliError,
    add_scenario_argument,
    layer_widths,
    needs_extra,
    positive_int,
)
from cvm_rl.cli.train import TRAIN_OPTIONS
from cvm_rl.registry import ALGOS
from cvm_rl.train_config import TrainConfig

HELP = "sweep hyperparameters and seeds on Ray Tune; pick the best run on validation"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--space", help="search space file (TOML or JSON: [base] and [grid])")
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="values of one TrainConfig field to try (repeatable; every combination is a "
        "trial), e.g. learning_rate=1e-4,5e-4 or net_arch=[64,64],[128,128] or "
        "bandit_kwargs.alpha=0.5,1",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", metavar="SEED", help="training seeds (0..999) to try"
    )
    parser.add_argument("--algo", choices=ALGOS, help="what to train (or algo in --space)")
    add_scenario_argument(parser)
    parser.set_defaults(scenario=None)  # None: the --space file's, else TrainConfig's
    for name, kind, text in TRAIN_OPTIONS:
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=kind,
            help=f"{text} (default: {TrainConfig.model_fields[name].default:,})",
        )
    parser.add_argument(
        "--net-arch", type=layer_widths, help="hidden layer widths of the RL networks"
    )
    parser.add_argument(
        "--terminal-value",
        action="store_true",
        default=None,
        help="RL: train on the long-run value (as cvm train --terminal-value)",
    )
    parser.add_argument(
        "--validation-customers", type=positive_int, help="customers of the validation population"
    )
    parser.add_argument("--out", help="sweep directory (default runs/sweep-ALGO-SCENARIO)")
    parser.add_argument(
        "--address",
        help="Ray cluster to run on (e.g. auto, ray://HOST:10001; --out must be on storage "
        "every node sees); default: a local Ray on this machine",
    )
    parser.add_argument(
        "--cpus",
        type=positive_int,
        help="local Ray only: CPUs to use, one trial each (default: all of this machine's)",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no Tune progress tables while trials run"
    )


def run(args: argparse.Namespace) -> int:
    from cvm_rl.sweep import SearchSpace, SweepError, format_sweep_table, load_space
    from cvm_rl.sweep import parse_grid_option as parse_grid

    if args.address and args.cpus:
        raise CliError("--cpus: only for a local Ray; a cluster at --address has its own")
    options = [name for name, _, _ in TRAIN_OPTIONS]
    options += ["algo", "scenario", "net_arch", "terminal_value", "validation_customers"]
    try:
        space = load_space(args.space) if args.space else SearchSpace()
        space = space.with_base(
            {k: getattr(args, k) for k in options if getattr(args, k) is not None}
        )
        space = space.with_grid(parse_grid(text) for text in args.grid)
        if args.seeds:
            space = space.with_grid([("seed", list(args.seeds))])
        if "algo" not in space.base and "algo" not in space.grid:
            raise SweepError("--algo: required (or algo in the --space file)")
        trials = space.trials()
    except SweepError as exc:
        raise CliError(str(exc)) from None
    with needs_extra("tune", "sweep"):
        # Imported here only to name a missing extra before any work starts.
        import ray.tune  # noqa: F401
    with needs_extra("train", "sweep"):
        import cvm_rl.training  # noqa: F401
    from cvm_rl.sweep import run_sweep

    first = space.config(trials[0])
    out = Path(args.out or f"runs/sweep-{first.algo}-{Path(first.scenario).stem}")
    where = f"the Ray cluster at {args.address}" if args.address else "a local Ray"
    print(f"sweep: {len(trials)} trials on {where}, one CPU and one torch thread each; out {out}")
    result = run_sweep(
        space, out, address=args.address, cpus=args.cpus, verbose=0 if args.quiet else 1
    )
    print(format_sweep_table(result.rows, result.best))
    for row in result.failed:
        print(f"trial {row.trial} failed: {row.error}")
    print(f"wrote {result.out / 'sweep.json'} and {result.out / 'sweep.csv'}")
    if result.best is not None:
        print(
            f"best on validation: {result.best.trial} ({result.best.validation_value:.3f} per "
            f"customer); bundle {result.best_bundle} (link {result.out / 'best'}); evaluate it "
            f"on held-out customers: cvm evaluate --bundles {result.out / 'best'}"
        )
    return 1 if result.failed else 0
