"""The closed loop end to end: does it promote only what the log supports, and does what it
promotes earn what OPE said?

Runs :func:`cvm_rl.loop.closed_loop.run_loop`: ``cvm serve`` on the rules campaign with epsilon
exploration, a simulated campaign engine deciding every customer each week through
``DecideBatch``, and every ``retrain_every`` weeks an export, candidates trained from the log
alone, the OPE report against the serving policy and a hot reload only when the lower bound
of the lift is above zero. Writes the per-period table, the promotions (OPE estimate before,
realized value after) and a plot of value per period with the retrains marked:

    .venv/bin/python experiments/closed_loop.py                      # default size, a few min
    .venv/bin/python experiments/closed_loop.py --customers 2000 --periods 8   # quick

into ``experiments/results/closed_loop[__TAG].md``, ``.json`` and ``.png``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: small solves, 2 cores
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from cvm_rl.loop.closed_loop import run_loop
from cvm_rl.loop.config import CANDIDATES, ESTIMANDS, STARTS, LoopConfig
from cvm_rl.loop.results import plot_loop

RESULTS = Path(__file__).resolve().parent / "results"


LOOP = LoopConfig(Path("runs/closed_loop"))
"""The loop's defaults, which the arguments' defaults are."""


@dataclass
class Args:
    customers: int = LOOP.customers
    periods: int = LOOP.periods
    retrain_every: int = LOOP.retrain_every
    epsilon: float = LOOP.epsilon
    seed: int = LOOP.seed
    candidates: tuple[str, ...] = LOOP.candidates
    start: str = LOOP.start
    n_bootstrap: int = LOOP.n_bootstrap
    estimand: str = LOOP.estimand
    tail_value: bool = LOOP.tail_value
    label_weeks: int | None = LOOP.label_weeks
    gamma: float = LOOP.gamma
    q_iterations: int | None = LOOP.q_iterations
    confirm_window: bool = LOOP.confirm_window
    out: str = "runs/closed_loop"
    tag: str = ""


def parse_args() -> Args:
    defaults = Args()
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    for f in dataclasses.fields(Args):
        value = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        if f.name == "candidates":
            parser.add_argument(flag, nargs="+", choices=CANDIDATES, default=list(value))
        elif f.name == "start":
            parser.add_argument(flag, choices=STARTS, default=value)
        elif f.name == "estimand":
            parser.add_argument(flag, choices=ESTIMANDS, default=value)
        elif f.name == "q_iterations":
            parser.add_argument(flag, type=int, default=value)
        elif f.name == "label_weeks":
            parser.add_argument(flag, type=_weeks, default=value, help="an int, or all")
        elif f.name in ("tail_value", "confirm_window"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)
    parsed = vars(parser.parse_args())
    parsed["candidates"] = tuple(parsed["candidates"])
    return Args(**parsed)


def _weeks(text: str) -> int | None:
    return None if text == "all" else int(text)


def _command_line(args: Args) -> str:
    """The options that reproduce ``args``."""
    parts = []
    for key, value in dataclasses.asdict(args).items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{flag[2:]}")
        elif key == "label_weeks" and value is None:
            parts.append(f"{flag} all")
        elif value is None or (key == "tag" and not value):
            continue
        else:
            parts.append(f"{flag} {' '.join(value) if isinstance(value, tuple) else value}")
    return " ".join(parts)


def _estimate(value: dict[str, float] | None) -> str:
    if value is None:
        return "n/a"
    return f"{value['estimate']:+.4f} [{value['low']:+.4f}, {value['high']:+.4f}]"


def main() -> None:
    args = parse_args()
    # Every field of Args but the tag is a LoopConfig field of the same name.
    config = LoopConfig(**{k: v for k, v in dataclasses.asdict(args).items() if k != "tag"})
    result = run_loop(config, echo=print)
    name = "closed_loop" + (f"__{args.tag}" if args.tag else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    result.write_json(RESULTS / f"{name}.json")
    png = plot_loop(result, RESULTS / f"{name}.png")
    lines = [
        f"# Closed loop: {args.customers:,} customers x {args.periods} weeks, retrain every "
        f"{args.retrain_every}, epsilon {args.epsilon:g}, seed {args.seed}",
        "",
        "```",
        ".venv/bin/python experiments/closed_loop.py " + _command_line(args),
        "```",
        "",
        f"Candidates: {', '.join(args.candidates)}; start: {args.start}. "
        f"{result.seconds:.0f} s; cvm serve exit code {result.exit_code}.",
        "",
        result.table(),
        "",
        "## Promotions: OPE before, realized after (per customer-week)",
        "",
        "OPE: the promoted candidate's lift over the serving policy, estimated before the "
        "promotion. Realized: its lift over the policy it replaced while it served, in long-run "
        "value (the week's reward plus the change of the residual value, measured in the "
        "simulator), as a difference in differences against the control arm (the loop minus "
        "the control while it served, minus the same while the replaced policy served; paired "
        "by customer).",
        "",
        "| after period | promoted | replaced | OPE lift [95% CI] | realized lift [95% CI] | "
        "weeks served (before) | value/customer-week while it served |",
        "|---:|---|---|---|---|---|---:|",
    ]
    for p in result.promotions():
        ope, realized = p["ope_lift_per_week"], p["realized_lift_per_week"]
        after = p["realized_value_per_week_after"]
        lines.append(
            f"| {p['period']} | {p['promoted']} | {p['replaced']} | {_estimate(ope)} | "
            f"{_estimate(realized)} | {p['weeks_after']} ({p['weeks_before']}) | "
            + ("n/a" if after is None else f"{after:.3f}")
            + " |"
        )
    if not result.promotions():
        lines.append("| | none | | | | | |")
    total = result.realized_lift()
    if total is not None:
        lines += [
            "",
            f"Realized long-run value per customer over the {args.periods} weeks, the loop minus "
            f"the control arm ({args.start} alone, same customers; paired): "
            f"{total.format(signed=True)}.",
        ]
    lines += ["", f"![value per period]({png.name})", ""]
    (RESULTS / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
