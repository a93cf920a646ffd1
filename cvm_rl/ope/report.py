"""The off-policy evaluation report: ``report.html`` (one self-contained file: inline CSS,
plots as base64 PNG, no script and no URL of any kind), ``report.json`` (every number, full
precision) and ``report.md`` (the HTML's text and tables, without the plots).

The HTML and Markdown are rendered from one document (sections of paragraphs, tables and
figures) built by :func:`build_document`, and every number in them is written by
:func:`format_number`, so each number of the JSON appears, formatted, in both. Sections: the
summary and recommendation (for a manager: one paragraph and a table), then per candidate
every estimator's value and lift with intervals, diagnostics and warnings, values by
lifecycle stage, segment and channel, then the plots, then the data and how the numbers were
made.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure

from cvm_rl.ope.estimators import SINGLE_STEP_PRIMARY
from cvm_rl.ope.formatting import format_interval, format_number
from cvm_rl.ope.long_run import LONG_RUN_ESS_COLLAPSE
from cvm_rl.ope.results import CandidateResult, Estimate, GroupValue, OpeResult
from cvm_rl.ope.single_step_sums import NO_GROUP
from cvm_rl.plots import DPI, error_bar_lengths, policy_colours

HTML_FILE = "report.html"
JSON_FILE = "report.json"
MARKDOWN_FILE = "report.md"

LONG_RUN_UNIT = "per customer over the logged weeks"
SINGLE_STEP_UNIT = "per decision (the week's reward)"


# --- the document ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Figure:
    title: str
    png: bytes


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Details:
    """A block shown folded in the HTML (long tables)."""

    summary: str
    blocks: list[Block]


Block = str | Table | Figure | Bullets | Details


@dataclass
class Section:
    title: str
    level: int = 2
    blocks: list[Block] = field(default_factory=list)


def build_document(result: OpeResult, *, plots: bool = True) -> list[Section]:
    """The report's sections, in order."""
    sections = [_summary(result)]
    sections += [_candidate_section(result, c) for c in result.candidates]
    if plots:
        sections.append(_plots_section(result))
    sections.append(_data_section(result))
    return sections


def _level(result: OpeResult) -> str:
    return f"{1 - result.settings.alpha:.0%}"


def _summary(result: OpeResult) -> Section:
    rec = result.recommendation
    level = _level(result)
    data = result.data
    logger = result.logger
    weeks = "" if data.weeks is None else f" over up to {format_number(data.weeks)} weeks"
    achieved = (
        f"The logging policy (the one that made the logged decisions) earned "
        f"{format_interval(logger.per_customer)} per customer over the logged weeks and "
        f"{format_interval(logger.per_decision)} per decision."
        if logger.per_customer is not None
        else f"The logging policy earned {format_interval(logger.per_decision)} per decision."
    )
    if rec.candidate is not None and rec.lift is not None:
        headline = (
            f"Recommendation: switch to {rec.candidate}. Judged on the logged decisions of "
            f"{format_number(data.customers)} customers{weeks}, it would earn "
            f"{format_interval(rec.lift, signed=True)} more "
            f"{LONG_RUN_UNIT if rec.horizon == 'long_run' else SINGLE_STEP_UNIT} than the "
            f"logging policy (estimate and {level} interval); the lower end of that interval is "
            "the highest of all candidates and above zero."
        )
    else:
        headline = (
            "Recommendation: keep the logging policy. No candidate is better with "
            f"{level} confidence: {rec.reason}."
        )
    explain = (
        "Lift is the candidate's estimated value minus what the logging policy actually "
        "earned; intervals in brackets. Long-run lift is per customer over the logged weeks "
        "(the sum of the weekly rewards), single-step lift per decision (the reward of the "
        "week of the decision). Values are estimated from the log alone (off-policy "
        "evaluation), not from an experiment."
    )
    rows = []
    for c in result.candidates:
        long_run = _primary_long_run(c)
        single = c.single_step_estimate(SINGLE_STEP_PRIMARY)
        rows.append(
            [
                c.name,
                "not evaluated"
                if long_run is None
                else f"{format_interval(long_run.lift, signed=True)} "
                f"({long_run.estimator.upper()})",
                f"{format_interval(single.lift, signed=True)} (DR)",
                c.verdict,
            ]
        )
    table = Table(
        [
            "candidate",
            f"long-run lift per customer [{level} interval]",
            f"single-step lift per decision [{level} interval]",
            "verdict",
        ],
        rows,
    )
    return Section("Summary and recommendation", 2, [headline, achieved, table, explain])


def _primary_long_run(c: CandidateResult) -> Estimate | None:
    return None if c.long_run_primary is None else c.long_run_estimate(c.long_run_primary)


def _estimates_table(estimates: Sequence[Estimate], primary: str | None, level: str) -> Table:
    return Table(
        ["estimator", f"value [{level} interval]", f"lift over the logger [{level} interval]"],
        [
            [
                e.label + (" (primary)" if e.estimator == primary else ""),
                format_interval(e.value),
                format_interval(e.lift, signed=True),
            ]
            for e in estimates
        ],
    )


def _groups_table(groups: Sequence[GroupValue], what: str) -> Table:
    return Table(
        [what, "decisions", "share", "logged mean reward", "DM value", "DR value"],
        [
            [
                g.group,
                format_number(g.rows),
                format_number(g.share),
                format_number(g.logged_mean_reward),
                format_number(g.dm),
                format_number(g.dr),
            ]
            for g in groups
        ],
    )


def _candidate_section(result: OpeResult, c: CandidateResult) -> Section:
    level = _level(result)
    horizon, primary = c.primary
    blocks: list[Block] = [
        f"Source: {c.source or 'a policy object'}. Verdict: {c.verdict}. It rests on "
        f"{primary.label}, {horizon.replace('_', '-')} lift "
        f"{format_interval(primary.lift, signed=True)}.",
    ]
    if c.long_run:
        blocks += [
            f"Long-run value {LONG_RUN_UNIT}. Primary: {c.long_run_primary_reason}.",
            _estimates_table(c.long_run, c.long_run_primary, level),
        ]
    else:
        blocks.append(f"Long-run value: {c.long_run_primary_reason}.")
    blocks += [
        f"Single-step value {SINGLE_STEP_UNIT}. Primary: DR.",
        _estimates_table(c.single_step, SINGLE_STEP_PRIMARY, level),
    ]
    w = c.weights
    weight_rows = [
        ["rows", format_number(w.n)],
        ["effective sample size", format_number(w.ess)],
        ["effective sample size, share of rows", format_number(w.ess_share)],
        ["mean weight (about 1 when all is well)", format_number(w.mean_weight)],
        *[
            [f"weight quantile {name}", format_number(value)]
            for name, value in w.weight_quantiles.items()
        ],
        ["largest weight", format_number(w.max_weight)],
        ["share of rows with weight 0", format_number(w.zero_weight_share)],
        [
            "share of the candidate's mass on actions the logger never takes",
            format_number(w.unsupported_mass_share),
        ],
    ]
    blocks += [
        f"Single-step importance weights (candidate probability / logged propensity of the "
        f"logged action), on {c.weight_rows}:",
        Table(["diagnostic", "value"], weight_rows),
    ]
    d = c.long_run_diagnostics
    if d is not None:
        blocks += [
            "Long-run weights: the effective sample size of the cumulative weights (the "
            "product of the weekly weights, used by PDIS, WPDIS, DR and WDR) and of MIS's "
            "marginalized weights, as a share of the customers, week by week.",
            Table(
                ["diagnostic", "value"],
                [
                    ["lowest share (cumulative weights)", format_number(d.min_ess_share)],
                    [
                        f"first week below {format_number(LONG_RUN_ESS_COLLAPSE)}",
                        format_number(d.collapse_step) if d.collapse_step else "none",
                    ],
                    [
                        "largest cumulative weight at the last week",
                        format_number(d.final_max_weight),
                    ],
                ],
            ),
            Details(
                "effective sample size share, week by week",
                [
                    Table(
                        ["week", "cumulative weights", "marginalized weights (MIS)"],
                        [
                            [format_number(t + 1), format_number(a), format_number(b)]
                            for t, (a, b) in enumerate(
                                zip(
                                    d.ess_share_by_step,
                                    d.marginal_ess_share_by_step,
                                    strict=True,
                                )
                            )
                        ],
                    )
                ],
            ),
        ]
    blocks.append(Bullets(list(c.warnings)) if c.warnings else "No warnings.")
    blocks += [
        "Value per decision by lifecycle stage (at decision time): the logger's mean reward, "
        "and the candidate's DM and DR values.",
        _groups_table(c.by_stage, "stage"),
        *(
            ["By segment:", _groups_table(c.by_segment, "segment")]
            if any(g.group != NO_GROUP for g in c.by_segment)
            else ["By segment: none (segments are latent: the log has no segment features)."]
        ),
        "Share of decisions per channel: what the logger did, and what the candidate would "
        "do in the same situations.",
        Table(
            ["channel", "logger", "candidate"],
            [
                [s.channel, format_number(s.logger), format_number(s.candidate)]
                for s in c.by_channel
            ],
        ),
    ]
    return Section(f"Candidate: {c.name}", 2, blocks)


def _plots_section(result: OpeResult) -> Section:
    blocks: list[Block] = []
    if any(c.long_run for c in result.candidates):
        blocks.append(
            Figure(
                f"Long-run lift {LONG_RUN_UNIT}, by estimator",
                _lift_figure(result, "long_run"),
            )
        )
    blocks.append(
        Figure(f"Single-step lift {SINGLE_STEP_UNIT}, by estimator", _lift_figure(result, "single"))
    )
    blocks.append(Figure("Importance weights", _weights_figure(result)))
    blocks.append(Figure("Value per decision by lifecycle stage", _stage_figure(result)))
    return Section("Plots", 2, blocks)


def _data_section(result: OpeResult) -> Section:
    data, source, s = result.data, result.data.source, result.settings
    fit = result.reward_model
    counts = [
        ["source", f"{source.path} ({source.kind})"],
        ["decisions evaluated", format_number(data.decisions)],
        ["customers", format_number(data.customers)],
        ["weeks (decisions per customer, at most)", format_number(data.weeks)],
        ["decisions per customer, mean", format_number(data.mean_weeks)],
        ["first decision", data.first_decision],
        ["last decision", data.last_decision],
        ["rows with a reported outcome", format_number(source.reported)],
        [
            "rows with the default reward (no outcome within the window)",
            format_number(source.defaulted),
        ],
        ["rows left out: outcome pending", format_number(source.pending)],
        ["default reward", format_number(source.default_reward)],
        ["outcome window (days)", format_number(source.outcome_window_days)],
        [
            "logger's whole distribution logged in every row",
            format_number(data.logging_probabilities),
        ],
        ["streamed in record batches", format_number(data.streamed)],
        *[[f"decisions of model {m}", format_number(k)] for m, k in data.models.items()],
    ]
    logger = [
        ["mean reward per decision", format_interval(result.logger.per_decision)],
        [
            "mean return per customer over the logged weeks",
            format_interval(result.logger.per_customer),
        ],
    ]
    model = [
        ["regressor", fit.regressor],
        ["cross-fitting folds", format_number(fit.n_folds)],
        ["rows fitted on", format_number(data.reward_model_rows)],
        ["out-of-fold RMSE", format_number(fit.oof_rmse)],
        ["out-of-fold R²", format_number(fit.oof_r2)],
    ]
    method = [
        ["intervals", s.bootstrap],
        ["confidence level 1 - alpha; alpha", f"{_level(result)}; {format_number(s.alpha)}"],
        ["bootstrap resamples", format_number(s.n_bootstrap)],
        ["seed", format_number(s.seed)],
        ["long-run estimators run", format_number(s.long_run)],
    ]
    rules = (
        "Primary estimators: single step, DR (unbiased whatever the reward model when the "
        "logged propensities are right). Long run, by the effective sample size of the "
        "weights as a share of the customers: sequential DR while the cumulative importance "
        f"weights keep at least {format_number(LONG_RUN_ESS_COLLAPSE)} every week; "
        "marginalized IS (MIS) once they collapse (the most accurate long-run estimator on the "
        "simulator, experiments/ope_accuracy.py). The recommended candidate has the highest lower "
        "interval bound of its primary lift (long run when evaluated), and is recommended "
        "only if that bound is above 0."
    )
    return Section(
        "Data and method",
        2,
        [
            Table(["count", "value"], counts),
            "What the logging policy achieved (observed):",
            Table(["value", f"estimate [{_level(result)} interval]"], logger),
            "Reward model (for DM, DR and their variants; Q and state-ratio models of the "
            "long-run estimators are ridge regressions cross-fitted over customers):",
            Table(["reward model", "value"], model),
            Table(["method", "value"], method),
            rules,
            *([Bullets(list(result.notes))] if result.notes else []),
        ],
    )


# --- plots -----------------------------------------------------------------------------------


def _new_figure(size: tuple[float, float]) -> MplFigure:
    fig = MplFigure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: MplFigure) -> bytes:
    buffer = io.BytesIO()
    # No Software tag: the file says nothing but the picture.
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    fig.clear()
    return buffer.getvalue()


def _lift_figure(result: OpeResult, horizon: str) -> bytes:
    """One panel per candidate: each estimator's lift with its interval, the primary one
    highlighted, a line at 0 (no difference from the logger)."""
    candidates = [c for c in result.candidates if horizon == "single" or c.long_run]
    n_cols = min(len(candidates), 3)
    n_rows = -(-len(candidates) // n_cols)
    first = candidates[0].single_step if horizon == "single" else candidates[0].long_run
    fig = _new_figure((4.2 * n_cols + 1.5, 0.8 + (0.32 * len(first) + 0.9) * n_rows))
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharey=True).ravel()
    for ax, c in zip(axes, candidates, strict=False):
        estimates = c.single_step if horizon == "single" else c.long_run
        primary = SINGLE_STEP_PRIMARY if horizon == "single" else c.long_run_primary
        y = np.arange(len(estimates))[::-1]
        lifts = np.array([e.lift.estimate for e in estimates])
        bounds = np.array([[e.lift.low, e.lift.high] for e in estimates])
        colours = ["#d62728" if e.estimator == primary else "#1f77b4" for e in estimates]
        for yi, lift, err, colour in zip(
            y, lifts, error_bar_lengths(lifts, bounds).T, colours, strict=True
        ):
            ax.errorbar(lift, yi, xerr=err[:, None], fmt="o", color=colour, capsize=3, ms=4)
        ax.axvline(0.0, color="black", lw=0.8, ls="--")
        ax.set_yticks(y, [e.estimator.upper() for e in estimates])
        ax.set_title(c.name, fontsize="medium")
        ax.grid(axis="x", alpha=0.3)
    for ax in axes[len(candidates) :]:
        ax.set_visible(False)
    unit = LONG_RUN_UNIT if horizon != "single" else "per decision"
    fig.supxlabel(f"lift over the logging policy, {unit}", fontsize="medium")
    fig.suptitle(
        f"{'Long-run' if horizon != 'single' else 'Single-step'} lift by estimator "
        f"({_level(result)} paired bootstrap interval; red: primary)",
        fontsize="medium",
    )
    return _png(fig)


def _weights_figure(result: OpeResult) -> bytes:
    """Histogram of log10 single-step weights per candidate; the effective sample size share
    of the cumulative (solid) and marginalized (dashed) weights week by week."""
    candidates = list(result.candidates)
    long_run = [c for c in candidates if c.long_run_diagnostics is not None]
    fig = _new_figure((11.0 if long_run else 6.5, 4.2))
    axes = fig.subplots(1, 2 if long_run else 1, squeeze=False).ravel()
    colours = policy_colours([c.name for c in candidates])
    positive = [c.weight_values[c.weight_values > 0] for c in candidates]
    logs = [np.log10(w) for w in positive if len(w)]
    if logs:
        low = min(float(v.min()) for v in logs)
        high = max(float(v.max()) for v in logs)
        bins = np.linspace(low - 0.05, high + 0.05, 40)
        for c, w, colour in zip(candidates, positive, colours, strict=True):
            if not len(w):
                continue
            zero = 1 - len(w) / max(len(c.weight_values), 1)
            axes[0].hist(
                np.log10(w),
                bins=bins,
                histtype="step",
                lw=1.5,
                color=colour,
                label=f"{c.name} (weight 0: {zero:.0%})",
            )
    axes[0].set_yscale("log")
    axes[0].set_xlabel("log10 importance weight (single step, weight > 0)")
    axes[0].set_ylabel("rows")
    axes[0].set_title("Single-step weights", fontsize="medium")
    axes[0].legend(fontsize="x-small")
    if long_run:
        ax = axes[1]
        for c, colour in zip(candidates, colours, strict=True):
            d = c.long_run_diagnostics
            if d is None:
                continue
            weeks = np.arange(1, len(d.ess_share_by_step) + 1)
            ax.plot(weeks, d.ess_share_by_step, color=colour, lw=1.6, label=c.name)
            ax.plot(weeks, d.marginal_ess_share_by_step, color=colour, lw=1.2, ls="--")
        ax.axhline(LONG_RUN_ESS_COLLAPSE, color="black", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_ylim(top=1.2)
        ax.set_xlabel("week (decision number of the customer)")
        ax.set_ylabel("effective sample size / customers")
        ax.set_title(
            "Long run: cumulative (solid) and marginalized (dashed) weights", fontsize="medium"
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    return _png(fig)


def _stage_figure(result: OpeResult) -> bytes:
    """DR value per decision by lifecycle stage for each candidate, beside the logger's
    observed mean reward."""
    candidates = [c for c in result.candidates if not c.self_check] or list(result.candidates)
    stages = [g.group for g in candidates[0].by_stage]
    logged = np.array([g.logged_mean_reward for g in candidates[0].by_stage])
    series = [("logger (observed)", logged)] + [
        (c.name, np.array([g.dr for g in c.by_stage])) for c in candidates
    ]
    fig = _new_figure((max(6.5, 1.2 * len(stages) + 3.0), 4.2))
    ax = fig.add_subplot()
    x = np.arange(len(stages))
    width = 0.8 / len(series)
    # The logger light grey with an outline: no_contact already has the project's grey.
    colours = ["#d9d9d9", *policy_colours([c.name for c in candidates])]
    for k, ((name, values), colour) in enumerate(zip(series, colours, strict=True)):
        offset = (k - (len(series) - 1) / 2) * width
        edge = "black" if k == 0 else colour
        ax.bar(x + offset, values, width, color=colour, edgecolor=edge, lw=0.6, label=name)
    shares = [g.share for g in candidates[0].by_stage]
    ax.set_xticks(
        x, [f"{s}\n{share:.0%} of decisions" for s, share in zip(stages, shares, strict=True)]
    )
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set_ylabel("value per decision (DR; logger: observed)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Value per decision by lifecycle stage at decision time", fontsize="medium")
    fig.legend(loc="outside right upper", fontsize="small")
    return _png(fig)


# --- rendering -------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 72rem; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.3rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2.2rem; }
table { border-collapse: collapse; margin: 0.6rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td { font-variant-numeric: tabular-nums; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; }
figcaption { font-size: 0.9rem; color: #555; }
.subtitle { color: #555; margin-top: 0; }
.headline { font-size: 1.1rem; background: #f3f7fb; border-left: 4px solid #1f77b4;
            padding: 0.6rem 0.9rem; }
details { margin: 0.4rem 0 1rem; }
"""


def _html_block(block: Block, first_paragraph: bool) -> str:
    if isinstance(block, str):
        css = ' class="headline"' if first_paragraph else ""
        return f"<p{css}>{html.escape(block)}</p>"
    if isinstance(block, Table):
        head = "".join(f"<th>{html.escape(c)}</th>" for c in block.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
            for row in block.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode("ascii")
        title = html.escape(block.title)
        return (
            f'<figure><img alt="{title}" src="data:image/png;base64,{data}">'
            f"<figcaption>{title}</figcaption></figure>"
        )
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in block.items) + "</ul>"
    inner = "".join(_html_block(b, False) for b in block.blocks)
    return f"<details><summary>{html.escape(block.summary)}</summary>{inner}</details>"


def render_html(result: OpeResult, sections: Sequence[Section]) -> str:
    data = result.data
    subtitle = (
        f"Log {data.source.path} ({data.source.kind}): {format_number(data.decisions)} "
        f"decisions of {format_number(data.customers)} customers, {data.first_decision} to "
        f"{data.last_decision}."
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>Off-policy evaluation report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Off-policy evaluation report</h1>",
        f'<p class="subtitle">{html.escape(subtitle)}</p>',
    ]
    for index, section in enumerate(sections):
        parts.append(f"<h{section.level}>{html.escape(section.title)}</h{section.level}>")
        parts += [_html_block(b, index == 0 and k == 0) for k, b in enumerate(section.blocks)]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_block(block: Block) -> list[str]:
    if isinstance(block, str):
        return [block, ""]
    if isinstance(block, Table):
        return [
            "| " + " | ".join(_md_cell(c) for c in block.columns) + " |",
            "|" + "---|" * len(block.columns),
            *("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows),
            "",
        ]
    if isinstance(block, Figure):
        return [f"*Plot in {HTML_FILE}: {block.title}.*", ""]
    if isinstance(block, Bullets):
        return [*(f"- {item}" for item in block.items), ""]
    lines = [f"**{block.summary}**", ""]
    for inner in block.blocks:
        lines += _md_block(inner)
    return lines


def render_markdown(result: OpeResult, sections: Sequence[Section]) -> str:
    data = result.data
    lines = [
        "# Off-policy evaluation report",
        "",
        f"Log {data.source.path} ({data.source.kind}): {format_number(data.decisions)} "
        f"decisions of {format_number(data.customers)} customers, {data.first_decision} to "
        f"{data.last_decision}.",
        "",
    ]
    for section in sections:
        lines += ["#" * section.level + " " + section.title, ""]
        for block in section.blocks:
            lines += _md_block(block)
    return "\n".join(lines).rstrip() + "\n"


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    json: Path
    markdown: Path


def write_report(result: OpeResult, out_dir: str | Path) -> ReportPaths:
    """Write ``report.html``, ``report.json`` and ``report.md`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = build_document(result)
    paths = ReportPaths(out / HTML_FILE, out / JSON_FILE, out / MARKDOWN_FILE)
    paths.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    paths.html.write_text(render_html(result, sections), encoding="utf-8")
    paths.markdown.write_text(render_markdown(result, sections), encoding="utf-8")
    return paths
