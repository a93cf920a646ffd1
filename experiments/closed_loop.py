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

from cvm_rl.loop.closed_loop import (
    CANDIDATES,
    DEFAULT_CANDIDATES,
    STARTS,
    LoopConfig,
    plot_loop,
    run_loop,
)

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Args:
    customers: int = 10_000
    periods: int = 24
    retrain_every: int = 4
    epsilon: float = 0.1
    seed: int = 0
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES
    start: str = "rules"
    n_bootstrap: int = 200
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
        else:
            parser.add_argument(flag, type=type(value), default=value)
    parsed = vars(parser.parse_args())
    parsed["candidates"] = tuple(parsed["candidates"])
    return Args(**parsed)


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
        ".venv/bin/python experiments/closed_loop.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, tuple) else v}"
            for k, v in dataclasses.asdict(args).items()
            if k != "tag" or v
        ),
        "```",
        "",
        f"Candidates: {', '.join(args.candidates)}; start: {args.start}. "
        f"{result.seconds:.0f} s; cvm serve exit code {result.exit_code}.",
        "",
        result.table(),
        "",
        "## Promotions: OPE before, realized after (value per customer-week)",
        "",
        "| after period | promoted | replaced | OPE estimate [95% CI] | serving policy's logged "
        "value | realized while it served |",
        "|---:|---|---|---|---|---|",
    ]
    for p in result.promotions():
        ope, logged = p["ope_value_per_week"], p["serving_logged_value_per_week"]
        after = p["realized_value_per_week_after"]
        lines.append(
            f"| {p['period']} | {p['promoted']} | {p['replaced']} | {ope['estimate']:.3f} "
            f"[{ope['low']:.3f}, {ope['high']:.3f}] | {logged['estimate']:.3f} | "
            + ("n/a" if after is None else f"{after:.3f} ({p['weeks_after']} weeks)")
            + " |"
        )
    if not result.promotions():
        lines.append("| | none | | | | |")
    lines += ["", f"![value per period]({png.name})", ""]
    (RESULTS / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
