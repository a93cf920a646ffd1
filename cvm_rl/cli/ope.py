"""``cvm ope``: off-policy evaluation of candidate bundles on a decision log.

``cvm ope report --logs PATH --policy BUNDLE [--policy BUNDLE ...] --out DIR`` reads a
decision log (an export directory of ``cvm logs export``, or the SQLite log itself, e.g. one
written by ``cvm serve`` or ``cvm logs simulate``), evaluates each candidate against the
policy that logged the decisions, and writes ``report.html`` (self-contained), ``report.json``
and ``report.md`` into DIR:

  cvm ope report --logs runs/demo/serve/parquet --policy runs/demo/maskable_ppo \\
      --policy runs/demo/linucb --out runs/demo/ope

Single-step values are per decision (the week's reward), long-run values per customer over
the logged weeks; every lift over the logger comes with a paired bootstrap interval. Long-run
estimators hold every trajectory in memory: past --max-rows decisions they are refused, and
--no-long-run streams an export in record batches instead. ``--ray`` (a local Ray) or
``--ray-address ADDRESS`` (a cluster) runs that streamed evaluation on Ray (the ``ray``
extra), with the same result; ``--logs`` may then be a URI every node reads
(``s3://bucket/cvm/export/``):

  cvm ope report --logs s3://bucket/cvm/export/ --policy runs/demo/linucb \
      --no-long-run --ray-address 10.0.0.5:6379 --out runs/demo/ope
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from cvm_rl.cli.common import (
    CliError,
    HelpFormatter,
    bundle_dir,
    finite_float,
    needs_extra,
    non_negative_float,
    positive_int,
)

if TYPE_CHECKING:
    from cvm_rl.bundle import Bundle
    from cvm_rl.ope.evaluate import ProgressCallback
    from cvm_rl.ope.report import ReportPaths
    from cvm_rl.ope.results import OpeResult
    from cvm_rl.ope.reward_model import RegressorKind

HELP = "off-policy evaluation of bundles on a decision log, as an HTML report"
DEFAULT_MAX_ROWS = (
    1_000_000  # cvm_rl.ope.inputs.DEFAULT_MAX_ROWS (not imported: --help stays light)
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="ope_command", required=True, metavar="ACTION")
    report = sub.add_parser(
        "report",
        help="evaluate candidate bundles against the logging policy; write the report",
        description="Evaluate candidate bundles against the policy that logged the decisions "
        "and write report.html, report.json and report.md.",
        formatter_class=HelpFormatter,
    )
    report.add_argument(
        "--logs",
        required=True,
        help="decision log: an export directory of `cvm logs export` (or its URI, e.g. "
        "s3://bucket/cvm/export/, read streamed: with --no-long-run), or the SQLite log",
    )
    report.add_argument(
        "--policy",
        required=True,
        action="append",
        metavar="BUNDLE",
        help="candidate: a bundle or a `cvm train` run directory (repeat for more)",
    )
    report.add_argument("--out", required=True, type=Path, help="directory for the report")
    report.add_argument(
        "--alpha", type=float, default=0.05, help="1 - confidence level of the intervals"
    )
    report.add_argument("--n-bootstrap", type=positive_int, default=200, help="bootstrap resamples")
    report.add_argument("--seed", type=int, default=0, help="seeds the resamples, folds and models")
    report.add_argument(
        "--outcome-window-days",
        type=non_negative_float,
        default=7.0,
        help="SQLite logs: days after a decision before a missing outcome counts as the "
        "default reward (as cvm logs export)",
    )
    report.add_argument(
        "--default-reward",
        type=finite_float,
        default=0.0,
        help="SQLite logs: reward of a decision whose outcome never came",
    )
    report.add_argument(
        "--reward-model",
        choices=["ridge", "hist_gradient_boosting"],
        default="ridge",
        help="cross-fitted reward model of DM, DR and their variants",
    )
    report.add_argument(
        "--no-long-run",
        action="store_true",
        help="single-step estimators only (an export past --max-rows is then streamed)",
    )
    report.add_argument(
        "--max-rows",
        type=positive_int,
        default=DEFAULT_MAX_ROWS,
        help="decisions held in memory at most (long-run estimators need them all)",
    )
    ray = report.add_mutually_exclusive_group()
    ray.add_argument(
        "--ray",
        action="store_true",
        help="stream the export's single-step evaluation on a local Ray (with --no-long-run; "
        "needs the 'ray' extra)",
    )
    ray.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="stream it on the Ray cluster at ADDRESS (HOST:PORT, ray://HOST:PORT or auto; with "
        "--no-long-run; needs the 'ray' extra)",
    )
    report.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    written = write_ope_report(
        logs=args.logs,
        policies=args.policy,
        out=args.out,
        alpha=args.alpha,
        n_bootstrap=args.n_bootstrap,
        seed=args.seed,
        outcome_window_days=args.outcome_window_days,
        default_reward=args.default_reward,
        reward_model=args.reward_model,
        long_run=not args.no_long_run,
        max_rows=args.max_rows,
        show_progress=not args.no_progress,
        ray=args.ray or args.ray_address is not None,
        ray_address=args.ray_address,
    )
    for line in summary_lines(written):
        print(line)
    return 0


@dataclass(frozen=True)
class WrittenReport:
    result: OpeResult
    paths: ReportPaths


def summary_lines(written: WrittenReport) -> list[str]:
    """Where the report is, what the logger earned, each candidate's primary lifts and
    verdict, and the recommendation."""
    from cvm_rl.ope.estimators import SINGLE_STEP_PRIMARY
    from cvm_rl.ope.formatting import format_interval

    result = written.result
    logger = result.logger
    per_customer = (
        ""
        if logger.per_customer is None
        else f"{format_interval(logger.per_customer)} per customer over the logged weeks, "
    )
    lines = [
        f"report: {written.paths.html} ({written.paths.json.name} and "
        f"{written.paths.markdown.name} beside it)",
        f"logging policy: {per_customer}{format_interval(logger.per_decision)} per decision "
        f"({result.data.decisions:,} decisions of {result.data.customers:,} customers)",
    ]
    for c in result.candidates:
        single = c.single_step_estimate(SINGLE_STEP_PRIMARY)
        long_run = (
            ""
            if c.long_run_primary is None
            else f"long-run lift per customer {format_interval(c.primary[1].lift, signed=True)} "
            f"({c.long_run_primary.upper()}), "
        )
        lines.append(
            f"{c.name}: {long_run}single-step lift per decision "
            f"{format_interval(single.lift, signed=True)} (DR): {c.verdict}"
        )
    lines.append(result.recommendation.line)
    return lines


def write_ope_report(
    *,
    logs: str | Path,
    policies: Sequence[str | Path],
    out: str | Path,
    alpha: float = 0.05,
    n_bootstrap: int = 200,
    seed: int = 0,
    outcome_window_days: float = 7.0,
    default_reward: float = 0.0,
    reward_model: RegressorKind = "ridge",
    long_run: bool = True,
    max_rows: int = DEFAULT_MAX_ROWS,
    show_progress: bool = False,
    ray: bool = False,
    ray_address: str | None = None,
) -> WrittenReport:
    """``cvm ope report`` as a function (the demo calls it): load, evaluate, write. ``ray``:
    the streamed single-step evaluation on Ray (at ``ray_address``, else a local one)."""
    ray_option = "--ray" if ray_address is None else "--ray-address"
    with needs_extra("ope", "ope report"):
        import matplotlib  # noqa: F401
        import pyarrow  # noqa: F401
        import sklearn  # noqa: F401

        if show_progress:
            import rich  # noqa: F401

        from cvm_rl.ope import report as report_module
    from cvm_rl.bundle import load_bundle
    from cvm_rl.ope.distributed import RayUnavailableError, evaluate_export_ray, import_ray
    from cvm_rl.ope.evaluate import evaluate_candidates
    from cvm_rl.ope.inputs import (
        CandidateError,
        LogInputError,
        count_export_rows,
        detect_log_kind,
        load_log,
    )
    from cvm_rl.ope.reward_model import CrossFittedRewardModel
    from cvm_rl.ope.streaming import ExportScan, evaluate_export_streaming, is_uri

    if not 0 < alpha < 1:
        raise CliError(f"--alpha: must be in (0, 1), got {alpha}")
    if n_bootstrap < 2:
        raise CliError(f"--n-bootstrap: must be at least 2, got {n_bootstrap}")
    uri = is_uri(str(logs))
    logs = str(logs) if uri else Path(logs)
    if ray and long_run:
        raise CliError(
            f"{ray_option} needs --no-long-run: Ray runs the single-step estimators of an "
            "export, streamed (long-run estimators hold every trajectory in one process)"
        )
    if uri and long_run:
        raise CliError(
            f"--logs: {logs} is a URI, which is read streamed, single-step only: add --no-long-run"
        )
    if ray:
        try:
            import_ray()
        except RayUnavailableError as exc:
            raise CliError(f"{ray_option}: {exc}") from None
    bundles: dict[str, Bundle] = {}
    for path in policies:
        bundle = load_bundle(bundle_dir(path), seed=seed)
        name = bundle.policy.name
        if name in bundles:
            raise CliError(
                f"--policy: two candidates are called {name!r} ({bundles[name].path} and "
                f"{bundle.path}); evaluate them in separate reports"
            )
        bundles[name] = bundle
    candidates = {name: b.policy for name, b in bundles.items()}
    sources = {name: f"{b.path} ({b.model_id})" for name, b in bundles.items()}
    scenario = next(iter(bundles.values())).scenario
    model = CrossFittedRewardModel(regressor=reward_model, seed=seed)

    try:
        kind = "export" if uri else detect_log_kind(logs)
        if ray and kind != "export":
            raise LogInputError(
                f"{logs}: {ray_option} evaluates an export of `cvm logs export`, not a SQLite "
                "log (export it first)"
            )
        streaming = (
            ray or uri or (not long_run and kind == "export" and count_export_rows(logs) > max_rows)
        )
        with _progress(show_progress) as progress:
            if streaming:
                described = ExportScan.open(logs).models.values()
                _check_bundles(
                    bundles, [(m["feature_names"], m["action_names"]) for m in described]
                )
                evaluate = (
                    partial(evaluate_export_ray, address=ray_address)
                    if ray
                    else evaluate_export_streaming
                )
                try:
                    result = evaluate(
                        logs,
                        candidates,
                        scenario=scenario,
                        alpha=alpha,
                        n_bootstrap=n_bootstrap,
                        seed=seed,
                        reward_model=model,
                        sources=sources,
                        progress=progress,
                    )
                except RayUnavailableError as exc:
                    raise CliError(f"{ray_option}: {exc}") from None
            else:
                loaded = load_log(
                    logs,
                    outcome_window_s=outcome_window_days * 86400,
                    default_reward=default_reward,
                    max_rows=max_rows,
                )
                schema = (loaded.decisions.feature_names, loaded.decisions.action_names)
                _check_bundles(bundles, [schema])
                result = evaluate_candidates(
                    loaded.decisions,
                    candidates,
                    scenario=scenario,
                    alpha=alpha,
                    n_bootstrap=n_bootstrap,
                    seed=seed,
                    long_run=long_run,
                    reward_model=model,
                    source=loaded.source,
                    sources=sources,
                    progress=progress,
                )
    except LogInputError as exc:
        message = str(exc).replace("max_rows", "--max-rows")
        message = message.replace("long_run=False", "--no-long-run")
        raise CliError(f"--logs: {message}") from None
    except CandidateError as exc:
        raise CliError(f"--policy: {exc}") from None
    try:
        paths = report_module.write_report(result, out)
    except OSError as exc:
        raise CliError(f"--out: {exc}") from None
    return WrittenReport(result, paths)


def _check_bundles(
    bundles: Mapping[str, Bundle], schemas: Sequence[tuple[Sequence[str], Sequence[str]]]
) -> None:
    """Each bundle's features and actions are the log's (each of its models'), or a
    CandidateError naming the bundle and the first difference."""
    from cvm_rl.ope.candidates import schema_mismatch
    from cvm_rl.ope.inputs import CandidateError

    for bundle in bundles.values():
        for features, actions in schemas:
            mismatch = schema_mismatch(bundle.feature_names, bundle.action_names, features, actions)
            if mismatch is not None:
                raise CandidateError(
                    f"{bundle.path}: its features or actions differ from the log's ({mismatch})"
                )


@contextmanager
def _progress(show: bool) -> Iterator[ProgressCallback | None]:
    """A rich progress bar fed by the evaluation's progress callback (None: no bar)."""
    if not show:
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[ope] {task.description}"), BarColumn(), TimeElapsedColumn(), transient=True
    ) as bar:
        task = bar.add_task("starting", total=None)

        def update(done: int, total: int, description: str) -> None:
            bar.update(task, completed=done, total=total, description=description)

        yield update
