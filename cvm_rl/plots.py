"""PNG plots of evaluations and training: policy values, value by segment or lifecycle stage,
action mix by stage, and learning curves.

Figures are built from :class:`matplotlib.figure.Figure` with an Agg canvas, never through
``pyplot``: nothing is registered globally (no figure to close, no leak across calls) and the
process-wide backend is left alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, PercentFormatter
from numpy.typing import ArrayLike

from cvm_rl.evaluation import GROUP_BY, PolicyResult, t_interval

Run = tuple[ArrayLike, ArrayLike]
"""One training run's learning curve: (environment steps, evaluation values), both 1-D."""
LearningCurves = Mapping[str, Sequence[Run] | Run]
"""Label (algorithm or run) -> its runs, one per seed (a single run may be given bare)."""

VALUE_LABEL = "net value per customer over the horizon\n(margin − discounts − contact cost)"
METRIC_LABELS: dict[str, str] = {
    "value": VALUE_LABEL,
    "revenue": "revenue per customer over the horizon",
    "discount_cost": "discount cost per customer over the horizon",
    "contact_cost": "contact cost per customer over the horizon",
    "contacts": "contacts per customer over the horizon",
    "opt_out_rate": "share of customers who opted out of a channel",
    "churn_rate": "share of customers alive at start who dropped out",
}
DPI = 150
# Fixed colours for the reference policies so they read the same in every plot.
_FIXED_COLOURS = {"no_contact": "#7f7f7f", "oracle": "#222222"}
_CYCLE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def plot_policy_values(
    results: Sequence[PolicyResult],
    path: str | Path,
    *,
    metric: str = "value",
    baseline: str | None = "no_contact",
    title: str | None = None,
) -> Path:
    """The headline plot: one horizontal bar per policy with its 95 % CI over seeds, the
    value printed next to it and a dashed line at ``baseline``'s mean (if present)."""
    results = _check_results(results)
    if metric not in results[0].per_seed:
        raise ValueError(f"metric: expected one of {sorted(results[0].per_seed)}, got {metric!r}")
    out = _png_path(path)
    names = [r.policy for r in results]
    means = np.array([r.mean(metric) for r in results])
    bounds = np.array([r.interval(metric) for r in results])
    fig, ax = _figure((7.5, 1.2 + 0.55 * len(results)))
    y = np.arange(len(results))[::-1]  # first policy on top
    ax.barh(
        y,
        means,
        xerr=error_bar_lengths(means, bounds),
        color=policy_colours(names),
        height=0.6,
        capsize=4,
        error_kw={"elinewidth": 1.2},
    )
    ax.set_yticks(y, names)
    base = next((r for r in results if r.policy == baseline), None)
    if base is not None:
        # Labelled above the axes rather than in a legend, which would cover bar labels.
        level = base.mean(metric)
        ax.axvline(level, color="black", ls="--", lw=1)
        ax.annotate(
            f"{baseline} mean",
            (level, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize="small",
        )
    ax.axvline(0.0, color="black", lw=0.6)
    # Labels sit right of the CI whisker (left of it for negative bars) so they never overlap.
    span = float(np.nanmax(np.abs(bounds))) or 1.0
    for yi, mean, (low, high) in zip(y, means, bounds, strict=True):
        anchor, ha = (high, "left") if mean >= 0 else (low, "right")
        ax.text(
            anchor + 0.02 * span * (1 if mean >= 0 else -1),
            yi,
            f"{mean:.2f} [{low:.2f}, {high:.2f}]",
            va="center",
            ha=ha,
            fontsize="small",
        )
    ax.margins(x=0.3)
    ax.set_xlabel(METRIC_LABELS.get(metric, metric))
    ax.grid(axis="x", alpha=0.3)
    seeds = len(results[0].seeds)
    what = metric.replace("_", " ").capitalize()
    ax.set_title(title or f"{what} by policy\n(mean and 95 % CI over {seeds} seeds)", pad=14)
    return _save(fig, out)


def plot_value_by_group(
    results: Sequence[PolicyResult],
    path: str | Path,
    *,
    by: str = "segment",
    title: str | None = None,
) -> Path:
    """Grouped bars of value per customer by ``"segment"`` (latent) or ``"stage"`` (lifecycle
    stage at the start of the horizon): policies side by side, error bars = 95 % CI over
    seeds. Groups nobody was drawn into are left out; tick labels give each group's share of
    customers."""
    if by not in GROUP_BY:
        raise ValueError(f"by: expected one of {list(GROUP_BY)}, got {by!r}")
    results = _check_results(results, breakdown=True)
    out = _png_path(path)
    names, _, _ = results[0].require_breakdown().groups(by)
    for r in results[1:]:
        if r.require_breakdown().groups(by)[0] != names:
            raise ValueError(f"results: policies were evaluated on different {by} lists")
    stats = [r.group_values(by) for r in results]
    means = np.array([m for _, m, _ in stats])  # (P, G)
    bounds = np.array([b for _, _, b in stats])  # (P, G, 2)
    keep = np.flatnonzero(np.isfinite(means).any(axis=0))
    _, shares = results[0].group_shares(by)
    fig, ax = _figure((max(7.0, 1.4 * len(keep) + 2.5), 4.8))
    x = np.arange(len(keep))
    width = 0.8 / len(results)
    colours = policy_colours([r.policy for r in results])
    for p, r in enumerate(results):
        ax.bar(
            x + (p - (len(results) - 1) / 2) * width,
            means[p, keep],
            width,
            yerr=error_bar_lengths(means[p, keep], bounds[p, keep]),
            capsize=3,
            color=colours[p],
            label=r.policy,
            error_kw={"elinewidth": 1.0},
        )
    ax.set_xticks(x, [f"{names[g]}\n{shares[g]:.0%} of customers" for g in keep])
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set_ylabel(VALUE_LABEL)
    ax.grid(axis="y", alpha=0.3)
    what = "segment" if by == "segment" else "lifecycle stage at the start of the horizon"
    ax.set_title(
        title or f"Value per customer by {what}\n(bars: mean over seeds, whiskers: 95 % CI)"
    )
    fig.legend(loc="outside right upper", title="policy", fontsize="small")
    return _save(fig, out)


def plot_action_mix(
    results: PolicyResult | Sequence[PolicyResult],
    path: str | Path,
    *,
    group: str = "offer",
    top_k: int = 8,
    include_no_contact: bool = False,
    title: str | None = None,
) -> Path:
    """Stacked bars per lifecycle stage (at decision time) of the share of customer-weeks that
    received each ``group`` (``"offer"`` summing channels, ``"channel"`` summing offers, or
    ``"action"`` = offer@channel, the ``top_k`` most used and "other"). Without
    ``include_no_contact`` a bar's height is the stage's contact rate (labelled on top); with
    it, "no contact" fills each bar to 100 %. One panel per policy, shared axes and legend."""
    if group not in ("offer", "channel", "action"):
        raise ValueError(f"group: expected one of ['offer', 'channel', 'action'], got {group!r}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    results = _check_results([results] if isinstance(results, PolicyResult) else results, True)
    out = _png_path(path)
    first = results[0].require_breakdown()
    for r in results[1:]:
        bd = r.require_breakdown()
        if bd.actions != first.actions or bd.stages != first.stages:
            raise ValueError("results: policies were evaluated on different scenarios")
    counts = np.array([r.action_mix(normalize=False) for r in results])  # (P, K, A)
    labels, matrix = _action_groups(first.actions, group, top_k, counts.sum(axis=(0, 1)))
    totals = counts.sum(axis=2, keepdims=True)  # decisions per (policy, stage)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0) @ matrix
    stages = np.flatnonzero(totals.sum(axis=(0, 2)) > 0)  # stages anyone was ever in
    if include_no_contact:
        labels = [*labels, "no contact"]
        no_contact = np.divide(
            counts[:, :, 0],
            totals[:, :, 0],
            out=np.zeros(counts.shape[:2]),
            where=totals[:, :, 0] > 0,
        )
        shares = np.concatenate([shares, no_contact[:, :, None]], axis=2)
    palette = _group_palette(len(labels), include_no_contact)
    n_cols = min(len(results), 3)
    n_rows = -(-len(results) // n_cols)
    # The legend sits outside on the right; 2.6 in keeps room for offer@channel names.
    size = (2.6 + 3.6 * n_cols, 1.0 + 3.6 * n_rows)
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, sharey=True, squeeze=False).ravel()
    x = np.arange(len(stages))
    for ax, r, share in zip(axes, results, shares, strict=False):
        bottom = np.zeros(len(stages))
        for g, label in enumerate(labels):
            heights = share[stages, g]
            ax.bar(x, heights, 0.75, bottom=bottom, color=palette[g], label=label, lw=0)
            bottom += heights
        if not include_no_contact:
            for xi, rate in zip(x, bottom, strict=True):
                ax.text(xi, rate, f"{rate:.0%}", ha="center", va="bottom", fontsize="x-small")
        ax.set_title(r.policy)
        ax.set_xticks(x, [first.stages[k] for k in stages], rotation=35, ha="right")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    for ax in axes[len(results) :]:
        ax.set_visible(False)
    top = 1.0 if include_no_contact else max(float(shares[:, stages].sum(axis=2).max()), 0.01)
    axes[0].set_ylim(0, top * 1.12)
    for row in range(n_rows):
        axes[row * n_cols].set_ylabel("share of customer-weeks in the stage")
    fig.supxlabel("lifecycle stage when the decision was made", fontsize="medium")
    handles, names = axes[0].get_legend_handles_labels()
    if handles:  # none when no policy ever contacted anyone
        fig.legend(
            handles[::-1], names[::-1], loc="outside right upper", title=group, fontsize="small"
        )
    what = "contact mix" if not include_no_contact else "action mix"
    fig.suptitle(title or f"{what.capitalize()} by lifecycle stage\n(executed actions, all seeds)")
    return _save(fig, out)


def plot_learning_curves(
    curves: LearningCurves,
    path: str | Path,
    *,
    title: str = "Learning curves",
    xlabel: str = "environment steps (customer-weeks)",
    ylabel: str = "mean episode value per customer",
    band: Literal["minmax", "ci95", "none"] = "minmax",
    references: Mapping[str, float] | None = None,
) -> Path:
    """One line per label of ``curves``; a label with several runs (seeds) is drawn as the
    mean over runs with a shaded band (``"minmax"`` over runs or a ``"ci95"`` Student-t band).
    Runs evaluated at different steps are interpolated onto the union of their steps within
    the range all of them cover. ``references`` adds dashed horizontal lines (e.g. the value
    of the baselines or the oracle) to read the curves against."""
    if not curves:
        raise ValueError("curves: expected at least one label with a (steps, values) run")
    if band not in ("minmax", "ci95", "none"):
        raise ValueError(f"band: expected one of ['minmax', 'ci95', 'none'], got {band!r}")
    out = _png_path(path)
    fig, ax = _figure((8.5, 4.8))
    colours = policy_colours(list(curves))
    for colour, (label, runs) in zip(colours, curves.items(), strict=True):
        steps, values = _align_runs(label, runs)
        mean = values.mean(axis=0)
        n_runs = len(values)
        legend = label if n_runs == 1 else f"{label} (mean of {n_runs} runs)"
        ax.plot(steps, mean, color=colour, lw=1.8, label=legend)
        if n_runs > 1 and band != "none":
            if band == "minmax":
                low, high = values.min(axis=0), values.max(axis=0)
            else:
                low, high = np.array([t_interval(column) for column in values.T]).T
            ax.fill_between(steps, low, high, color=colour, alpha=0.2, lw=0)
    for (name, level), colour in zip(
        (references or {}).items(),
        policy_colours(list(references or {}), offset=len(curves)),
        strict=True,
    ):
        ax.axhline(level, color=colour, ls="--", lw=1.2, label=f"{name}: {level:.2f}")
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    band_note = {"minmax": "band: min-max over runs", "ci95": "band: 95 % CI", "none": ""}[band]
    ax.set_title(title if not band_note else f"{title}\n({band_note})")
    fig.legend(loc="outside right upper", fontsize="small")
    return _save(fig, out)


# ---------------------------------------------------------------------------- helpers
def _check_results(results: Sequence[PolicyResult], breakdown: bool = False) -> list[PolicyResult]:
    results = list(results)
    if not results:
        raise ValueError("results: expected at least one PolicyResult, got none")
    for r in results:
        if not isinstance(r, PolicyResult):
            raise ValueError(f"results: expected PolicyResult items, got {type(r).__name__}")
        if breakdown:
            r.require_breakdown()
    return results


def _png_path(path: str | Path) -> Path:
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise ValueError(f"path: expected a file name ending in .png, got {str(path)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _figure(size: tuple[float, float]) -> tuple[Figure, Axes]:
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=DPI)
    fig.clear()  # drop artists now rather than at garbage collection
    return path


def policy_colours(names: Sequence[str], offset: int = 0) -> list[str]:
    colours, k = [], offset
    for name in names:
        if name in _FIXED_COLOURS:
            colours.append(_FIXED_COLOURS[name])
        else:
            colours.append(_CYCLE[k % len(_CYCLE)])
            k += 1
    return colours


def _group_palette(n: int, last_is_no_contact: bool) -> list[Any]:
    cmap = colormaps["tab20" if n > 10 else "tab10"]
    palette: list[Any] = [cmap(i % cmap.N) for i in range(n)]
    if last_is_no_contact:
        palette[-1] = "#e0e0e0"  # light so the offers stay the visual focus
    return palette


def error_bar_lengths(means: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """(2, n) non-negative distances from the means to the interval ends (0 where NaN)."""
    err = np.stack([means - bounds[:, 0], bounds[:, 1] - means])
    return np.nan_to_num(np.clip(err, 0.0, None))


def _action_groups(
    actions: Sequence[str], group: str, top_k: int, totals: np.ndarray
) -> tuple[list[str], np.ndarray]:
    """Labels and an (A, G) 0/1 matrix summing contact actions (names ``offer@channel``) into
    groups; the no-contact column maps to no group."""
    if group == "action":
        contacts = np.arange(1, len(actions))
        used = contacts[totals[1:] > 0]  # actions nobody sent would only clutter the legend
        ranked = used[np.argsort(-totals[used], kind="stable")]
        top = sorted(ranked[:top_k].tolist())
        labels = [actions[a] for a in top]
        key = {a: i for i, a in enumerate(top)}
        if len(used) > top_k:
            labels.append("other")
        index = [key.get(a, len(top)) for a in contacts]
    else:
        part = 0 if group == "offer" else 1
        keys = [name.split("@")[part] for name in actions[1:]]
        labels = list(dict.fromkeys(keys))
        index = [labels.index(k) for k in keys]
    matrix = np.zeros((len(actions) + 1, len(labels) + 1))  # a spare row/column for unused
    matrix[np.arange(1, len(actions)), index] = 1.0
    return labels, matrix[: len(actions), : len(labels)]


def _align_runs(label: str, runs: Sequence[Run] | Run) -> tuple[np.ndarray, np.ndarray]:
    """Steps (S,) and values (R, S) of a label's runs on one grid."""
    where = f"curves[{label!r}]"
    listed: list[Any] = [runs] if _is_run(runs) else list(runs)
    parsed = []
    for i, run in enumerate(listed):
        if not _is_run(run):
            raise ValueError(f"{where}[{i}]: expected a (steps, values) pair of 1-D arrays")
        steps = np.asarray(run[0], dtype=float)
        values = np.asarray(run[1], dtype=float)
        if len(steps) != len(values) or len(steps) == 0:
            raise ValueError(
                f"{where}[{i}]: steps and values must be non-empty and of equal length, "
                f"got {len(steps)} and {len(values)}"
            )
        order = np.argsort(steps, kind="stable")
        parsed.append((steps[order], values[order]))
    if not parsed:
        raise ValueError(f"{where}: expected at least one (steps, values) run")
    first = parsed[0][0]
    if all(len(s) == len(first) and np.array_equal(s, first) for s, _ in parsed):
        return first, np.stack([v for _, v in parsed])
    lo = max(s[0] for s, _ in parsed)
    hi = min(s[-1] for s, _ in parsed)
    if lo > hi:
        raise ValueError(f"{where}: the runs' step ranges do not overlap")
    grid = np.unique(np.concatenate([s for s, _ in parsed]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    return grid, np.stack([np.interp(grid, s, v) for s, v in parsed])


def _is_run(obj: object) -> bool:
    """A (steps, values) pair of 1-D numeric arrays (not a sequence of such pairs)."""
    if not isinstance(obj, Sequence) or isinstance(obj, str) or len(obj) != 2:
        return False
    try:
        return all(np.asarray(part, dtype=float).ndim == 1 for part in obj)
    except (TypeError, ValueError):  # ragged or non-numeric: a list of runs
        return False
