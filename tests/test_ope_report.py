"""Off-policy evaluation of candidates against the logger (cvm_rl.ope.evaluate), its report
(cvm_rl.ope.report) and ``cvm ope report``, on a small simulated decision log."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from log_fixtures import MODEL_A, decide

from cvm_rl.bundle import save_bundle
from cvm_rl.cli import main
from cvm_rl.logs.arrays import LoggedDecisions
from cvm_rl.logs.export import MODELS_FILE, export_parquet
from cvm_rl.logs.schema import now_us
from cvm_rl.logs.simulated import simulate_to_log
from cvm_rl.logs.store import DecisionLog
from cvm_rl.ope.candidates import LOGGER_CHECK
from cvm_rl.ope.evaluate import evaluate_candidates
from cvm_rl.ope.formatting import format_number
from cvm_rl.ope.inputs import CandidateError, LogInputError, OpeInputError, load_log
from cvm_rl.ope.long_run import (
    LONG_RUN_ESS_COLLAPSE,
    long_run_primary,
    long_run_warnings,
)
from cvm_rl.ope.report import write_report
from cvm_rl.ope.results import LongRunDiagnostics, OpeResult
from cvm_rl.ope.streaming import evaluate_export_streaming
from cvm_rl.policies import EpsilonMixturePolicy, NoContactPolicy, Policy, RuleBasedPolicy
from simulator.config import load_scenario

SCENARIO = load_scenario("default")
CUSTOMERS, WEEKS, SEED = 300, 4, 5
EPSILON = 0.3


def logger_policy() -> Policy:
    return EpsilonMixturePolicy(SCENARIO, RuleBasedPolicy(SCENARIO), EPSILON)


def candidates() -> dict[str, Policy]:
    return {
        "rules": RuleBasedPolicy(SCENARIO),
        "logger": logger_policy(),
        "no_contact": NoContactPolicy(SCENARIO),
    }


class FirstContactPolicy(Policy):
    """The first eligible contact action; no contact only where none is eligible."""

    name = "first_contact"

    def _probabilities(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = np.zeros(mask.shape)
        contact = mask[:, 1:].any(axis=1)
        out[np.arange(len(mask)), np.where(contact, 1 + np.argmax(mask[:, 1:], axis=1), 0)] = 1
        return out


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A simulated SQLite log, its export, and candidate bundles."""
    root = tmp_path_factory.mktemp("ope")
    db = root / "decisions.db"
    with DecisionLog(db) as log:
        simulate_to_log(logger_policy(), SCENARIO, log, customers=CUSTOMERS, weeks=WEEKS, seed=SEED)
    export_parquet(db, root / "export")
    small = SCENARIO.model_copy(update={"offers": dict(list(SCENARIO.offers.items())[:2])})
    return {
        "db": db,
        "export": root / "export",
        "rules": save_bundle(
            RuleBasedPolicy(SCENARIO), root / "rules", algo="rules", training_config={}
        ),
        "no_contact": save_bundle(
            NoContactPolicy(SCENARIO), root / "no_contact", algo="nc", training_config={}
        ),
        "other_scenario": save_bundle(
            NoContactPolicy(small), root / "small", algo="nc", training_config={}
        ),
        "root": root,
    }


@pytest.fixture(scope="module")
def result(logs: dict[str, Path]) -> OpeResult:
    loaded = load_log(logs["db"])
    return evaluate_candidates(
        loaded.decisions, candidates(), scenario=SCENARIO, source=loaded.source
    )


@pytest.fixture(scope="module")
def report(result: OpeResult, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    paths = write_report(result, tmp_path_factory.mktemp("report"))
    return {
        "html": paths.html.read_text(encoding="utf-8"),
        "markdown": paths.markdown.read_text(encoding="utf-8"),
        "json": json.loads(paths.json.read_text(encoding="utf-8")),
    }


# --- the report ------------------------------------------------------------------------------


def test_html_is_self_contained(report: dict[str, Any]) -> None:
    html = report["html"]
    assert html.startswith("<!DOCTYPE html>")
    for forbidden in ("http://", "https://", "<script", "@import", "<link", "<iframe"):
        assert forbidden not in html.lower(), forbidden
    for attribute, value in re.findall(r"""\b(src|href)\s*=\s*["']([^"']*)""", html):
        assert value.startswith("data:"), (attribute, value[:60])
    assert not re.search(r"""(src|href)\s*=\s*["']?//""", html)
    for target in re.findall(r"url\(\s*['\"]?([^)'\"]*)", html):
        assert target.startswith("data:"), target
    assert html.count("data:image/png;base64,") == 4  # lifts (2), weights, stages


def _numbers(value: Any) -> Iterator[int | float]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield value


def test_html_and_markdown_hold_every_number_of_the_json(report: dict[str, Any]) -> None:
    numbers = list(_numbers(report["json"]))
    assert len(numbers) > 500
    for text in (report["html"], report["markdown"]):
        missing = {format_number(v) for v in numbers if format_number(v) not in text}
        assert not missing, sorted(missing)[:20]


def test_latent_segments_are_said_not_tabulated(report: dict[str, Any]) -> None:
    for text in (report["html"], report["markdown"]):
        assert "By segment: none (segments are latent" in text


def test_report_sections_come_in_order(report: dict[str, Any]) -> None:
    html = report["html"]
    order = [
        "Summary and recommendation",
        "Candidate: rules",
        "Candidate: no_contact",
        f"Candidate: {LOGGER_CHECK}",
        "Plots",
        "Data and method",
    ]
    positions = [html.index(f">{title}<") for title in order]
    assert positions == sorted(positions)
    summary = report["markdown"].split("## Candidate")[0]
    assert "Recommendation:" in summary and "| candidate | long-run lift" in summary


# --- the numbers -----------------------------------------------------------------------------


def test_the_logger_as_a_candidate_has_no_lift(result: OpeResult) -> None:
    logged_return = result.logger.per_customer
    assert logged_return is not None
    for name in ("logger", LOGGER_CHECK):
        c = result.candidate(name)
        for estimator in ("pdis", "wpdis", "mis"):
            value = c.long_run_estimate(estimator).value.estimate
            assert value == pytest.approx(logged_return.estimate, rel=1e-9, abs=1e-9)
        _, primary = c.primary
        assert primary.lift.low <= 0 <= primary.lift.high
        ips = c.single_step_estimate("ipw")
        assert ips.value.estimate == pytest.approx(result.logger.per_decision.estimate)
        assert ips.lift.low == pytest.approx(0, abs=1e-12) == ips.lift.high
        assert c.weights.ess_share == pytest.approx(1.0)
    assert result.candidate(LOGGER_CHECK).verdict.startswith("self-check passed")


def test_lifts_are_paired_with_the_logger(result: OpeResult) -> None:
    c = result.candidate("rules")
    logged = result.logger
    assert logged.per_customer is not None
    for e in c.long_run:
        assert e.lift.estimate == pytest.approx(e.value.estimate - logged.per_customer.estimate)
    for e in c.single_step:
        assert e.lift.estimate == pytest.approx(e.value.estimate - logged.per_decision.estimate)
    # Pairing removes the logger's own noise: the lift interval is narrower than the value's.
    dr = c.single_step_estimate("dr")
    assert dr.lift.half_width < dr.value.half_width


def test_diagnostics_and_breakdowns(result: OpeResult) -> None:
    c = result.candidate("no_contact")
    assert c.long_run_diagnostics is not None
    assert len(c.long_run_diagnostics.ess_share_by_step) == WEEKS
    assert c.weights.zero_weight_share > 0  # the logger contacted some customers
    assert {g.group for g in c.by_stage} <= {*(n[6:] for n in SCENARIO_STAGES), "(none)"}
    assert sum(g.rows for g in c.by_segment) == CUSTOMERS * WEEKS
    # segments are latent in the default scenario: the log cannot break values down by them
    assert [g.group for g in c.by_segment] == ["(none)"]
    channels = {s.channel: s for s in c.by_channel}
    assert channels["no contact"].candidate == pytest.approx(1.0)
    assert sum(s.logger for s in c.by_channel) == pytest.approx(1.0)
    assert result.data.weeks == WEEKS and result.data.customers == CUSTOMERS
    assert result.data.source.reported == CUSTOMERS * WEEKS
    assert result.data.source.defaulted == 0
    assert result.reward_model.oof_rmse > 0


SCENARIO_STAGES = [n for n in RuleBasedPolicy(SCENARIO).feature_names if n.startswith("stage_")]


def _with_rewards(decisions: LoggedDecisions, reward: Callable[[np.ndarray], np.ndarray]) -> Any:
    data = dataclasses.replace(decisions.data, rewards=reward(decisions.data.actions))
    return dataclasses.replace(decisions, data=data)


def test_recommendation_picks_a_clearly_better_candidate(logs: dict[str, Path]) -> None:
    # Constructed: no contact earns 1 per week, every contact 0, so never contacting is
    # clearly better than the logger, which contacts some customers.
    decisions = _with_rewards(load_log(logs["db"]).decisions, lambda a: (a == 0).astype(float))
    policies = {
        "logger": logger_policy(),
        "no_contact": NoContactPolicy(SCENARIO),
        "first_contact": FirstContactPolicy(SCENARIO),
    }
    result = evaluate_candidates(
        decisions, policies, scenario=SCENARIO, n_bootstrap=100, self_check=False
    )
    assert result.recommendation.candidate == "no_contact"
    assert result.candidate("first_contact").verdict == "worse than the logging policy"
    assert result.recommendation.lift is not None and result.recommendation.lift.low > 0
    assert result.candidate("no_contact").verdict.endswith("recommended")
    assert result.recommendation.line.startswith("recommend no_contact")


def test_recommendation_keeps_the_logger_without_a_positive_lower_bound(
    logs: dict[str, Path],
) -> None:
    # Contacts earn 1, no contact 0: never contacting is worse, the logger no better than itself.
    decisions = _with_rewards(load_log(logs["db"]).decisions, lambda a: (a > 0).astype(float))
    result = evaluate_candidates(
        decisions,
        {"logger": logger_policy(), "no_contact": NoContactPolicy(SCENARIO)},
        scenario=SCENARIO,
        n_bootstrap=100,
    )
    assert result.recommendation.candidate is None
    assert result.recommendation.line.startswith("keep the logging policy")
    assert result.candidate("no_contact").verdict == "worse than the logging policy"


def test_a_sqlite_log_and_its_export_give_the_same_numbers(
    logs: dict[str, Path], result: OpeResult
) -> None:
    loaded = load_log(logs["export"])
    from_export = evaluate_candidates(
        loaded.decisions, candidates(), scenario=SCENARIO, source=loaded.source
    ).to_dict()
    from_sqlite = result.to_dict()
    for d in (from_export, from_sqlite):
        d["data"].pop("source")
    assert from_export == from_sqlite
    assert loaded.source.kind == "export" and loaded.source.reported == CUSTOMERS * WEEKS


def test_streaming_an_export_gives_the_in_memory_single_step_values(
    logs: dict[str, Path], result: OpeResult
) -> None:
    policies = candidates()
    # A sample covering the log: the same reward model, so every estimate is the same.
    streamed = evaluate_export_streaming(
        logs["export"], policies, scenario=SCENARIO, batch_rows=250
    )
    assert streamed.data.streamed and streamed.data.decisions == CUSTOMERS * WEEKS
    for c in streamed.candidates:
        for e in c.single_step:
            expected = result.candidate(c.name).single_step_estimate(e.estimator).value.estimate
            assert e.value.estimate == pytest.approx(expected, rel=1e-9)
        assert not c.long_run
    # A bounded sample: IPS and SNIPS are still exact sums; DR uses the sample's model.
    sampled = evaluate_export_streaming(
        logs["export"], policies, scenario=SCENARIO, batch_rows=250, sample_rows=400
    )
    assert sampled.data.reward_model_rows == 400
    rules = sampled.candidate("rules")
    for estimator in ("ipw", "snipw"):
        expected = result.candidate("rules").single_step_estimate(estimator).value.estimate
        assert rules.single_step_estimate(estimator).value.estimate == pytest.approx(expected)
    dr = rules.single_step_estimate("dr").value
    assert dr.low < dr.estimate < dr.high


# --- bad input -------------------------------------------------------------------------------


def _rewrite_export(src: Path, dst: Path, change: Callable[[pa.Table], pa.Table]) -> Path:
    """A copy of the export at ``src`` whose rows went through ``change``."""
    table = pq.read_table(next(src.glob("date=*/*.parquet")))
    (dst / "date=2026-01-05").mkdir(parents=True)
    pq.write_table(change(table), dst / "date=2026-01-05" / "part-0.parquet")
    shutil.copy(src / MODELS_FILE, dst / MODELS_FILE)
    return dst


def _replace_first(column: str, value: float | None) -> Callable[[pa.Table], pa.Table]:
    def change(table: pa.Table) -> pa.Table:
        values = table.column(column).to_pylist()
        values[0] = value
        return table.set_column(
            table.schema.get_field_index(column), column, pa.array(values, pa.float64())
        )

    return change


def _no_exploration_log(root: Path) -> Path:
    db = root / "deterministic.db"
    with DecisionLog(db) as log:
        simulate_to_log(RuleBasedPolicy(SCENARIO), SCENARIO, log, customers=20, weeks=2, seed=1)
    return db


def _pending_log(root: Path) -> Path:
    db = root / "pending.db"
    with DecisionLog(db) as log:
        decide(log, MODEL_A, ["e1", "e2"], [now_us(), now_us() + 1])
    return db


def _empty_log(root: Path) -> Path:
    db = root / "empty.db"
    DecisionLog(db).close()
    return db


BAD_LOGS: list[tuple[str, Callable[[Path, Path], Path], str]] = [
    (
        "no propensity column",
        lambda export, root: _rewrite_export(
            export, root, lambda t: t.drop_columns(["propensity"])
        ),
        r"propensity: the log has no propensity column",
    ),
    (
        "null propensity",
        lambda export, root: _rewrite_export(export, root, _replace_first("propensity", None)),
        r"propensity: decision '.*' has no propensity \(1 row in all\): OPE needs",
    ),
    (
        "zero propensity",
        lambda export, root: _rewrite_export(export, root, _replace_first("propensity", 0.0)),
        r"propensity: decision '.*' is 0, outside \(0, 1\]",
    ),
    (
        "propensity above 1",
        lambda export, root: _rewrite_export(export, root, _replace_first("propensity", 1.5)),
        r"propensity: decision '.*' is 1.5, outside \(0, 1\]",
    ),
    (
        "NaN reward",
        lambda export, root: _rewrite_export(export, root, _replace_first("reward", float("nan"))),
        r"reward: decision '.*' is nan",
    ),
    (
        "no exploration",
        lambda export, root: _no_exploration_log(root),
        r"every logged propensity is 1: the logging policy never explored.*OPE cannot evaluate "
        "a different policy",
    ),
    ("empty log", lambda export, root: _empty_log(root), r"the log holds no decisions"),
    (
        "all pending",
        lambda export, root: _pending_log(root),
        r"outcome_status: all 2 decisions are pending",
    ),
    (
        "not a log",
        lambda export, root: _write(root / "notes.txt", "hello"),
        r"neither a decision log \(SQLite file\) nor an export directory",
    ),
]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(("case", "make", "message"), BAD_LOGS, ids=[c[0] for c in BAD_LOGS])
def test_a_bad_log_is_refused_with_one_clear_line(
    logs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    make: Callable[[Path, Path], Path],
    message: str,
) -> None:
    path = make(logs["export"], tmp_path / "bad")
    with pytest.raises(LogInputError, match=message):
        load_log(path)
    code = main(
        ["ope", "report", "--logs", str(path), "--policy", str(logs["rules"]), "--out",
         str(tmp_path / "out"), "--no-progress"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: --logs: "), err
    assert re.search(message, err), err


def test_too_many_rows_are_refused_for_the_long_run(logs: dict[str, Path]) -> None:
    with pytest.raises(LogInputError, match=r"1,200 decisions, more than max_rows 100: long-run"):
        load_log(logs["db"], max_rows=100)


def test_a_candidate_the_log_cannot_evaluate_is_refused(logs: dict[str, Path]) -> None:
    decisions = load_log(logs["db"]).decisions
    # Only rows where the logger chose no contact though a contact was eligible: a policy
    # that always contacts never takes a logged action.
    rows = np.flatnonzero((decisions.data.actions == 0) & decisions.data.mask[:, 1:].any(axis=1))
    never = {"first_contact": FirstContactPolicy(SCENARIO)}
    with pytest.raises(CandidateError, match=r"first_contact: never takes the action the logger"):
        evaluate_candidates(decisions.take(rows), never, scenario=SCENARIO, long_run=False)
    small = SCENARIO.model_copy(update={"offers": dict(list(SCENARIO.offers.items())[:2])})
    with pytest.raises(CandidateError, match=r"other: its features or actions differ .*action"):
        evaluate_candidates(decisions, {"other": NoContactPolicy(small)}, scenario=SCENARIO)
    with pytest.raises(OpeInputError, match="no candidate"):
        evaluate_candidates(decisions, {}, scenario=SCENARIO)


def test_cli_names_a_bundle_whose_schema_differs(
    logs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["ope", "report", "--logs", str(logs["db"]), "--policy", str(logs["other_scenario"]),
         "--out", str(tmp_path / "out"), "--no-progress"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: --policy: {logs['other_scenario']}: its features or actions")
    assert "action 5 is" in err or "actions, the log has 25" in err


# --- the command -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--alpha", "1.5", "error: --alpha: must be in (0, 1), got 1.5"),
        ("--n-bootstrap", "1", "error: --n-bootstrap: must be at least 2, got 1"),
    ],
)
def test_cli_refuses_a_bad_option(
    logs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    option: str,
    value: str,
    message: str,
) -> None:
    args = ["ope", "report", "--logs", str(logs["db"]), "--policy", str(logs["rules"]),
            "--out", str(tmp_path), option, value, "--no-progress"]  # fmt: skip
    assert main(args) == 2
    assert capsys.readouterr().err == message + "\n"


def test_cli_writes_the_report_and_prints_the_recommendation(
    logs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    code = main(
        ["ope", "report", "--logs", str(logs["db"]), "--policy", str(logs["rules"]),
         "--policy", str(logs["no_contact"]), "--out", str(out), "--n-bootstrap", "50",
         "--no-progress"]
    )  # fmt: skip
    printed = capsys.readouterr().out.splitlines()
    assert code == 0
    assert printed[0].startswith(f"report: {out / 'report.html'}")
    assert printed[-1].startswith(("recommend ", "keep the logging policy"))
    assert any(line.startswith("rules: long-run lift per customer") for line in printed)
    for name in ("report.html", "report.json", "report.md"):
        assert (out / name).is_file()
    written = json.loads((out / "report.json").read_text())
    assert written["settings"]["n_bootstrap"] == 50
    assert [c["name"] for c in written["candidates"]] == ["rules", "no_contact", LOGGER_CHECK]


def test_cli_streams_a_large_export_single_step(
    logs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "streamed"
    args = ["ope", "report", "--logs", str(logs["export"]), "--policy", str(logs["rules"]),
            "--out", str(out), "--max-rows", "100", "--no-progress"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "1,200 decisions, more than --max-rows 100" in err and "--no-long-run" in err
    assert main([*args, "--no-long-run"]) == 0
    written = json.loads((out / "report.json").read_text())
    assert written["data"]["streamed"] is True
    assert written["candidates"][0]["long_run"] == []


def _long_run_diagnostics(cumulative: list[float], marginal: list[float]) -> LongRunDiagnostics:
    below = [t + 1 for t, share in enumerate(cumulative) if share < LONG_RUN_ESS_COLLAPSE]
    return LongRunDiagnostics(
        ess_share_by_step=tuple(cumulative),
        marginal_ess_share_by_step=tuple(marginal),
        min_ess_share=min(cumulative),
        collapse_step=below[0] if below else None,
        final_max_weight=1.0,
    )


@pytest.mark.parametrize(
    ("cumulative", "marginal", "primary", "warnings", "reason"),
    [
        ([1.0, 0.5, 0.1], [1.0, 0.9, 0.8], "dr", 0, "sequential DR"),
        ([1.0, 0.5, 0.09], [1.0, 0.9, 0.8], "mis", 1, "below 10% of the customers at week 3"),
        ([1.0, 0.05, 0.01], [1.0, 0.09, 0.5], "mis", 2, "marginalized weights fall below"),
    ],
)
def test_the_long_run_primary_follows_the_weights_effective_sample_size(
    cumulative: list[float], marginal: list[float], primary: str, warnings: int, reason: str
) -> None:
    diagnostics = _long_run_diagnostics(cumulative, marginal)
    chosen, why = long_run_primary(diagnostics)
    assert chosen == primary
    assert reason in why
    assert len(long_run_warnings(diagnostics)) == warnings


def test_resampling_customers_widens_intervals_for_rows_alike_within_a_customer(
    logs: dict[str, Path],
) -> None:
    # Each customer's rewards are one draw repeated over its 4 weeks: the rows are 4 copies of
    # 300 independent values, so resampling rows overstates the data by about 4 and its
    # interval is about half as wide as resampling customers.
    decisions = load_log(logs["db"]).decisions
    _, codes = np.unique(decisions.customer_ids.astype(str), return_inverse=True)
    effect = np.random.default_rng(0).normal(0, 10, codes.max() + 1)
    decisions = _with_rewards(decisions, lambda a: effect[codes] + (a == 0))
    widths = {}
    for by_customer in (False, True):
        result = evaluate_candidates(
            decisions,
            {"no_contact": NoContactPolicy(SCENARIO)},
            scenario=SCENARIO,
            long_run=False,
            resample_customers=by_customer,
            n_bootstrap=200,
            self_check=False,
        )
        value = result.candidate("no_contact").primary[1].value
        widths[by_customer] = value.high - value.low
    assert 1.5 < widths[True] / widths[False] < 2.7
