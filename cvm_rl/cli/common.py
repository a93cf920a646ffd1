"""What the ``cvm`` commands share: the error type, the help format, option parsers.

Imports nothing heavy: every command module imports this one to declare its options, and
``cvm --help`` builds every command's parser.
"""

from __future__ import annotations

import argparse
import contextlib
import math
from collections.abc import Iterator

from cvm_rl.bundle_paths import bundle_dir as bundle_dir  # re-exported for the commands
from cvm_rl.train_config import HELD_OUT_SEED_START


class CliError(ValueError):
    """A bad command-line value; printed as ``error: <option>: <problem>`` (exit code 2)."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the command descriptions' line breaks and appends each option's default to its
    help (unless the default is empty or the help already states it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or default in (None, False, argparse.SUPPRESS, [], ())
            or action.option_strings == []
        ):
            return text
        return f"{text} (default: %(default)s)"


def layer_widths(text: str) -> list[int]:
    """Hidden layer widths like ``128,128`` (``--net-arch``)."""
    try:
        widths = [int(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected widths like 128,128, got {text!r}") from None
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected positive widths, got {text!r}")
    return widths


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def add_seed_arguments(parser: argparse.ArgumentParser, *, default_count: int) -> None:
    """``--seeds N --seed-start S``: the held-out populations S, S+1, ..., S+N-1."""
    parser.add_argument(
        "--seeds",
        type=positive_int,
        default=default_count,
        metavar="N",
        help="number of held-out populations (seeds --seed-start, --seed-start + 1, ...)",
    )
    parser.add_argument(
        "--seed-start",
        type=int,
        default=HELD_OUT_SEED_START,
        metavar="S",
        help="first held-out seed (training uses 0..999, validation 10000 and up)",
    )


def seeds_from_args(args: argparse.Namespace) -> list[int]:
    return list(range(args.seed_start, args.seed_start + args.seeds))


def add_scenario_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", default="default", help="built-in name or TOML path")


@contextlib.contextmanager
def needs_extra(extra: str, option: str) -> Iterator[None]:
    """Turn a missing optional dependency into ``error: <option>: needs the '<extra>'
    extra`` (a serving-only install, say, has no torch for ``cvm train``)."""
    try:
        yield
    except ModuleNotFoundError as exc:
        raise CliError(
            f"{option}: needs the '{extra}' extra, which is not installed (no module "
            f"{exc.name!r}): pip install 'cvm-rl[{extra}]'"
        ) from None
