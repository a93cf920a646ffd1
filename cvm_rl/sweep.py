"""Hyperparameter and seed sweeps on Ray Tune: many ``cvm train`` runs, one chosen on the
validation populations.

A search space is a base :class:`~cvm_rl.train_config.TrainConfig` (fields every trial shares)
and a grid (a list of values per field; every combination is a trial)::

    [base]                       # a TOML (or the same as JSON) file for `cvm sweep --space`
    algo = "maskable_ppo"
    steps = 2_000_000
    terminal_value = true

    [grid]
    learning_rate = [1e-4, 5e-4]
    seed = [0, 1, 2]             # seeds are one more grid key
    # bandit_kwargs.alpha = [0.5, 1.0]   (a dotted key sets one entry of a dict field)

Each trial is :func:`~cvm_rl.training.train` in a Ray worker with one CPU and one torch
thread (``torch_threads`` is fixed at 1, so ``cpus`` trials run at once without
oversubscribing), writing an ordinary ``cvm train`` run directory under ``OUT/trials/``. It
reports its validation value (value per customer of the final policy on its validation
population, seed 10,000 + its training seed: the last point of its learning curve, what
``cvm train`` prints). The best trial is chosen on that value alone, never on the held-out
evaluation populations (seeds 1000 and up), which stay for ``cvm evaluate`` of the pick.

``OUT`` receives ``sweep.json`` and ``sweep.csv`` (one row per trial), ``best`` (a symlink to
the chosen run's bundle) and Tune's own files in ``tune/``. Ray is imported only by
:func:`run_sweep`; parsing and checking a search space needs no Ray.
"""

from __future__ import annotations

import csv
import difflib
import itertools
import json
import math
import os
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, get_origin

from pydantic import ValidationError

from cvm_rl.config import error_message
from cvm_rl.ray_workers import ONE_THREAD_ENV
from cvm_rl.train_config import HELD_OUT_SEED_START, TrainConfig

METRIC = "validation_value"
"""What every trial reports and the sweep maximizes: value per customer of the final policy
on the trial's validation population."""

TRAINING_SEEDS = range(HELD_OUT_SEED_START)
"""Training seeds: 1000 and up are the held-out evaluation populations, which a sweep must
not train on."""

FIXED: dict[str, Any] = {"torch_threads": 1}
"""Set for every trial and refused in a search space: one CPU and one torch thread a trial."""

DICT_FIELDS: tuple[str, ...] = tuple(
    name for name, info in TrainConfig.model_fields.items() if get_origin(info.annotation) is dict
)
"""Fields whose entries a dotted key sets (``bandit_kwargs.alpha``)."""

SECTIONS = ("base", "grid")


class SweepError(ValueError):
    """A bad search space: an unknown key, a bad value, a bad file."""


def allowed_keys() -> list[str]:
    """The keys a search space may set: TrainConfig's fields but the fixed ones, and a dotted
    ``FIELD.KEY`` for each dict field."""
    plain = [name for name in TrainConfig.model_fields if name not in FIXED]
    return plain + [f"{name}.KEY" for name in DICT_FIELDS]


def check_key(key: str, where: str) -> None:
    """A :class:`SweepError` naming ``key`` and the allowed keys unless ``key`` is one."""
    head, dot, rest = key.partition(".")
    if key in FIXED:
        raise SweepError(
            f"{where}: {key} is fixed at {FIXED[key]} in a sweep (one CPU and one torch "
            "thread a trial; more trials run at once instead)"
        )
    if (not dot and key in TrainConfig.model_fields) or (dot and head in DICT_FIELDS and rest):
        return
    close = difflib.get_close_matches(key, list(TrainConfig.model_fields), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise SweepError(f"{where}: unknown key {key!r}{hint}; allowed: {', '.join(allowed_keys())}")


def parse_value(text: str) -> Any:
    """A command-line value: a JSON literal (``5e-4``, ``3``, ``true``, ``[64,64]``) or else
    the text itself (``maskable_ppo``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _split_top_level(text: str) -> list[str]:
    """``text`` split at the commas outside brackets: ``[64,64],[128,128]`` is two values."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def parse_grid_option(text: str) -> tuple[str, list[Any]]:
    """``KEY=V1,V2,...`` (``--grid learning_rate=1e-4,5e-4``) as (key, values)."""
    key, eq, values = text.partition("=")
    key = key.strip()
    if not eq or not key or not values.strip():
        raise SweepError(f"--grid: expected KEY=VALUE[,VALUE...], got {text!r}")
    check_key(key, "--grid")
    return key, [parse_value(part.strip()) for part in _split_top_level(values)]


@dataclass
class SearchSpace:
    """Base fields shared by every trial and a grid of values per key (every combination)."""

    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)

    def with_grid(self, items: Iterable[tuple[str, list[Any]]]) -> SearchSpace:
        """A copy with these grid keys set (replacing the same keys)."""
        return SearchSpace(dict(self.base), {**self.grid, **dict(items)})

    def with_base(self, values: Mapping[str, Any]) -> SearchSpace:
        """A copy with these base fields set (replacing the same fields)."""
        return SearchSpace({**self.base, **values}, dict(self.grid))

    def check(self) -> None:
        """Every key known, every value valid, no duplicate values, training seeds only:
        each failure a :class:`SweepError` naming the key (before any trial starts)."""
        for key in self.base:
            check_key(key, "base")
        _config(self.base, {}, "base")
        for key, values in self.grid.items():
            check_key(key, "grid")
            if not isinstance(values, list) or not values:
                raise SweepError(f"grid: {key} must list at least one value, got {values!r}")
            for value in values:
                if values.count(value) > 1:
                    raise SweepError(f"grid: {key} lists {value!r} twice")
                _config(self.base, {key: value}, f"grid: {key}={_show(value)}")
        seeds = self.grid.get("seed", [self.base.get("seed", 0)])
        bad = [s for s in seeds if s not in TRAINING_SEEDS]
        if bad:
            raise SweepError(
                f"seed: training seeds are 0..{TRAINING_SEEDS[-1]}, got {bad} (1000 and up are "
                "the held-out evaluation populations)"
            )

    def with_absolute_paths(self) -> SearchSpace:
        """A copy whose scenario files are absolute paths: Tune runs each trial in a
        directory of its own, where a relative path would name nothing."""

        def absolute(value: Any) -> Any:
            is_file = isinstance(value, str) and Path(value).is_file()
            return str(Path(value).resolve()) if is_file else value

        base = {k: absolute(v) if k == "scenario" else v for k, v in self.base.items()}
        grid = {
            k: [absolute(v) for v in vs] if k == "scenario" else vs for k, vs in self.grid.items()
        }
        return SearchSpace(base, grid)

    def trials(self) -> list[dict[str, Any]]:
        """Each trial's grid values, every combination in the grid's key order."""
        self.check()
        keys = list(self.grid)
        trials = [
            dict(zip(keys, combo, strict=True))
            for combo in itertools.product(*(self.grid[k] for k in keys))
        ]
        names = [trial_name(t) for t in trials]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise SweepError(f"grid: two trials would share the run directory {twice[0]!r}")
        return trials

    def config(self, params: Mapping[str, Any]) -> TrainConfig:
        """The TrainConfig of the trial with these grid values."""
        return _config(self.base, params, f"trial {trial_name(params)}")


def _config(base: Mapping[str, Any], params: Mapping[str, Any], where: str) -> TrainConfig:
    data: dict[str, Any] = {}
    for key, value in [*base.items(), *params.items()]:
        head, dot, rest = key.partition(".")
        if dot:
            data[head] = {**data.get(head, {}), rest: value}
        else:
            data[key] = value
    try:
        return TrainConfig.model_validate({**data, **FIXED})
    except ValidationError as exc:
        raise SweepError(error_message(exc, where)) from None


def load_space(path: str | Path) -> SearchSpace:
    """A search space from a TOML or JSON file with ``[base]`` and ``[grid]`` tables."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as exc:  # JSON and TOML decode errors are ValueErrors
        raise SweepError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise SweepError(f"{path}: expected tables {', '.join(SECTIONS)}")
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        raise SweepError(f"{path}: unknown table {unknown[0]!r}; allowed: {', '.join(SECTIONS)}")
    base, grid = data.get("base", {}), data.get("grid", {})
    if not isinstance(base, dict) or not isinstance(grid, dict):
        raise SweepError(f"{path}: base and grid must be tables")
    space = SearchSpace(dict(base), {k: v if isinstance(v, list) else [v] for k, v in grid.items()})
    try:
        space.check()
    except SweepError as exc:
        raise SweepError(f"{path}: {exc}") from None
    return space


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "x".join(_show(v) for v in value)
    return str(value)


def trial_name(params: Mapping[str, Any]) -> str:
    """The trial's run directory name: its grid values (``learning_rate=0.0005_seed=1``)."""
    text = "_".join(f"{k}={_show(v)}" for k, v in params.items()) or "base"
    return re.sub(r"[^A-Za-z0-9_.=+-]", "-", text)


def _last_line(error: BaseException) -> str:
    """The exception's own line of a trial's error (Ray's text carries the traceback, which
    Tune keeps in the trial's error file)."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


@dataclass
class TrialRow:
    """One trial's line of the sweep table (``validation_value`` None when it failed)."""

    trial: str
    params: dict[str, Any]
    seed: int
    validation_value: float | None
    customer_weeks: int | None
    seconds: float | None
    run_dir: str
    error: str | None = None


def best_trial(rows: Sequence[TrialRow]) -> TrialRow | None:
    """The trial with the highest validation value (the first of equals); None if none ran."""
    done = [r for r in rows if r.error is None and _finite(r.validation_value)]
    return max(done, key=lambda r: float(r.validation_value or 0.0), default=None)


def format_sweep_table(rows: Sequence[TrialRow], best: TrialRow | None) -> str:
    """Markdown table, one row per trial in grid order, as the project's tables are laid
    out (see :func:`cvm_rl.evaluation.format_table`); the chosen trial is marked."""
    keys = [k for k in (rows[0].params if rows else {}) if k != "seed"]
    head = "| trial | " + "".join(f"{k} | " for k in keys)
    head += "seed | validation value | customer-weeks | seconds | run |"
    lines = [head, "|---|" + "---:|" * (len(keys) + 4) + "---|"]
    for r in rows:
        value = "failed" if r.validation_value is None else f"{r.validation_value:.3f}"
        mark = " (best)" if best is not None and r.trial == best.trial else ""
        steps = "" if r.customer_weeks is None else f"{r.customer_weeks:,}"
        seconds = "" if r.seconds is None else f"{r.seconds:.1f}"
        lines.append(
            f"| {r.trial}{mark} | "
            + "".join(f"{_show(r.params[k])} | " for k in keys)
            + f"{r.seed} | {value} | {steps} | {seconds} | {r.run_dir} |"
        )
    return "\n".join(lines)


@dataclass
class SweepResult:
    rows: list[TrialRow]
    best: TrialRow | None
    out: Path

    @property
    def best_bundle(self) -> Path | None:
        return None if self.best is None else Path(self.best.run_dir) / "bundle"

    @property
    def failed(self) -> list[TrialRow]:
        return [r for r in self.rows if r.error is not None]


def train_trial(params: dict[str, Any], *, base: dict[str, Any], trials_dir: str) -> None:
    """The function trainable: train one trial in this Ray worker and report its validation
    value. One torch thread (``torch_threads`` = 1, set by :func:`train`)."""
    from ray import tune

    from cvm_rl.training import train

    config = SearchSpace(base).config(params)
    run_dir = Path(trials_dir) / trial_name(params)
    result = train(config, run_dir)
    tune.report(
        {
            METRIC: float(result.curve_values[-1]),
            "customer_weeks": int(result.curve_steps[-1]),
            "train_seconds": round(result.seconds, 2),  # as the bundle's metrics round it
            "run_dir": str(run_dir),
        }
    )


def run_sweep(
    space: SearchSpace,
    out: str | Path,
    *,
    address: str | None = None,
    cpus: int | None = None,
    verbose: int = 1,
) -> SweepResult:
    """Run every trial of ``space`` on Ray Tune and write the sweep's files into ``out``.

    Connects to the cluster at ``address`` (``"auto"``, ``"ray://host:10001"``, ...; ``out``
    must then be on storage every node sees) or, without one, starts a local Ray with
    ``cpus`` CPUs (default: all), one trial per CPU. A Ray already initialized by the caller
    is used as it is and left running.
    """
    import ray
    from ray import tune

    space = space.with_absolute_paths()
    trials = space.trials()
    out = Path(out).resolve()
    (out / "trials").mkdir(parents=True, exist_ok=True)
    started = not ray.is_initialized()
    if started:
        runtime_env = {"env_vars": ONE_THREAD_ENV}
        if address:
            ray.init(address=address, runtime_env=runtime_env)
        else:
            ray.init(num_cpus=cpus, include_dashboard=False, runtime_env=runtime_env)
    try:
        trainable = tune.with_resources(
            tune.with_parameters(train_trial, base=space.base, trials_dir=str(out / "trials")),
            {"cpu": 1},
        )
        tuner = tune.Tuner(
            trainable,
            param_space={k: tune.grid_search(v) for k, v in space.grid.items()},
            tune_config=tune.TuneConfig(metric=METRIC, mode="max", reuse_actors=True),
            run_config=tune.RunConfig(name="tune", storage_path=str(out), verbose=verbose),
        )
        grid = tuner.fit()
        by_name = {trial_name(grid[i].config or {}): grid[i] for i in range(len(grid))}
    finally:
        if started:
            ray.shutdown()
    rows = []
    for params in trials:
        name = trial_name(params)
        config = space.config(params)
        found = by_name.get(name)
        metrics = (found.metrics or {}) if found is not None and found.error is None else {}
        error = None
        if METRIC not in metrics:
            error = _last_line(found.error) if found is not None and found.error else "no report"
        rows.append(
            TrialRow(
                trial=name,
                params=params,
                seed=config.seed,
                validation_value=metrics.get(METRIC),
                customer_weeks=metrics.get("customer_weeks"),
                seconds=metrics.get("train_seconds"),
                run_dir=str(out / "trials" / name),
                error=error,
            )
        )
    result = SweepResult(rows, best_trial(rows), out)
    write_sweep(result, space)
    return result


def write_sweep(result: SweepResult, space: SearchSpace) -> None:
    """``sweep.json``, ``sweep.csv`` and the ``best`` symlink to the chosen bundle."""
    out = result.out
    payload = {
        "metric": METRIC,
        "selection": "max validation value (validation populations only: seed 10000 + the "
        "training seed; never the held-out evaluation seeds 1000+)",
        "base": space.base,
        "grid": space.grid,
        "fixed": FIXED,
        "best": None if result.best is None else asdict(result.best),
        "best_bundle": None if result.best_bundle is None else str(result.best_bundle),
        "trials": [asdict(r) for r in result.rows],
    }
    (out / "sweep.json").write_text(json.dumps(payload, indent=2) + "\n")
    keys = list(result.rows[0].params) if result.rows else []
    with (out / "sweep.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        columns = ["validation_value", "customer_weeks", "seconds", "run_dir", "error"]
        writer.writerow(["trial", *[k for k in keys if k != "seed"], "seed", *columns])
        for r in result.rows:
            writer.writerow(
                [r.trial, *[json.dumps(r.params[k]) for k in keys if k != "seed"], r.seed]
                + [getattr(r, c) if getattr(r, c) is not None else "" for c in columns]
            )
    link = out / "best"
    if result.best_bundle is not None:
        tmp = out / ".best.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.path.relpath(result.best_bundle, out))
        tmp.replace(link)  # atomic: a reader sees the old pick or the new one
    elif link.is_symlink():
        link.unlink()
