"""Sweeps on Ray Tune (cvm_rl/sweep.py, `cvm sweep`): the search space and its errors without
Ray, and one small 4-trial sweep on a local Ray (slow)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from cvm_rl.cli import main
from cvm_rl.sweep import (
    SearchSpace,
    SweepError,
    SweepResult,
    TrialRow,
    best_trial,
    format_sweep_table,
    load_space,
    parse_grid_option,
    trial_name,
    write_sweep,
)

ROOT = Path(__file__).resolve().parents[1]


def test_grid_options_parse_json_literals_and_bracketed_lists() -> None:
    assert parse_grid_option("learning_rate=1e-4,5e-4") == ("learning_rate", [1e-4, 5e-4])
    assert parse_grid_option("net_arch=[64,64],[128, 128]") == ("net_arch", [[64, 64], [128, 128]])
    assert parse_grid_option("terminal_value=true,false") == ("terminal_value", [True, False])
    assert parse_grid_option("algo=ppo,maskable_ppo") == ("algo", ["ppo", "maskable_ppo"])
    assert parse_grid_option("bandit_kwargs.alpha=0.5,1") == ("bandit_kwargs.alpha", [0.5, 1])


@pytest.mark.parametrize("text", ["learning_rate", "=1,2", "learning_rate="])
def test_a_malformed_grid_option_says_the_form(text: str) -> None:
    with pytest.raises(SweepError, match=r"--grid: expected KEY=VALUE\[,VALUE...\]"):
        parse_grid_option(text)


def test_an_unknown_key_names_it_and_the_allowed_fields() -> None:
    with pytest.raises(SweepError) as info:
        parse_grid_option("learning_rat=1e-4")
    message = str(info.value)
    assert "unknown key 'learning_rat' (did you mean learning_rate?)" in message
    for allowed in ("learning_rate", "seed", "ent_coef", "net_arch", "bandit_kwargs.KEY"):
        assert allowed in message
    assert "torch_threads" not in message.split("allowed:")[1]
    with pytest.raises(SweepError, match=r"base: unknown key 'policy_kwargs\.'"):
        SearchSpace({"algo": "ppo", "policy_kwargs.": 1}).check()


def test_torch_threads_is_fixed_at_one_a_trial() -> None:
    with pytest.raises(SweepError, match="torch_threads is fixed at 1"):
        parse_grid_option("torch_threads=1,2")
    space = SearchSpace({"algo": "ppo"}, {"learning_rate": [1e-4]})
    assert space.config({"learning_rate": 1e-4}).torch_threads == 1


@pytest.mark.parametrize(
    ("space", "message"),
    [
        (SearchSpace({"algo": "ppo"}, {"learning_rate": [1e-4, -1]}), "grid: learning_rate=-1: "),
        (SearchSpace({"algo": "ppo", "steps": 0}), "base: steps must be a positive integer"),
        (SearchSpace({"algo": "nope"}), "base: "),
        (SearchSpace({"algo": "ppo"}, {"seed": [0, 1000]}), r"training seeds are 0..999"),
        (SearchSpace({"algo": "ppo"}, {"gamma": [0.9, 0.9]}), "grid: gamma lists 0.9 twice"),
        (SearchSpace({"algo": "ppo"}, {"gamma": []}), "grid: gamma must list at least one"),
        (
            SearchSpace({"algo": "ppo"}, {"learning_rate": [0.5, "0.5"]}),
            "two trials would share the run directory 'learning_rate=0.5'",
        ),
    ],
)
def test_bad_values_are_refused_before_any_trial(space: SearchSpace, message: str) -> None:
    with pytest.raises(SweepError, match=message):
        space.trials()


def test_trials_are_every_combination_with_dotted_keys_in_dict_fields() -> None:
    space = SearchSpace(
        {"algo": "linucb", "bandit_kwargs.ridge": 2.0},
        {"bandit_kwargs.alpha": [0.5, 1.0], "seed": [0, 1, 2]},
    )
    trials = space.trials()
    assert len(trials) == 6
    assert trials[1] == {"bandit_kwargs.alpha": 0.5, "seed": 1}
    config = space.config(trials[1])
    assert config.bandit_kwargs == {"ridge": 2.0, "alpha": 0.5} and config.seed == 1
    assert trial_name(trials[1]) == "bandit_kwargs.alpha=0.5_seed=1"
    assert trial_name({"net_arch": [64, 64], "terminal_value": True}) == (
        "net_arch=64x64_terminal_value=true"
    )
    assert len({trial_name(t) for t in trials}) == 6


def test_a_space_file_in_toml_or_json(tmp_path: Path) -> None:
    toml = tmp_path / "space.toml"
    toml.write_text('[base]\nalgo = "ppo"\nsteps = 2048\n[grid]\nlearning_rate = [1e-4, 5e-4]\n')
    space = load_space(toml)
    assert space.base == {"algo": "ppo", "steps": 2048}
    assert space.grid == {"learning_rate": [1e-4, 5e-4]}
    as_json = tmp_path / "space.json"
    as_json.write_text(json.dumps({"base": space.base, "grid": space.grid}))
    assert load_space(as_json) == space

    bad = tmp_path / "bad.toml"
    bad.write_text("[grid]\nlr = [1e-4]\n")
    with pytest.raises(SweepError, match=r"bad.toml: grid: unknown key 'lr'; allowed: algo, "):
        load_space(bad)
    bad.write_text("[grids]\nlearning_rate = [1e-4]\n")
    with pytest.raises(SweepError, match="unknown table 'grids'; allowed: base, grid"):
        load_space(bad)


def test_a_relative_scenario_file_becomes_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "world.toml").write_text("")
    monkeypatch.chdir(tmp_path)
    space = SearchSpace({"scenario": "world.toml"}, {"scenario": ["world.toml", "default"]})
    resolved = space.with_absolute_paths()
    assert resolved.base["scenario"] == str(tmp_path / "world.toml")
    assert resolved.grid["scenario"] == [str(tmp_path / "world.toml"), "default"]


def _row(name: str, value: float | None, error: str | None = None) -> TrialRow:
    return TrialRow(name, {"learning_rate": 1e-4, "seed": 0}, 0, value, 1664, 1.0, name, error)


def test_the_best_trial_is_the_highest_validation_value_of_those_that_ran(tmp_path: Path) -> None:
    rows = [_row("a", 1.0), _row("b", 3.0), _row("c", None, "boom"), _row("d", math.nan)]
    rows.append(_row("e", 3.0))
    best = best_trial(rows)
    assert best is not None and best.trial == "b"  # the first of equals
    assert best_trial([_row("c", None, "boom")]) is None
    table = format_sweep_table(rows, best)
    lines = table.splitlines()
    assert lines[0] == (
        "| trial | learning_rate | seed | validation value | customer-weeks | seconds | run |"
    )
    assert lines[1] == "|---|---:|---:|---:|---:|---:|---|"
    assert lines[3].startswith("| b (best) | 0.0001 | 0 | 3.000 | 1,664 | 1.0 |")
    assert "| c | 0.0001 | 0 | failed |" in table

    run = tmp_path / "trials" / "b"
    (run / "bundle").mkdir(parents=True)
    rows[1].run_dir = str(run)
    result = SweepResult(rows, rows[1], tmp_path)
    write_sweep(result, SearchSpace({"algo": "ppo"}, {"learning_rate": [1e-4]}))
    assert (tmp_path / "best").resolve() == (run / "bundle").resolve()
    assert not Path((tmp_path / "best").readlink()).is_absolute()  # the sweep dir can move
    payload = json.loads((tmp_path / "sweep.json").read_text())
    assert payload["best"]["trial"] == "b" and len(payload["trials"]) == 5
    csv_lines = (tmp_path / "sweep.csv").read_text().splitlines()
    assert csv_lines[0] == (
        "trial,learning_rate,seed,validation_value,customer_weeks,seconds,run_dir,error"
    )
    assert len(csv_lines) == 6


def test_cli_errors_name_the_key_before_ray_starts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "--algo", "ppo", "--grid", "lr=1e-4,5e-4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --grid: unknown key 'lr'; allowed: algo, ")
    assert main(["sweep", "--grid", "learning_rate=1e-4"]) == 2
    assert "error: --algo: required" in capsys.readouterr().err
    assert main(["sweep", "--algo", "ppo", "--seeds", "0", "1000"]) == 2
    assert "training seeds are 0..999" in capsys.readouterr().err


def test_cvm_sweep_help_imports_no_ray() -> None:
    code = (
        "import sys; from cvm_rl.cli import build_parser; build_parser(); "
        "import cvm_rl.sweep; print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]", out.stdout


@pytest.fixture
def local_ray(monkeypatch: pytest.MonkeyPatch):
    """A local Ray of 2 CPUs, no dashboard, no usage report; shut down after the test (which
    ends its processes)."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.tune")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_a_four_trial_sweep_picks_the_best_on_validation(local_ray, tmp_path: Path) -> None:
    from cvm_rl.bundle import load_bundle
    from cvm_rl.training import train

    out = tmp_path / "sweep"
    small = ["--steps", "1024", "--n-envs", "32", "--batch-size", "64", "--n-epochs", "1"]
    argv = ["sweep", "--algo", "maskable_ppo", *small, "--validation-customers", "300"]
    argv += ["--grid", "learning_rate=1e-4,5e-4", "--seeds", "0", "1", "--out", str(out)]
    assert main([*argv, "--quiet"]) == 0

    payload = json.loads((out / "sweep.json").read_text())
    trials = payload["trials"]
    assert len(trials) == 4 and all(t["error"] is None for t in trials)
    values = [t["validation_value"] for t in trials]
    assert payload["best"]["validation_value"] == max(values)
    assert (out / "best").resolve() == (Path(payload["best"]["run_dir"]) / "bundle").resolve()
    assert load_bundle(out / "best").algo == "maskable_ppo"
    space = SearchSpace(
        {
            "algo": "maskable_ppo",
            "steps": 1024,
            "n_envs": 32,
            "batch_size": 64,
            "n_epochs": 1,
            "validation_customers": 300,
        },
        {"learning_rate": [1e-4, 5e-4], "seed": [0, 1]},
    )
    for trial in trials:
        load_bundle(Path(trial["run_dir"]) / "bundle")
        # The same config trained here, without Ray, gives the same validation value.
        plain = train(space.config(trial["params"]))
        assert plain.curve_values[-1] == trial["validation_value"], trial["trial"]
