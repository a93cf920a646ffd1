"""Start-up time of the ``cvm`` command: ``cvm --help`` and a command's ``--help``.

Prints a table and writes ``bench/results/cli.json``. Run: ``make bench`` or
``.venv/bin/python -m bench.cli [--runs 5] [--ref GIT_REF]``. Each figure is the median wall
time of ``--runs`` fresh processes (``python -m cvm_rl.cli ...``, the ``cvm`` entry point's
module). ``--ref`` also measures a git revision, checked out into a temporary worktree, in
the same run (turns taken alternately), so the two trees are compared on the same machine
state.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.machine import write_result
from bench.trees import ROOT
from bench.trees import trees as source_trees

COMMANDS: tuple[tuple[str, ...], ...] = (("--help",), ("serve", "--help"), ("train", "--help"))


@dataclass
class Args:
    runs: int = 5
    ref: str | None = None
    out: str = "bench/results/cli.json"
    commands: list[list[str]] = field(default_factory=lambda: [list(c) for c in COMMANDS])


def _time_once(tree: Path, command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "cvm_rl.cli", *command],
        cwd=tree,  # the tree's own packages come first on sys.path
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def measure(trees: dict[str, Path], commands: list[list[str]], runs: int) -> dict[str, dict]:
    """Median seconds per (tree, command) over ``runs`` fresh processes, taken in turns."""
    samples: dict[str, dict[str, list[float]]] = {
        name: {" ".join(c): [] for c in commands} for name in trees
    }
    for tree in trees.values():  # warm the file cache once per tree
        _time_once(tree, commands[0])
    for _ in range(runs):
        for command in commands:
            for name, tree in trees.items():
                samples[name][" ".join(command)].append(_time_once(tree, command))
    return {
        name: {
            cmd: {"median_s": statistics.median(times), "runs_s": times}
            for cmd, times in per_command.items()
        }
        for name, per_command in samples.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=Args.runs, help="processes per figure")
    parser.add_argument("--ref", help="also measure this git revision (e.g. a commit)")
    parser.add_argument("--out", default=Args.out, help="JSON results file")
    ns = parser.parse_args(argv)
    if ns.runs < 1:
        parser.error("--runs: expected >= 1")
    args = Args(runs=ns.runs, ref=ns.ref, out=ns.out)
    with source_trees(args.ref) as trees:
        results = measure(trees, args.commands, args.runs)
    print(f"median of {args.runs} runs, seconds (python -m cvm_rl.cli ...)")
    print("| command | " + " | ".join(trees) + " |")
    print("|---|" + "---:|" * len(trees))
    for command in args.commands:
        key = " ".join(command)
        cells = [f"{results[name][key]['median_s']:.3f}" for name in trees]
        print(f"| cvm {key} | " + " | ".join(cells) + " |")
    payload = {"args": asdict(args), "machine": platform.platform(), "results": results}
    write_result(payload, ROOT / args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
