"""Calibration of the BG/NBD + Gamma-Gamma purchase model on transaction data."""

from __future__ import annotations

import argparse
import csv
import math
import re
import tomllib
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from cvm_rl.calibration import (
    CalibrationError,
    CalibrationResult,
    Transactions,
    bgnbd_log_likelihood,
    calibrate,
    fit_bgnbd,
    fit_gamma_gamma,
    gamma_gamma_log_likelihood,
    holdout_repeat_counts,
    load_transactions,
    repeat_purchase_histogram,
    summarize,
    write_scenario_fragment,
)
from cvm_rl.cli import main
from cvm_rl.cli.calibrate import add_arguments as add_calibrate_arguments
from cvm_rl.datasets import lifetimes_dataset

CALIBRATION_START = date(1997, 1, 1)
CALIBRATION_END = date(1997, 9, 30)  # 39 weeks after 1997-01-01

# Fader, Hardie & Lee (2005) and Fader & Hardie (2013), CDNOW 1/10th sample, weeks 1-39.
PUBLISHED_BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
PUBLISHED_GAMMA_GAMMA = {"p": 6.25, "q": 3.74, "gamma": 15.44}
PUBLISHED_BGNBD_LL = -9582.4


@pytest.fixture(scope="module")
def cdnow_path() -> Path:
    return lifetimes_dataset("CDNOW_sample.txt")


@pytest.fixture(scope="module")
def cdnow_result(cdnow_path: Path) -> CalibrationResult:
    return calibrate(load_transactions(cdnow_path), CALIBRATION_START, CALIBRATION_END)


# ---------------------------------------------------------------------------------------------
# CDNOW: the published numbers


def test_cdnow_load(cdnow_path: Path) -> None:
    transactions = load_transactions(cdnow_path)
    assert len(transactions) == 6919
    assert len(np.unique(transactions.customer_ids)) == 2357
    assert transactions.customer_ids[0] == "00004"
    assert transactions.dates[0] == np.datetime64("1997-01-01")
    assert transactions.amounts[0] == pytest.approx(29.33)
    assert transactions.dates.dtype == np.dtype("datetime64[D]")
    assert transactions.amounts.dtype == np.float64


@pytest.mark.parametrize("name", sorted(PUBLISHED_BGNBD))
def test_cdnow_bgnbd_matches_published(cdnow_result: CalibrationResult, name: str) -> None:
    fitted = getattr(cdnow_result.bgnbd, name)
    assert fitted == pytest.approx(PUBLISHED_BGNBD[name], rel=0.01)


@pytest.mark.parametrize("name", sorted(PUBLISHED_GAMMA_GAMMA))
def test_cdnow_gamma_gamma_matches_published(cdnow_result: CalibrationResult, name: str) -> None:
    fitted = getattr(cdnow_result.gamma_gamma, name)
    assert fitted == pytest.approx(PUBLISHED_GAMMA_GAMMA[name], rel=0.01)


def test_cdnow_fit_is_a_maximum(cdnow_result: CalibrationResult) -> None:
    bg, summary = cdnow_result.bgnbd, cdnow_result.summary
    assert bg.n_customers == 2357
    assert cdnow_result.gamma_gamma.n_customers == 946
    assert bg.log_likelihood == pytest.approx(PUBLISHED_BGNBD_LL, abs=0.05)
    best = bgnbd_log_likelihood(summary.x, summary.t_x, summary.T, bg.r, bg.alpha, bg.a, bg.b)
    assert best == pytest.approx(bg.log_likelihood, rel=1e-12)
    # No 0.1 % step in any parameter improves the likelihood.
    for i in range(4):
        for step in (0.999, 1.001):
            params = [bg.r, bg.alpha, bg.a, bg.b]
            params[i] *= step
            assert bgnbd_log_likelihood(summary.x, summary.t_x, summary.T, *params) < best
    gg = cdnow_result.gamma_gamma
    gg_best = gamma_gamma_log_likelihood(summary.x, summary.m_x, gg.p, gg.q, gg.gamma)
    assert gg_best == pytest.approx(gg.log_likelihood, rel=1e-12)
    for i in range(3):
        for step in (0.999, 1.001):
            gg_params = [gg.p, gg.q, gg.gamma]
            gg_params[i] *= step
            assert gamma_gamma_log_likelihood(summary.x, summary.m_x, *gg_params) < gg_best


def test_cdnow_summary_matches_lifetimes(cdnow_path: Path) -> None:
    # The reference summary is keyed by the sample id (second column) and carries the mean
    # repeat-transaction value as zbar; values are rounded to 2 decimals.
    transactions = load_transactions(cdnow_path, customer_column=1)
    summary = summarize(
        transactions, calibration_start=CALIBRATION_START, calibration_end=CALIBRATION_END
    )
    reference_file = cdnow_path.parent / "cdnow_customers_summary_with_transactions.csv"
    with reference_file.open(newline="") as handle:
        reference = {int(row["ID"]): row for row in csv.DictReader(handle)}
    assert len(summary) == len(reference) == 2357
    order = np.argsort(summary.customer_ids.astype(np.int64))
    ids = summary.customer_ids.astype(np.int64)[order]
    np.testing.assert_array_equal(ids, sorted(reference))

    def column(name: str) -> np.ndarray:
        return np.array([float(reference[i][name]) for i in ids])

    np.testing.assert_array_equal(summary.x[order], column("x"))
    np.testing.assert_allclose(summary.t_x[order], column("t_x"), atol=0.005 + 1e-9)
    np.testing.assert_allclose(summary.T[order], column("T"), atol=0.005 + 1e-9)
    repeat = summary.x[order] > 0
    np.testing.assert_allclose(summary.m_x[order][repeat], column("zbar")[repeat], atol=0.005)
    assert np.all(np.isnan(summary.m_x[order][~repeat]))

    # The frequency/recency/T file without spend says the same.
    with (cdnow_path.parent / "cdnow_customers_summary.csv").open(newline="") as handle:
        plain = {int(row["ID"]): row for row in csv.DictReader(handle)}
    np.testing.assert_array_equal(summary.x[order], [int(plain[i]["frequency"]) for i in ids])
    np.testing.assert_allclose(
        summary.t_x[order], [float(plain[i]["recency"]) for i in ids], atol=0.005 + 1e-9
    )
    np.testing.assert_allclose(
        summary.T[order], [float(plain[i]["T"]) for i in ids], atol=0.005 + 1e-9
    )


def test_cdnow_histogram_and_holdout(cdnow_path: Path, cdnow_result: CalibrationResult) -> None:
    summary = cdnow_result.summary
    histogram = repeat_purchase_histogram(summary.x, 7)
    assert histogram.tolist() == [1411, 439, 214, 100, 62, 38, 29, 64]
    holdout = holdout_repeat_counts(load_transactions(cdnow_path), summary, date(1998, 6, 30))
    assert holdout.shape == (2357,)
    assert int(holdout.sum()) == 1882  # purchase days in weeks 40-78


def test_calibrate_leaves_zero_spend_out_of_the_spend_fit(
    cdnow_path: Path, cdnow_result: CalibrationResult
) -> None:
    transactions = load_transactions(cdnow_path)
    summary = cdnow_result.summary
    i = int(np.flatnonzero(summary.x == 1)[0])
    free = (transactions.customer_ids == summary.customer_ids[i]) & (
        transactions.dates > summary.first_purchase[i]
    )
    amounts = transactions.amounts.copy()
    amounts[free] = 0.0
    result = calibrate(
        Transactions(transactions.customer_ids, transactions.dates, amounts),
        CALIBRATION_START,
        CALIBRATION_END,
    )
    assert result.n_zero_spend == 1
    assert result.gamma_gamma.n_customers == 945
    assert result.bgnbd == cdnow_result.bgnbd  # the purchase model still counts the customer


# ---------------------------------------------------------------------------------------------
# Recovery of known parameters from simulated customers


def _simulate_bgnbd(
    rng: np.random.Generator, n: int, r: float, alpha: float, a: float, b: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Acquisition spread over a quarter, observed up to week 52.
    T = 52.0 - rng.uniform(0.0, 13.0, n)
    rate = rng.gamma(r, 1.0 / alpha, n)
    dropout = rng.beta(a, b, n)
    # Poisson purchases on [0, T]; the customer drops out right after the J-th repeat purchase.
    purchases = rng.poisson(rate * T)
    lifetime_purchases = rng.geometric(dropout)
    x = np.minimum(purchases, lifetime_purchases)
    # Given n Poisson arrivals on [0, T], the x-th one is T times a Beta(x, n - x + 1).
    t_x = np.zeros(n)
    repeat = x > 0
    t_x[repeat] = T[repeat] * rng.beta(x[repeat], purchases[repeat] - x[repeat] + 1)
    return x, t_x, T


def _standard_errors(log_likelihood, log_params: np.ndarray, step: float = 1e-4) -> np.ndarray:
    """Standard errors of the log-parameters from a finite-difference observed information."""
    k = len(log_params)
    hessian = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            total = 0.0
            for si, sj, sign in ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)):
                shifted = log_params.copy()
                shifted[i] += si * step
                shifted[j] += sj * step
                total += sign * log_likelihood(shifted)
            hessian[i, j] = total / (4 * step * step)
    return np.sqrt(np.diag(np.linalg.inv(-hessian)))


def test_bgnbd_recovers_simulated_parameters() -> None:
    truth = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
    x, t_x, T = _simulate_bgnbd(np.random.default_rng(20240501), 20_000, **truth)
    fitted = fit_bgnbd(x, t_x, T)
    estimate = np.log([fitted.r, fitted.alpha, fitted.a, fitted.b])
    se = _standard_errors(lambda lp: bgnbd_log_likelihood(x, t_x, T, *np.exp(lp)), estimate.copy())
    error = estimate - np.log(list(truth.values()))
    # An MLE is off by about one standard error; 4 of them would be a 1-in-15000 fluke.
    assert np.all(np.abs(error) < 4 * se), (error, se)
    # And with 20k customers the standard errors are small enough for this to mean something.
    assert np.all(se < 0.15), se


def test_gamma_gamma_recovers_simulated_parameters() -> None:
    rng = np.random.default_rng(7)
    p, q, gamma = 6.25, 3.74, 15.44
    n = 20_000
    x = rng.integers(1, 10, n)
    scale = 1.0 / rng.gamma(q, 1.0 / gamma, n)  # each customer's spend rate nu
    # The mean of x Gamma(p, nu) values is Gamma(p x, rate nu x).
    m_x = rng.gamma(p * x, scale / x)
    fitted = fit_gamma_gamma(x, m_x)
    estimate = np.log([fitted.p, fitted.q, fitted.gamma])
    se = _standard_errors(
        lambda lp: gamma_gamma_log_likelihood(x, m_x, *np.exp(lp)), estimate.copy()
    )
    error = estimate - np.log([p, q, gamma])
    assert np.all(np.abs(error) < 4 * se), (error, se)
    assert np.all(se < 0.15), se


def test_gamma_gamma_skips_non_repeat_buyers() -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(1, 5, 500)
    m_x = rng.gamma(5.0, 4.0, 500)
    with_zeros = fit_gamma_gamma(np.r_[x, [0, 0]], np.r_[m_x, [np.nan, 0.0]])
    assert with_zeros == fit_gamma_gamma(x, m_x)
    assert with_zeros.n_customers == 500


# ---------------------------------------------------------------------------------------------
# Summary conventions on a hand-made file


def _write(tmp_path: Path, text: str, name: str = "tx.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_summarize_conventions(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "cust,day,value\n"
        "A,2020-01-01,10\n"
        "A,2020-01-01,5\n"  # same day: merged with the first purchase
        "A,2020-01-08,20\n"
        "A,2020-01-08,2\n"  # same day: one repeat purchase worth 22
        "A,2020-01-29,8\n"  # on calibration_end: counts
        "A,2020-01-30,100\n"  # after calibration_end: ignored
        "B,2020-01-15,7\n"
        "C,2019-12-31,3\n"  # bought before the period: excluded
        "C,2020-01-10,3\n"
        "D,2020-02-01,9\n",  # first purchase after the period: not a customer yet
        name="tx.csv",
    )
    transactions = load_transactions(
        path,
        customer_column="cust",
        date_column="day",
        amount_column="value",
        delimiter=",",
        date_format="%Y-%m-%d",
    )
    assert transactions.source == str(path)
    summary = summarize(
        transactions, calibration_start=date(2020, 1, 1), calibration_end=date(2020, 1, 29)
    )
    assert summary.customer_ids.tolist() == ["A", "B"]
    assert summary.x.tolist() == [2, 0]
    np.testing.assert_allclose(summary.t_x, [4.0, 0.0])
    np.testing.assert_allclose(summary.T, [4.0, 2.0])
    assert summary.m_x[0] == pytest.approx(15.0)  # (22 + 8) / 2, the first purchase left out
    assert math.isnan(summary.m_x[1])
    assert summary.n_excluded_before_start == 1
    assert summary.first_purchase.tolist() == [date(2020, 1, 1), date(2020, 1, 15)]

    # Without a start date, C's first purchase starts C's clock.
    open_start = summarize(transactions, calibration_start=None, calibration_end=date(2020, 1, 29))
    assert open_start.customer_ids.tolist() == ["A", "B", "C"]
    assert open_start.x.tolist() == [2, 0, 1]
    assert open_start.n_excluded_before_start == 0

    holdout = holdout_repeat_counts(transactions, summary, date(2020, 2, 29))
    assert holdout.tolist() == [1, 0]


def test_load_by_index_with_header_skips_header(tmp_path: Path) -> None:
    path = _write(tmp_path, "id\tdate\tamount\n\n7\t20200102\t1.5\n", name="tx.tsv")
    transactions = load_transactions(
        path, customer_column=0, date_column=1, amount_column=2, delimiter="\t", header=True
    )
    assert transactions.customer_ids.tolist() == ["7"]
    assert transactions.dates.tolist() == [date(2020, 1, 2)]


def test_repeat_purchase_histogram() -> None:
    assert repeat_purchase_histogram([0, 0, 1, 3, 4, 9], 3).tolist() == [2, 1, 0, 3]
    assert repeat_purchase_histogram([0, 2], 1).tolist() == [1, 1]
    with pytest.raises(CalibrationError, match="max_count"):
        repeat_purchase_histogram([0, 1], 0)
    with pytest.raises(CalibrationError, match="x: negative"):
        repeat_purchase_histogram([0, -1], 3)


# ---------------------------------------------------------------------------------------------
# Bad input


GOOD_LINE = " 00004 0001 19970101  2   29.33\n"


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        (
            GOOD_LINE + " 00004 0001 1997-01-18  2   29.73\n",
            {},
            r"bad\.txt, line 2, date column 2: cannot parse date '1997-01-18' with format",
        ),
        (
            GOOD_LINE + GOOD_LINE + " 00004 0001 19970118  2   -1.5\n",
            {},
            r"bad\.txt, line 3, amount column 4: expected a finite non-negative amount, "
            r"got '-1\.5'",
        ),
        (
            GOOD_LINE + " 00004 0001 19970118  2   $29\n",
            {},
            r"bad\.txt, line 2, amount column 4: expected a number, got '\$29'",
        ),
        (
            GOOD_LINE + " 00004 0001 19970118  2   nan\n",
            {},
            r"bad\.txt, line 2, amount column 4: expected a finite non-negative amount",
        ),
        (
            GOOD_LINE + " 00004 0001 19970118\n",
            {},
            r"bad\.txt, line 2: missing amount column 4 \(expected at least 5 fields, got 3\)",
        ),
        ("", {}, r"bad\.txt: empty file, no transactions found"),
        ("\n   \n", {}, r"bad\.txt: empty file, no transactions found"),
        ("id date amount\n", {"header": True}, r"bad\.txt: empty file, no transactions found"),
        ("", {"customer_column": "id"}, r"bad\.txt: empty file, expected a header line"),
        (
            "id date amount\n1 19970101 3\n",
            {"customer_column": "customer", "date_column": 1, "amount_column": 2},
            r"bad\.txt, line 1: unknown customer column 'customer'; header has 'id', 'date'",
        ),
        (
            "1 19970101 3\n",
            {"amount_column": "amount", "header": False},
            r"amount column 'amount' is given by name but the file is read without a header",
        ),
        (
            "id,date,amount\n1,1997-01-01,3\n2,1997-13-01,4\n",
            {
                "customer_column": "id",
                "date_column": "date",
                "amount_column": "amount",
                "delimiter": ",",
                "date_format": "%Y-%m-%d",
            },
            r"bad\.txt, line 3, date column 'date': cannot parse date '1997-13-01'",
        ),
        (GOOD_LINE, {"delimiter": ", "}, r"delimiter must be one character"),
        (GOOD_LINE, {"date_column": -1}, r"date column index must be >= 0"),
    ],
)
def test_load_rejects_bad_input(
    tmp_path: Path, text: str, kwargs: dict[str, object], message: str
) -> None:
    path = _write(tmp_path, text, name="bad.txt")
    with pytest.raises(CalibrationError, match=message):
        load_transactions(path, **kwargs)  # type: ignore[arg-type]


def test_calibration_error_is_a_value_error() -> None:
    assert issubclass(CalibrationError, ValueError)


@pytest.mark.parametrize(
    ("x", "t_x", "T", "message"),
    [
        ([1, 2, 0], [1.0, 2.0], [3.0, 3.0, 3.0], "arrays differ in length: x has 3, t_x has 2"),
        ([1, 2], [1.0, 2.0], [3.0], "arrays differ in length: .*T has 1"),
        ([1, 2], [1.0, 4.0], [3.0, 3.0], re.escape("t_x > T at index 1 (4.0 > 3.0)")),
        ([1, -2], [1.0, 2.0], [3.0, 3.0], "x: negative value -2.0 at index 1"),
        ([1, 1.5], [1.0, 2.0], [3.0, 3.0], "x: expected whole counts, got 1.5 at index 1"),
        ([1, 1], [1.0, -2.0], [3.0, 3.0], "t_x: negative value"),
        ([1, 1], [1.0, 2.0], [3.0, np.inf], "T: non-finite value at index 1"),
        ([1, 0], [1.0, 2.0], [3.0, 3.0], "t_x must be 0 where x == 0"),
        ([], [], [], "no customers"),
        ([[1]], [[1.0]], [[2.0]], "x: expected a 1-D array"),
    ],
)
def test_fit_bgnbd_rejects_bad_input(x: list, t_x: list, T: list, message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        fit_bgnbd(x, t_x, T)


@pytest.mark.parametrize(
    ("x", "m_x", "message"),
    [
        ([1, 2], [3.0], "arrays differ in length: x has 2, m_x has 1"),
        ([1, 2], [3.0, 0.0], "m_x must be > 0 for repeat buyers; m_x = 0.0 at index 1"),
        ([1, 2], [3.0, np.nan], "m_x must be > 0 for repeat buyers; m_x = nan at index 1"),
        ([1, 2], [3.0, -1.0], "m_x: negative value"),
        ([0, 0], [np.nan, np.nan], r"x: no repeat buyers \(x > 0\)"),
    ],
)
def test_fit_gamma_gamma_rejects_bad_input(x: list, m_x: list, message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        fit_gamma_gamma(x, m_x)


def test_fit_rejects_unidentified_data() -> None:
    # Nobody ever buys again: the purchase rate runs off to zero and a, b are free.
    with pytest.raises(CalibrationError, match=r"x: no repeat purchases \(all x == 0\)"):
        fit_bgnbd(np.zeros(50), np.zeros(50), np.full(50, 10.0))


def test_summarize_rejects_bad_period(cdnow_path: Path) -> None:
    transactions = load_transactions(cdnow_path)
    with pytest.raises(CalibrationError, match="calibration_start 1997-10-01 is after"):
        summarize(
            transactions, calibration_start=date(1997, 10, 1), calibration_end=CALIBRATION_END
        )
    with pytest.raises(CalibrationError, match="no customer made a first purchase"):
        summarize(transactions, calibration_start=None, calibration_end=date(1996, 12, 31))


def test_transactions_checks_lengths() -> None:
    with pytest.raises(CalibrationError, match="differ in length"):
        Transactions(
            customer_ids=np.array(["a"]),
            dates=np.array([], dtype="datetime64[D]"),
            amounts=np.array([1.0]),
        )


# ---------------------------------------------------------------------------------------------
# Scenario fragment and command line

SCENARIO_KEYS = {"r", "alpha", "a", "b", "spend_p", "spend_q", "spend_gamma"}


def test_write_scenario_fragment(tmp_path: Path, cdnow_result: CalibrationResult) -> None:
    path = tmp_path / "fitted.toml"
    write_scenario_fragment(cdnow_result, path)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# fitted by cvm calibrate on ")
    assert "1997-01-01 to 1997-09-30" in text
    data = tomllib.loads(text)
    assert set(data) == {"purchase"}
    purchase = data["purchase"]
    assert set(purchase) == SCENARIO_KEYS
    assert all(isinstance(value, float) for value in purchase.values())
    assert purchase["r"] == pytest.approx(cdnow_result.bgnbd.r, rel=1e-3)
    assert purchase["spend_gamma"] == pytest.approx(cdnow_result.gamma_gamma.gamma, rel=1e-3)

    # The simulator's scenario schema accepts the table as it is.
    config = pytest.importorskip("simulator.config")
    model = config.PurchaseModel.model_validate(purchase)
    assert model.alpha == purchase["alpha"]
    assert model.spend_q == purchase["spend_q"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvm calibrate")
    add_calibrate_arguments(parser)
    return parser


def test_run_calibrate_on_cdnow(
    tmp_path: Path, cdnow_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cdnow.toml"
    argv = [
        "calibrate",
        str(cdnow_path),
        *("--calibration-start", "1997-01-01", "--calibration-end", "1997-09-30"),
        *("--out", str(out)),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "2357 customers" in printed
    assert re.search(r"^r\s+0\.2426$", printed, re.MULTILINE)
    assert re.search(r"^spend_gamma\s+15\.44$", printed, re.MULTILINE)
    purchase = tomllib.loads(out.read_text(encoding="utf-8"))["purchase"]
    assert set(purchase) == SCENARIO_KEYS
    assert purchase["b"] == pytest.approx(PUBLISHED_BGNBD["b"], rel=0.01)


def test_run_calibrate_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, GOOD_LINE + " 00004 0001 19971399 1 3.0\n", name="bad.txt")
    assert main(["calibrate", str(path), "--calibration-end", "1997-09-30"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert "line 2, date column 2: cannot parse date '19971399'" in captured.err

    missing = ["calibrate", str(tmp_path / "nope.txt"), "--calibration-end", "1997-09-30"]
    assert main(missing) == 2
    assert "nope.txt" in capsys.readouterr().err


def test_calibrate_arguments() -> None:
    args = _parser().parse_args(
        [
            "tx.csv",
            *("--customer-column", "cust", "--date-column", "3", "--delimiter", "\\t"),
            *("--no-header", "--calibration-end", "2020-12-31"),
        ]
    )
    assert args.customer_column == "cust"
    assert args.date_column == 3
    assert args.amount_column == 4
    assert args.delimiter == "\t"
    assert args.header is False
    assert args.calibration_start is None
    assert args.calibration_end == date(2020, 12, 31)
    assert args.out is None
    with pytest.raises(SystemExit):
        _parser().parse_args(["tx.csv"])  # the end of the calibration period is required
    with pytest.raises(SystemExit):
        _parser().parse_args(["tx.csv", "--calibration-end", "30/09/1997"])
