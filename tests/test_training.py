"""Training runs (tiny budgets), their run directories and bundles, and the train/evaluate CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cvm_rl.bundle import load_bundle
from cvm_rl.cli import main
from cvm_rl.policies import NoContactPolicy
from cvm_rl.registry import ALGOS
from cvm_rl.training import TrainConfig, load_learning_curve, train, validation_value
from simulator.config import load_scenario
from simulator.vector_env import CustomerLifecycleVectorEnv

SCENARIO = load_scenario("default")
HORIZON = SCENARIO.horizon_weeks
TINY = {"n_envs": 64, "batch_size": 832, "validation_customers": 200, "validation_every": 1}


@pytest.fixture(autouse=True)
def _one_torch_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def observations() -> tuple[np.ndarray, np.ndarray]:
    env = CustomerLifecycleVectorEnv(300, SCENARIO)
    obs, info = env.reset(seed=3)
    for _ in range(5):
        obs, _, _, _, info = env.step(np.zeros(300, dtype=np.int64))
    return obs, info["action_mask"]


@pytest.mark.slow
@pytest.mark.parametrize("algo", ALGOS)
def test_every_algo_trains_and_writes_a_loadable_bundle(
    algo: str, tmp_path: Path, observations: tuple[np.ndarray, np.ndarray]
) -> None:
    config = TrainConfig(algo=algo, steps=2 * 64 * HORIZON, seed=1, **TINY)
    result = train(config, tmp_path / algo)
    run = tmp_path / algo
    assert (run / "config.json").is_file() and (run / "learning_curve.csv").is_file()
    assert json.loads((run / "config.json").read_text())["algo"] == algo
    steps, values = load_learning_curve(run)
    np.testing.assert_array_equal(steps, result.curve_steps)
    np.testing.assert_allclose(values, result.curve_values)
    assert steps[0] == 0 and steps[-1] == config.steps and np.all(np.diff(steps) > 0)
    # The last point is the trained policy on the validation population.
    assert values[-1] == pytest.approx(validation_value(result.policy, SCENARIO, config))
    bundle = load_bundle(run / "bundle")
    assert bundle.manifest["algo"] == algo
    assert bundle.manifest["training_config"]["steps"] == config.steps
    obs, mask = observations
    bundle.policy.seed(0)  # LinTS's probabilities are Monte Carlo draws from this generator
    result.policy.seed(0)
    np.testing.assert_allclose(
        bundle.policy.action_probabilities(obs, mask),
        result.policy.action_probabilities(obs, mask),
        atol=1e-6,
    )
    if algo not in ("linucb", "lints", "egreedy"):
        assert (run / "sb3_model.zip").is_file()
        assert any((run / "tensorboard").rglob("events.out.tfevents.*"))


@pytest.mark.slow
def test_same_seed_same_policy_different_seed_different_policy(
    observations: tuple[np.ndarray, np.ndarray],
) -> None:
    obs, mask = observations

    def probabilities(seed: int) -> np.ndarray:
        config = TrainConfig(algo="maskable_ppo", steps=64 * HORIZON, seed=seed, **TINY)
        return train(config).policy.action_probabilities(obs, mask)

    first = probabilities(5)
    np.testing.assert_array_equal(first, probabilities(5))
    assert np.abs(first - probabilities(6)).max() > 1e-4


def test_no_contact_prior_starts_near_the_do_nothing_campaign(
    observations: tuple[np.ndarray, np.ndarray],
) -> None:
    """Before any update, the prior's share of no contact matches its softmax arithmetic."""
    obs, mask = observations
    from cvm_rl.policies.mlp import MLPPolicy
    from cvm_rl.training import build_model, make_training_env

    config = TrainConfig(algo="ppo", no_contact_prior=4.0, **TINY)
    model = build_model(config, make_training_env(config, SCENARIO))
    model.policy.action_net.weight.data.zero_()  # isolate the bias: uniform but for the prior
    model.policy.action_net.bias.data.zero_()
    model.policy.action_net.bias.data[0] = 4.0
    probs = MLPPolicy.from_sb3(model, SCENARIO).action_probabilities(obs, mask)
    eligible = mask.sum(axis=1)
    expected = np.exp(4.0) / (np.exp(4.0) + eligible - 1)
    np.testing.assert_allclose(probs[:, 0], expected, rtol=1e-5)
    fresh = build_model(config, make_training_env(config, SCENARIO))
    share = MLPPolicy.from_sb3(fresh, SCENARIO).action_probabilities(obs, mask)[:, 0].mean()
    assert share > 0.5  # the real initialization keeps the prior's effect


def test_a_warm_start_clones_the_teacher(
    observations: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behaviour cloning from the rules makes the fresh policy decide as they do on customers
    it was not cloned on (a fresh network mostly does not contact at all)."""
    from cvm_rl import training
    from cvm_rl.policies import RuleBasedPolicy
    from cvm_rl.policies.mlp import MLPPolicy

    monkeypatch.setattr(training, "WARM_START_CUSTOMERS", 1_000)
    obs, mask = observations
    rules = RuleBasedPolicy(SCENARIO).action_probabilities(obs, mask).argmax(axis=1)
    config = TrainConfig(algo="maskable_ppo", warm_start="rules", **TINY)
    model = training.build_model(config, training.make_training_env(config, SCENARIO))
    before = MLPPolicy.from_sb3(model, SCENARIO).action_probabilities(obs, mask).argmax(axis=1)
    loss = training.clone_policy(model, config, SCENARIO, epochs=8)
    after = MLPPolicy.from_sb3(model, SCENARIO).action_probabilities(obs, mask).argmax(axis=1)
    assert np.isfinite(loss)
    contacted = rules > 0
    assert contacted.sum() > 50
    assert (before[contacted] == rules[contacted]).mean() < 0.2
    assert (after == rules).mean() > 0.9 and (after[contacted] == rules[contacted]).mean() > 0.8


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"algo": "sarsa"}, "algo: unknown 'sarsa'"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"n_envs": -3}, "n_envs must be a positive integer"),
        ({"gamma": 1.5}, r"gamma must be in \(0, 1\]"),
        ({"gae_lambda": -0.1}, r"gae_lambda must be in \[0, 1\]"),
        ({"learning_rate": 0.0}, "learning_rate must be > 0"),
        ({"ent_coef": -1.0}, "ent_coef must be >= 0"),
        ({"net_arch": []}, "net_arch must list positive layer widths"),
        ({"validation_every": 0}, "validation_every must be a positive integer"),
        ({"optout_cost": -2.0}, "optout_cost must be >= 0"),
        ({"algo": "linucb", "warm_start": "rules"}, "a warm start needs algo 'ppo'"),
        ({"warm_start": "oracle"}, "warm_start"),
    ],
)
def test_bad_training_config_names_the_field(changes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        train(TrainConfig(**changes))


@pytest.mark.slow
def test_cli_train_then_evaluate_with_plots_and_json(tmp_path: Path, capsys) -> None:
    run = tmp_path / "ucb"
    argv = ["train", "--algo", "linucb", "--steps", str(100 * HORIZON), "--n-envs", "100"]
    assert main([*argv, "--out", str(run), "--no-progress"]) == 0
    assert (run / "bundle" / "manifest.json").is_file()
    assert (run / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            "--policies",
            "no_contact",
            "rules",
            "oracle",
            "--bundles",
            str(run),
            "--customers",
            "300",
            "--seeds",
            "2",
            "--seed-start",
            "1",
            "--json",
            str(out / "results.json"),
            "--plots",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    for name in ("no_contact", "rules", "linucb", "oracle"):
        assert f"| {name} |" in printed
    assert "share of oracle lift" in printed
    payload = json.loads((out / "results.json").read_text())
    assert payload["summary"]["oracle"]["share_of_reference_lift"] == pytest.approx(1.0)
    for name in ("policy_values", "value_by_segment", "value_by_stage", "action_mix"):
        assert (out / f"{name}.png").stat().st_size > 1000
    with (run / "learning_curve.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["env_steps", "value_per_customer"] and len(rows) >= 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "--policies", "magic"], "--policies: unknown ['magic']"),
        (["evaluate", "--bundles", "/nonexistent/run"], "/nonexistent/run"),
    ],
)
def test_evaluate_errors_are_one_clear_line(argv: list[str], message: str, capsys) -> None:
    assert main([*argv, "--customers", "50", "--seeds", "1"]) == 2
    assert message in capsys.readouterr().err


def test_train_cli_reports_a_bad_value_in_one_line(tmp_path: Path, capsys) -> None:
    argv = ["train", "--algo", "ppo", "--gamma", "1.5", "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    assert "train: gamma must be in (0, 1], got 1.5" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_evaluate_refuses_a_bundle_for_another_schema(tmp_path: Path, capsys) -> None:
    """A bundle whose scenario has other channels cannot be evaluated on the default one."""
    text = (Path(__file__).parents[1] / "simulator/scenarios/default.toml").read_text()
    start = text.index("[channels.call_centre]")
    end = text.index("[constraints]")
    small = tmp_path / "three_channels.toml"
    small.write_text((text[:start] + text[end:]).replace(", call_centre = 0.6 }", " }"))
    run = tmp_path / "run"
    config = TrainConfig(algo="egreedy", scenario=str(small), steps=50 * HORIZON, n_envs=50)
    config.validation_customers = 50
    train(config, run)
    assert main(["evaluate", "--bundles", str(run), "--customers", "50", "--seeds", "1"]) == 2
    assert "features or actions differ" in capsys.readouterr().err


def test_validation_value_is_the_fixed_population_value() -> None:
    config = TrainConfig(seed=2, validation_customers=300)
    first = validation_value(NoContactPolicy(SCENARIO), SCENARIO, config)
    assert first == validation_value(NoContactPolicy(SCENARIO), SCENARIO, config)
    other = validation_value(
        NoContactPolicy(SCENARIO), SCENARIO, TrainConfig(seed=3, validation_customers=300)
    )
    assert other != first


def test_optout_cost_is_charged_in_the_training_reward_only() -> None:
    from cvm_rl.policies.features import FeatureTransform
    from cvm_rl.training import ScaledObservations
    from simulator.sb3 import CustomerLifecycleSB3VecEnv

    transform = FeatureTransform.from_scenario(SCENARIO)
    plain = ScaledObservations(CustomerLifecycleSB3VecEnv(2_000, SCENARIO, seed=4), transform)
    charged = ScaledObservations(
        CustomerLifecycleSB3VecEnv(2_000, SCENARIO, seed=4), transform, optout_cost=5.0
    )
    plain.reset()
    charged.reset()
    rng = np.random.default_rng(0)
    opted = 0
    for _ in range(4):
        actions = rng.integers(0, SCENARIO.n_actions, size=2_000)
        _, r_plain, _, _ = plain.step(actions)
        _, r_charged, _, _ = charged.step(actions)
        out = charged.venv.last_info["opted_out"]
        opted += int(out.sum())
        np.testing.assert_allclose(r_charged, r_plain - 5.0 * out)
    assert opted > 10
