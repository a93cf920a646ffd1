"""The ``cvm`` command line: offer and channel decisions for long-run customer value.

One module per command in this package (named as the command, or giving its ``NAME`` when
that has a hyphen), each with ``HELP`` (its line in ``cvm --help``), a
docstring (its description), ``add_arguments(parser)`` and ``run(args) -> int``. Command
modules import only ``argparse`` and :mod:`cvm_rl.cli.common` at module level and the heavy
parts (numpy, torch, grpc, pyarrow, matplotlib) inside ``run``, so ``cvm --help`` answers
at once and a serving-only install runs ``cvm serve`` without the training stack.

Every bad value ends the same way: ``error: <option>: <problem>`` on one line of stderr and
exit code 2 (argparse's own usage errors too exit with 2).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cvm_rl import __version__
from cvm_rl.cli.common import CliError, HelpFormatter

COMMANDS: tuple[str, ...] = (
    "demo",
    "train",
    "sweep",
    "evaluate",
    "calibrate",
    "calibrate_response",
    "scenario",
    "logs",
    "ope",
    "serve",
    "loop",
)
"""Command modules of this package, in the order ``cvm --help`` lists them."""

_INPUT_ERRORS = (
    ("simulator.config", "ScenarioError"),
    ("cvm_rl.bundle", "BundleError"),
    ("cvm_rl.logs.records", "DecisionLogError"),
    ("cvm_rl.ope.inputs", "OpeInputError"),
)
"""Errors that describe bad input (a scenario, a bundle, a log), not a bug: printed like a
CliError. Looked up among loaded modules only, so checking costs no import."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cvm",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMANDS:
        module = importlib.import_module(f"cvm_rl.cli.{module_name}")
        command = sub.add_parser(
            getattr(module, "NAME", module_name),
            help=module.HELP,
            description=module.__doc__,
            formatter_class=HelpFormatter,
        )
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def _is_input_error(exc: BaseException) -> bool:
    for module_name, class_name in _INPUT_ERRORS:
        module = sys.modules.get(module_name)
        error_type = getattr(module, class_name, None)
        if error_type is not None and isinstance(exc, error_type):
            return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ValueError as exc:
        if not (isinstance(exc, CliError) or _is_input_error(exc)):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
