"""``cvm loop``: the closed loop of the product, on simulated customers.

Starts ``cvm serve`` (its own process, port 0, log and bundle root under --out) on the rules
campaign with epsilon exploration; a simulated campaign engine, a client of the service,
asks ``DecideBatch`` for every customer each period (a week), applies the decisions in the
simulator and reports the outcomes. Every --retrain-every periods, while the service keeps
serving, it exports the decision log, trains the candidates from the logs alone (one half of
the customers), evaluates them off-policy against the serving policy on the other half's
last periods (the OPE report, in --out/ope/pN/report.html) and promotes through the
service's hot reload (LoadBundle) only the candidate whose lower confidence bound of lift is
above zero; otherwise it keeps the serving policy and says why. It prints a row per period
and writes --out/loop.json and --out/loop.md:

  cvm loop --out runs/loop --customers 10000 --periods 24 --retrain-every 4 \\
      --candidates clv_planner linucb greedy
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cvm_rl.cli.common import CliError, needs_extra, positive_int

HELP = "the closed loop: serve, log, retrain from the logs, evaluate off-policy, promote"
CANDIDATES = ("clv_planner", "linucb", "greedy", "rules", "no_contact", "random")
STARTS = ("rules", "no_contact", "random")
# cvm_rl.loop.closed_loop.LoopConfig's defaults (not imported: --help stays light; a test
# checks they agree).
DEFAULT_CANDIDATES = ("clv_planner", "linucb", "greedy")
DEFAULTS: dict[str, int | float | str] = {
    "customers": 10_000,
    "periods": 24,
    "retrain_every": 4,
    "epsilon": 0.1,
    "seed": 0,
    "start": "rules",
    "n_bootstrap": 200,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="runs/loop", help="directory for the log, bundles and reports"
    )
    parser.add_argument(
        "--customers", type=positive_int, default=DEFAULTS["customers"], help="customers served"
    )
    parser.add_argument(
        "--periods", type=positive_int, default=DEFAULTS["periods"], help="periods (weeks) to run"
    )
    parser.add_argument(
        "--retrain-every",
        type=positive_int,
        default=DEFAULTS["retrain_every"],
        metavar="K",
        help="export, train, evaluate and maybe promote after every K periods",
    )
    parser.add_argument(
        "--epsilon",
        type=float,
        default=DEFAULTS["epsilon"],
        help="the service's epsilon exploration, in (0, 1]",
    )
    parser.add_argument(
        "--candidates",
        nargs="+",
        choices=CANDIDATES,
        default=list(DEFAULT_CANDIDATES),
        help="candidates trained at each retrain",
    )
    parser.add_argument(
        "--start", choices=STARTS, default=DEFAULTS["start"], help="the starting campaign"
    )
    parser.add_argument("--scenario", default="default", help="built-in name or TOML path")
    parser.add_argument(
        "--n-bootstrap",
        type=positive_int,
        default=DEFAULTS["n_bootstrap"],
        help="bootstrap resamples of the OPE intervals",
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULTS["seed"], help="seeds the population and the loop"
    )


def run(args: argparse.Namespace) -> int:
    with needs_extra("serve", "loop"):
        import grpc  # noqa: F401
    with needs_extra("ope", "loop"):
        import matplotlib  # noqa: F401
        import pyarrow  # noqa: F401
        import sklearn  # noqa: F401
    from cvm_rl.loop.closed_loop import LoopConfig, run_loop

    try:
        config = LoopConfig(
            out=Path(args.out),
            customers=args.customers,
            periods=args.periods,
            retrain_every=args.retrain_every,
            epsilon=args.epsilon,
            seed=args.seed,
            candidates=tuple(args.candidates),
            start=args.start,
            scenario=args.scenario,
            n_bootstrap=args.n_bootstrap,
        )
    except ValueError as exc:
        option = str(exc).split(" ", 1)[0].replace("_", "-")
        raise CliError(f"--{option}: {exc}") from None
    result = run_loop(config, echo=print)
    table = result.table()
    print(table)
    for p in result.promotions():
        after = p["realized_value_per_week_after"]
        ope = p["ope_value_per_week"]
        print(
            f"[loop] promotion after period {p['period']}: {p['promoted']} replaced "
            f"{p['replaced']}; OPE value per customer-week {ope['estimate']:+.3f} "
            f"[{ope['low']:+.3f}, {ope['high']:+.3f}], realized after it "
            + ("n/a" if after is None else f"{after:+.3f} over {p['weeks_after']} weeks")
        )
    out = Path(args.out)
    result.write_json(out / "loop.json")
    (out / "loop.md").write_text(table + "\n")
    print(
        f"[loop] {result.seconds:.1f} s; serving {result.final_model_id} at the end; "
        f"cvm serve exit code {result.exit_code}; {out / 'loop.json'}, {out / 'loop.md'}"
    )
    return 0 if result.exit_code == 0 else 1
