"""``cvm calibrate``: fit BG/NBD and Gamma-Gamma by maximum likelihood on your transactions.

Reads one transaction per line (customer id, date, amount), summarizes each customer's
recency, frequency and monetary value up to the end of the calibration period, fits the
purchase and spend models and prints the estimates; ``--out`` writes them as a scenario's
``[purchase]`` fragment.

  cvm calibrate transactions.csv --customer-column 0 --date-column 2 --amount-column 4 \\
      --calibration-end 1997-09-30 --out purchase.toml
"""

from __future__ import annotations

import argparse
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from cvm_rl.cli.common import CliError

if TYPE_CHECKING:
    from cvm_rl.calibration import Column

HELP = "fit BG/NBD + Gamma-Gamma on transactions"


def _column_argument(text: str) -> Column:
    return int(text) if text.isdigit() else text


def _iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO date YYYY-MM-DD, got {text!r}") from None


def _delimiter_argument(text: str) -> str:
    # A literal tab is awkward to type in a shell.
    return "\t" if text in ("\\t", "tab") else text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("transactions", type=Path, metavar="TRANSACTIONS", help="transaction file")
    column_help = "0-based index or header name (default: %(default)s, the CDNOW layout)"
    parser.add_argument("--customer-column", type=_column_argument, default=0, help=column_help)
    parser.add_argument("--date-column", type=_column_argument, default=2, help=column_help)
    parser.add_argument("--amount-column", type=_column_argument, default=4, help=column_help)
    parser.add_argument(
        "--date-format", default="%Y%m%d", help="strptime format (default: %(default)s)"
    )
    parser.add_argument(
        "--delimiter",
        type=_delimiter_argument,
        default=None,
        help="field separator, e.g. ',' or '\\t' (default: any whitespace)",
    )
    parser.add_argument(
        "--header",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="first line is a header (default: yes exactly when a column is given by name)",
    )
    parser.add_argument(
        "--calibration-start",
        type=_iso_date,
        default=None,
        metavar="YYYY-MM-DD",
        help="customers who bought before this day are left out (default: keep all)",
    )
    parser.add_argument(
        "--calibration-end",
        type=_iso_date,
        required=True,
        metavar="YYYY-MM-DD",
        help="last day of the calibration period, inclusive (CDNOW: 1997-09-30)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, metavar="PATH", help="write a TOML [purchase] fragment"
    )


def run(args: argparse.Namespace) -> int:
    """Fit, print the estimates, optionally write the fragment."""
    from cvm_rl.calibration import (
        CalibrationError,
        calibrate,
        load_transactions,
        scenario_values,
        write_scenario_fragment,
    )

    try:
        transactions = load_transactions(
            args.transactions,
            customer_column=args.customer_column,
            date_column=args.date_column,
            amount_column=args.amount_column,
            date_format=args.date_format,
            delimiter=args.delimiter,
            header=args.header,
        )
        result = calibrate(transactions, args.calibration_start, args.calibration_end)
        if args.out is not None:
            write_scenario_fragment(result, args.out)
    except (CalibrationError, OSError) as exc:
        raise CliError(" ".join(str(exc).splitlines())) from None

    s, bg, gg = result.summary, result.bgnbd, result.gamma_gamma
    print(
        f"{len(s)} customers ({s.n_excluded_before_start} excluded as acquired before the "
        f"period), {gg.n_customers} repeat buyers in the spend fit "
        f"({result.n_zero_spend} left out for zero spend), calibration end {s.calibration_end}"
    )
    print(f"{'parameter':<12} {'estimate':>10}")
    for key, value in scenario_values(result).items():
        print(f"{key:<12} {value:>10.4g}")
    print(f"log-likelihood: BG/NBD {bg.log_likelihood:.2f}, Gamma-Gamma {gg.log_likelihood:.2f}")
    if args.out is not None:
        print(f"wrote {args.out}")
    return 0
