"""``cvm loop``: the closed loop of the product, on simulated customers.

Starts ``cvm serve`` (its own process, port 0, log and bundle root under --out) on the rules
campaign with epsilon exploration; a simulated campaign engine, a client of the service,
asks ``DecideBatch`` for every customer each period (a week), applies the decisions in the
simulator and reports the outcomes. Every --retrain-every periods, while the service keeps
serving, it exports the decision log, trains the candidates from the logs alone (one half of
the customers), evaluates them off-policy against the serving policy on the other half's
decisions (by default each decision's one-step advantage in long-run value; the OPE report
in --out/ope/pN/report.html) and promotes through the service's hot reload (LoadBundle)
only the candidate whose lower confidence bound of lift is above zero; otherwise it keeps
the serving policy and says why. A control arm (the starting campaign alone, the same
customers) gives the realized long-run lift. It prints a row per period and writes
--out/loop.json and --out/loop.md:

  cvm loop --out runs/loop --customers 20000 --periods 24 --retrain-every 8 \\
      --candidates clv_planner fqi q_improve dr_bandit
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from cvm_rl.cli.common import CliError, needs_extra, positive_int
from cvm_rl.loop.config import CANDIDATES, ESTIMANDS, STARTS, LoopConfig

HELP = "the closed loop: serve, log, retrain from the logs, evaluate off-policy, promote"
# LoopConfig's own defaults (its module imports nothing heavy: --help stays light).
DEFAULTS = {f.name: f.default for f in dataclasses.fields(LoopConfig)}


def _label_weeks(text: str) -> int | None:
    return None if text == "all" else positive_int(text)


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
        default=list(LoopConfig.candidates),
        help="candidates trained at each retrain",
    )
    parser.add_argument(
        "--start", choices=STARTS, default=DEFAULTS["start"], help="the starting campaign"
    )
    parser.add_argument(
        "--estimand",
        choices=ESTIMANDS,
        default=DEFAULTS["estimand"],
        help="what OPE values: the one-step advantage in long-run value (labels: the logged "
        "rewards plus a CLV tail) or the whole policy over the last K weeks' rewards",
    )
    parser.add_argument(
        "--no-tail-value",
        dest="tail_value",
        action="store_false",
        help="advantage labels stop at the last logged week (no CLV tail)",
    )
    parser.add_argument(
        "--label-weeks",
        type=_label_weeks,
        default=DEFAULTS["label_weeks"],
        metavar="N|all",
        help="weeks of logged rewards in an advantage label before its CLV tail (all: every "
        "logged week)",
    )
    parser.add_argument(
        "--no-confirm-window",
        dest="confirm_window",
        action="store_false",
        help="promote on the advantage alone, without the whole-policy estimate over the last "
        "K weeks agreeing",
    )
    parser.add_argument(
        "--gamma",
        type=float,
        default=DEFAULTS["gamma"],
        help="weekly discount of the fitted Q-functions (fqi, q_improve)",
    )
    parser.add_argument(
        "--q-iterations",
        type=positive_int,
        default=DEFAULTS["q_iterations"],
        help="fitted Q iterations (60 keep 70 %% of the weight at --gamma 0.98)",
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
    from cvm_rl.loop.closed_loop import run_loop

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
            estimand=args.estimand,
            tail_value=args.tail_value,
            label_weeks=args.label_weeks,
            confirm_window=args.confirm_window,
            gamma=args.gamma,
            q_iterations=args.q_iterations,
        )
    except ValueError as exc:
        option = str(exc).split(" ", 1)[0].replace("_", "-")
        raise CliError(f"--{option}: {exc}") from None
    result = run_loop(config, echo=print)
    table = result.table()
    print(table)
    for p in result.promotions():
        ope, realized = p["ope_lift_per_week"], p["realized_lift_per_week"]
        print(
            f"[loop] promotion after period {p['period']}: {p['promoted']} replaced "
            f"{p['replaced']}; OPE lift per customer-week {ope['estimate']:+.3f} "
            f"[{ope['low']:+.3f}, {ope['high']:+.3f}], realized while it served "
            + (
                "n/a"
                if realized is None
                else f"{realized['estimate']:+.3f} [{realized['low']:+.3f}, "
                f"{realized['high']:+.3f}] over {p['weeks_after']} weeks"
            )
        )
    total = result.realized_lift()
    if total is not None:
        print(
            f"[loop] realized long-run value per customer, the loop minus the control arm "
            f"({config.start} alone): {total.format(signed=True)}"
        )
    out = Path(args.out)
    result.write_json(out / "loop.json")
    (out / "loop.md").write_text(table + "\n")
    print(
        f"[loop] {result.seconds:.1f} s; serving {result.final_model_id} at the end; "
        f"cvm serve exit code {result.exit_code}; {out / 'loop.json'}, {out / 'loop.md'}"
    )
    return 0 if result.exit_code == 0 else 1
