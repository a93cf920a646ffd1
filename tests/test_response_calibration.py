"""The email response fit on Hillstrom's randomized campaign: the shipped data, recovery of a
planted effect, bad inputs, the TOML fragment and ``cvm calibrate-response``."""

from __future__ import annotations

import gzip
import hashlib
import tomllib
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit, logit

from cvm_rl.calibration import CalibrationError
from cvm_rl.calibration.email_experiment import (
    EmailExperiment,
    conversion_uplift,
    fit_email_channel_response,
    simulate_email_experiment,
    with_email_response,
)
from cvm_rl.calibration.response import (
    ANY_EMAIL,
    CONTROL,
    ResponseFit,
    fit_email_response,
    response_fragment,
    response_values,
)
from cvm_rl.cli import main
from cvm_rl.datasets import (
    HILLSTROM_ARMS,
    HILLSTROM_FILE,
    HILLSTROM_SHA256,
    DatasetError,
    HillstromData,
    hillstrom_email,
)
from simulator.config import load_scenario

SHIPPED = Path(__file__).resolve().parents[1] / "cvm_rl" / "data" / HILLSTROM_FILE


@pytest.fixture(scope="module")
def shipped_fit() -> ResponseFit:
    return fit_email_response(hillstrom_email(), seed=0, n_bootstrap=200)


def test_shipped_file_is_the_published_data() -> None:
    raw = gzip.decompress(SHIPPED.read_bytes())
    assert hashlib.sha256(raw).hexdigest() == HILLSTROM_SHA256
    data = hillstrom_email()
    assert len(data) == 64_000 and data.sha256 == HILLSTROM_SHA256
    published = {  # conversion %, spend $ per customer, to the published rounding
        "Mens E-Mail": (1.25, 1.42),
        "Womens E-Mail": (0.88, 1.08),
        "No E-Mail": (0.57, 0.65),
    }
    for arm, (conversion, spend) in published.items():
        rows = data.segment == arm
        assert round(100 * float(data.conversion[rows].mean()), 2) == conversion
        assert round(float(data.spend[rows].mean()), 2) == spend


def test_fit_on_shipped_data_matches_arm_means(shipped_fit: ResponseFit) -> None:
    data = hillstrom_email()
    for name in HILLSTROM_ARMS:
        rows = data.segment == name
        arm = shipped_fit.arm(name)
        assert arm.n == int(rows.sum())
        assert arm.conversion.estimate == pytest.approx(data.conversion[rows].mean())
        assert arm.conversion.low < arm.conversion.estimate < arm.conversion.high
    mens = shipped_fit.uplift("Mens E-Mail")
    expected = (
        data.conversion[data.segment == "Mens E-Mail"].mean()
        - data.conversion[data.segment == CONTROL].mean()
    )
    assert mens.conversion.estimate == pytest.approx(expected)
    assert mens.conversion.low > 0  # the published result: the men's email lifts conversion
    hurt = shipped_fit.hurt()
    assert 0 <= hurt.low <= hurt.high <= 1


def _synthetic(
    n: int,
    seed: int,
    *,
    base: float,
    uplift: float,
    recency_slope: float,
    newbie_rate_ratio: float | None = None,
) -> tuple[HillstromData, float, float]:
    """Hillstrom-shaped data with a planted email effect on the log-odds: ``uplift`` at the
    mean recency, changing by ``recency_slope`` per month; nothing else matters. With
    ``newbie_rate_ratio``, email multiplies conversion by (1 + ``uplift``) for the others and
    by (1 + ``newbie_rate_ratio`` x ``uplift``) for newbies instead. Returns the data, the
    mean recency and the true average conversion uplift of email on this sample."""
    rng = np.random.default_rng(seed)
    recency = rng.integers(1, 13, n)
    history = np.round(rng.lognormal(5.0, 0.8, n) + 29.99, 2)
    mens = rng.random(n) < 0.55
    womens = ~mens | (rng.random(n) < 0.5)
    newbie = rng.random(n) < 0.5
    arm = rng.integers(0, 3, n)
    centred = recency - recency.mean()
    treatment = uplift + recency_slope * centred
    p0 = np.full(n, base)
    p1 = expit(logit(base) + treatment)
    if newbie_rate_ratio is not None:
        p1 = base * (1.0 + uplift * np.where(newbie, newbie_rate_ratio, 1.0))
    p = np.where(arm > 0, p1, p0)
    conversion = rng.random(n) < p
    spend = np.where(conversion, np.round(rng.gamma(2.0, 60.0, n), 2), 0.0)
    labels = np.array(HILLSTROM_ARMS)
    data = HillstromData(
        recency=recency.astype(np.int64),
        history_segment=np.full(n, "1) $0 - $100"),
        history=history,
        mens=mens,
        womens=womens,
        zip_code=np.full(n, "Urban"),
        newbie=newbie,
        channel=np.full(n, "Web"),
        segment=labels[arm],
        visit=conversion.copy(),
        conversion=conversion,
        spend=spend,
        source="synthetic",
        sha256="",
    )
    return data, float(recency.mean()), float(np.mean(p1 - p0))


def test_the_newbie_ratio_recovers_a_planted_one() -> None:
    data, _, _ = _synthetic(
        400_000, seed=8, base=0.01, uplift=0.4, recency_slope=0.0, newbie_rate_ratio=3.0
    )
    fit = fit_email_response(data, seed=2, n_bootstrap=200)
    ratio = fit.newbie_uplift_ratio
    assert ratio.low < 3.0 < ratio.high
    assert ratio.low > 1.5  # the data tell newbies apart from the others
    assert fit.newbie_uplift.relative_conversion.estimate == pytest.approx(1.2, abs=0.25)
    assert fit.established_uplift.relative_conversion.estimate == pytest.approx(0.4, abs=0.12)


def test_fit_recovers_a_planted_effect() -> None:
    base, uplift, slope = 0.02, 0.5, -0.15
    data, recency_mean, true_uplift = _synthetic(
        64_000, seed=7, base=base, uplift=uplift, recency_slope=slope
    )
    fit = fit_email_response(data, seed=1, n_bootstrap=100)
    assert fit.recency_mean == pytest.approx(recency_mean)
    truth = {
        "intercept": float(logit(base)),
        "recency": 0.0,
        "email": uplift,
        "email:womens_arm": 0.0,
        "email:recency": slope,
        "email:newbie": 0.0,
        "email:category_match": 0.0,
    }
    for name, value in truth.items():
        c = fit.coefficient(name)
        assert abs(c.estimate - value) < 3.5 * c.std_error, (name, c, value)
    for name in ("email", "email:recency"):  # the planted effects' intervals cover them
        c = fit.coefficient(name)
        assert c.low <= truth[name] <= c.high, (name, c)
    assert fit.coefficient("email:recency").high < 0  # the planted slope is detected
    pooled = fit.uplift(ANY_EMAIL).conversion
    assert pooled.low <= true_uplift <= pooled.high
    assert fit.arm(CONTROL).conversion.low <= base <= fit.arm(CONTROL).conversion.high
    # The planted treatment term is negative for recency above mean + uplift / |slope|
    # (about 3.3 months, i.e. 10-12 months): those customers are hurt; their share must be in
    # the interval.
    true_hurt = float(np.mean(uplift + slope * (data.recency - recency_mean) < 0))
    assert true_hurt > 0.05
    hurt = fit.hurt()
    assert hurt.low <= true_hurt <= hurt.high
    assert fit.hurt_share_distinguishable_from_zero


def test_no_effect_gives_a_hurt_share_the_data_cannot_tell_from_zero_or_half() -> None:
    data, _, _ = _synthetic(20_000, seed=3, base=0.02, uplift=0.0, recency_slope=0.0)
    fit = fit_email_response(data, seed=0, n_bootstrap=100)
    assert fit.uplift(ANY_EMAIL).conversion.low < 0 < fit.uplift(ANY_EMAIL).conversion.high
    assert fit.hurt().high - fit.hurt().low > 0.3  # a null effect leaves the share open


CSV_HEADER = (
    "recency,history_segment,history,mens,womens,zip_code,newbie,channel,segment,"
    "visit,conversion,spend"
)
GOOD_ROWS = [
    "10,2) $100 - $200,142.44,1,0,Surburban,0,Phone,Womens E-Mail,0,0,0",
    "6,3) $200 - $350,329.08,1,1,Rural,1,Web,No E-Mail,0,0,0",
    "7,2) $100 - $200,180.65,0,1,Surburban,1,Web,Mens E-Mail,1,1,39.5",
]


def _write(tmp_path: Path, header: str, rows: list[str]) -> Path:
    path = tmp_path / "campaign.csv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("header", "rows", "match"),
    [
        (CSV_HEADER.replace("recency,", ""), [r.split(",", 1)[1] for r in GOOD_ROWS], "'recency'"),
        (CSV_HEADER + ",extra", [r + ",1" for r in GOOD_ROWS], "unknown column 'extra'"),
        (CSV_HEADER, [GOOD_ROWS[0], "six" + GOOD_ROWS[1][1:], GOOD_ROWS[2]], "'recency', row 2"),
        (CSV_HEADER, [GOOD_ROWS[0], GOOD_ROWS[1].replace("No E-Mail", "SMS")], "'segment', row 2"),
        (CSV_HEADER, [GOOD_ROWS[0].replace("Phone", "Fax")], "'channel', row 1"),
        (CSV_HEADER, [GOOD_ROWS[2].replace(",1,1,39.5", ",1,2,39.5")], "'conversion', row 1"),
        (CSV_HEADER, [GOOD_ROWS[2].replace("39.5", "-3")], "'spend', row 1"),
        (CSV_HEADER, [*GOOD_ROWS[:2], "7,2) $100 - $200"], "row 3 has 2 fields"),
    ],
)
def test_bad_files_name_the_column_and_row(
    tmp_path: Path, header: str, rows: list[str], match: str
) -> None:
    path = _write(tmp_path, header, rows)
    with pytest.raises(DatasetError, match=match) as caught:
        hillstrom_email(path, expected_sha256=None)
    assert str(path) in str(caught.value)


def test_a_corrupt_file_fails_its_checksum(tmp_path: Path) -> None:
    text = gzip.decompress(SHIPPED.read_bytes()).decode()
    path = tmp_path / "tampered.csv.gz"
    path.write_bytes(gzip.compress(text.replace(",142.44,", ",142.45,", 1).encode()))
    with pytest.raises(DatasetError, match=r"tampered\.csv\.gz: sha256 .* expected ff9e5928"):
        hillstrom_email(path)
    good = _write(tmp_path, CSV_HEADER, GOOD_ROWS)
    with pytest.raises(DatasetError, match="sha256"):
        hillstrom_email(good)  # a valid layout is not the published data
    assert len(hillstrom_email(good, expected_sha256=None)) == 3


def test_the_fit_refuses_data_it_cannot_use(tmp_path: Path) -> None:
    data = hillstrom_email(_write(tmp_path, CSV_HEADER, GOOD_ROWS), expected_sha256=None)
    with pytest.raises(CalibrationError, match="arm 'No E-Mail' has 1 customers and no conv"):
        fit_email_response(data, n_bootstrap=10)


def test_fragment_parses_back_with_the_fitted_numbers(shipped_fit: ResponseFit) -> None:
    parsed = tomllib.loads(response_fragment(shipped_fit))["email_response"]
    values = response_values(shipped_fit)
    for key, value in values.items():
        assert parsed[key] == value
    assert parsed["base_conversion"] == pytest.approx(
        shipped_fit.arm(CONTROL).conversion.estimate, rel=1e-3
    )
    assert parsed["relative_uplift"] == pytest.approx(
        shipped_fit.uplift(ANY_EMAIL).relative_conversion.estimate, rel=1e-3
    )
    assert parsed["uplift_log_odds_per_recency_month"] == pytest.approx(
        shipped_fit.coefficient("email:recency").estimate, rel=1e-3
    )
    low, high = parsed["interval95"]["hurt_share"]
    assert [low, high] == [
        float(f"{shipped_fit.hurt().low:.4g}"),
        float(f"{shipped_fit.hurt().high:.4g}"),
    ]
    assert parsed["source"]["sha256"] == HILLSTROM_SHA256
    assert parsed["source"]["n_customers"] == 64_000


def test_cli_writes_the_fragment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "email.toml"
    assert main(["calibrate-response", "--out", str(out), "--n-bootstrap", "50"]) == 0
    printed = capsys.readouterr().out
    assert "Mens E-Mail" in printed and "email:recency" in printed and "hurt share" in printed
    parsed = tomllib.loads(out.read_text())["email_response"]
    assert parsed["base_conversion"] == pytest.approx(0.005726, rel=1e-3)


def test_cli_names_the_file_and_column_of_bad_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _write(tmp_path, CSV_HEADER, [GOOD_ROWS[0].replace("10,", "ten,", 1)])
    assert main(["calibrate-response", "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --data: ") and str(bad) in err and "'recency'" in err
    assert main(["calibrate-response", "--data", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv" in capsys.readouterr().err


# ---------------------------------------------------------------- the campaign in the simulator
SMALL = EmailExperiment(n_customers=30_000, seed=3)


def test_an_email_without_effect_shows_no_uplift_in_the_simulated_campaign() -> None:
    """The 50/50 assignment has a generator of its own: one seeded like the population's drew
    the very uniforms that chose the segments, and made loyal customers the treated arm."""
    silent = with_email_response(load_scenario("default"), 0.0).with_overrides(
        {"segments.sleeping_dogs.contact_churn_prob": 0.0}
    )
    z_scores = []
    for seed in range(8):
        sim = simulate_email_experiment(silent, EmailExperiment(n_customers=30_000, seed=seed))
        assert sim.n_eligible > 5_000 and sim.email_refused == 0
        assert abs(sim.email.n - sim.control.n) < 0.05 * sim.n_eligible
        diff = sim.uplift.conversion
        z_scores.append(diff.estimate / ((diff.high - diff.low) / 3.92))
    # Mean of 8 standard normals when there is no effect: |mean| < 1.2 is 3.4 of its s.d.
    # (the confounded assignment showed +40 % relative conversion uplift with no effect at all).
    assert abs(np.mean(z_scores)) < 1.2, z_scores


@pytest.mark.parametrize("moment", ["absolute", "relative"])
def test_the_channel_fit_recovers_a_planted_email_response(moment: str) -> None:
    default = load_scenario("default")
    planted = simulate_email_experiment(with_email_response(default, 3.0), SMALL)
    target = conversion_uplift(planted.uplift, moment).estimate  # type: ignore[arg-type]
    fit = fit_email_channel_response(default, target, SMALL, moment=moment)  # type: ignore[arg-type]
    # Common random numbers: the same population and draws, so the planted value comes back.
    assert fit.response == pytest.approx(3.0, abs=0.05)
    assert conversion_uplift(fit.simulated.uplift, moment).estimate == pytest.approx(  # type: ignore[arg-type]
        target, rel=0.02
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target": 0.0}, r"target must be a finite number > 0, got 0.0"),
        ({"target": float("nan")}, r"target must be a finite number > 0"),
        ({"target": 0.01, "moment": "ratio"}, r"moment must be one of \('absolute', 'relative'\)"),
        ({"target": 5.0, "moment": "relative", "bracket": (0.0, 2.0)}, r"no email response in"),
    ],
)
def test_the_channel_fit_rejects_what_it_cannot_fit(kwargs: dict, match: str) -> None:
    with pytest.raises(CalibrationError, match=match):
        fit_email_channel_response(load_scenario("default"), design=SMALL, **kwargs)
