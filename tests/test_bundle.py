"""Torch-free MLP policies extracted from SB3 models, and model bundles on disk."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces
from sb3_contrib import MaskablePPO
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from cvm_rl.bundle import (
    ARRAYS_FILE,
    MANIFEST_FILE,
    BundleError,
    content_hash,
    feature_specs,
    load_bundle,
    register_policy_kind,
    save_bundle,
)
from cvm_rl.policies import (
    EpsilonGreedyPolicy,
    FeatureTransform,
    GreedyUpliftPolicy,
    LinTSPolicy,
    LinUCBPolicy,
    MLPPolicy,
    NoContactPolicy,
    Policy,
    RandomPolicy,
    Rule,
    RuleBasedPolicy,
)
from cvm_rl.training import train_bandit
from simulator.config import Scenario, load_scenario, scenario_from_mapping
from simulator.core import Population
from simulator.observation import observation_feature_names
from simulator.sb3 import CustomerLifecycleSB3VecEnv
from simulator.vector_env import CustomerLifecycleVectorEnv

SCENARIO = load_scenario("default")
N_FEATURES = len(observation_feature_names(SCENARIO))
N_ENVS = 64


class ScaledObservations(VecEnvWrapper):
    """Feeds SB3 ``FeatureTransform.scaled`` observations (training.py will own the real one)."""

    def __init__(self, venv: CustomerLifecycleSB3VecEnv) -> None:
        self.transform = FeatureTransform.from_scenario(venv.scenario)
        box = venv.observation_space
        assert isinstance(box, spaces.Box)
        low, high = self._scale(box.low), self._scale(box.high)
        super().__init__(venv, observation_space=spaces.Box(low, high, dtype=np.float32))

    def _scale(self, obs: np.ndarray) -> np.ndarray:
        return self.transform.scaled(np.atleast_2d(obs)).astype(np.float32).reshape(obs.shape)

    def reset(self) -> np.ndarray:
        return self._scale(np.asarray(self.venv.reset()))

    def step_wait(self) -> Any:
        obs, rewards, dones, infos = self.venv.step_wait()
        for info in infos:
            if "terminal_observation" in info:
                info["terminal_observation"] = self._scale(info["terminal_observation"])
        return self._scale(np.asarray(obs)), rewards, dones, infos

    def action_masks(self) -> np.ndarray:
        return self.venv.action_masks()  # type: ignore[attr-defined]


def make_env() -> ScaledObservations:
    return ScaledObservations(CustomerLifecycleSB3VecEnv(N_ENVS, SCENARIO, seed=0))


# Tiny budgets (a few hundred steps): enough to move the weights off their initialization.
MODELS: dict[str, Callable[[VecEnv], BaseAlgorithm]] = {
    "ppo": lambda env: PPO(
        "MlpPolicy", env, n_steps=4, batch_size=64, n_epochs=1, seed=0, device="cpu"
    ),
    "a2c": lambda env: A2C(
        "MlpPolicy",
        env,
        n_steps=2,
        seed=0,
        device="cpu",
        # Without orthogonal init (action head gain 0.01) the distribution is far from uniform.
        policy_kwargs={"net_arch": [32, 16], "activation_fn": torch.nn.ReLU, "ortho_init": False},
    ),
    "dqn": lambda env: DQN(
        "MlpPolicy",
        env,
        learning_starts=0,
        buffer_size=1_000,
        batch_size=32,
        seed=0,
        device="cpu",
        policy_kwargs={"net_arch": [32, 32]},
    ),
    # No hidden actor layer: the action head reads the features directly.
    "maskable_ppo": lambda env: MaskablePPO(
        "MlpPolicy",
        env,
        n_steps=4,
        batch_size=64,
        n_epochs=1,
        seed=0,
        device="cpu",
        policy_kwargs={"net_arch": {"pi": [], "vf": [16]}, "ortho_init": False},
    ),
}


@pytest.fixture(scope="module")
def trained() -> dict[str, BaseAlgorithm]:
    torch.set_num_threads(1)
    models = {}
    for name, build in MODELS.items():
        model = build(make_env())
        model.learn(total_timesteps=N_ENVS * 4)
        models[name] = model
    return models


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray]:
    """A few hundred real raw observations (several weeks in) and their action masks."""
    env = CustomerLifecycleVectorEnv(100, SCENARIO)
    obs, info = env.reset(seed=3)
    behaviour = RandomPolicy(SCENARIO, seed=1)
    observations, masks = [], []
    for _ in range(3):
        obs, _, _, _, info = env.step(behaviour.act(obs, info["action_mask"])[0])
        observations.append(obs)
        masks.append(info["action_mask"])
    return np.concatenate(observations), np.concatenate(masks)


def sb3_probs(model: BaseAlgorithm, obs: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
    x = torch.as_tensor(FeatureTransform.from_scenario(SCENARIO).scaled(obs), dtype=torch.float32)
    with torch.no_grad():
        if isinstance(model, MaskablePPO):
            dist = model.policy.get_distribution(x, action_masks=masks)
        else:
            dist = model.policy.get_distribution(x)
        return dist.distribution.probs.numpy().astype(np.float64)


@pytest.mark.parametrize("algo", ["ppo", "a2c", "maskable_ppo"])
def test_actor_matches_sb3_distribution(
    algo: str, trained: dict[str, BaseAlgorithm], batch: tuple[np.ndarray, np.ndarray]
) -> None:
    obs, masks = batch
    model = trained[algo]
    policy = MLPPolicy.from_sb3(model, SCENARIO)
    assert policy.name == algo and policy.head == "logits"
    everything = np.ones_like(masks)
    expected = sb3_probs(model, obs)
    got = policy.action_probabilities(obs, everything)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    if algo != "ppo":  # PPO's default init keeps it near uniform; the others must not be
        assert np.ptp(got, axis=1).min() > 0.01
    x = torch.as_tensor(FeatureTransform.from_scenario(SCENARIO).scaled(obs), dtype=torch.float32)
    with torch.no_grad():
        logits = model.policy.action_net(model.policy.mlp_extractor.policy_net(x)).numpy()
    np.testing.assert_allclose(policy.scores(obs), logits, rtol=1e-5, atol=1e-7)
    # Masked: ineligible actions get exactly zero, the rest is renormalized.
    masked = policy.action_probabilities(obs, masks)
    assert (masked[~masks] == 0).all()
    renormalized = expected * masks / (expected * masks).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(masked, renormalized, atol=1e-5)
    np.testing.assert_allclose(masked.sum(axis=1), 1.0, atol=1e-12)
    if isinstance(model, MaskablePPO):
        np.testing.assert_allclose(masked, sb3_probs(model, obs, masks), atol=1e-5)


def test_dqn_matches_sb3_greedy_action(
    trained: dict[str, BaseAlgorithm], batch: tuple[np.ndarray, np.ndarray]
) -> None:
    obs, masks = batch
    model = trained["dqn"]
    policy = MLPPolicy.from_sb3(model, SCENARIO)
    assert policy.head == "q_values" and policy.activation == "relu"
    x = torch.as_tensor(FeatureTransform.from_scenario(SCENARIO).scaled(obs), dtype=torch.float32)
    with torch.no_grad():
        q = model.policy.q_net(x).numpy()
    np.testing.assert_allclose(policy.scores(obs), q, atol=1e-5)
    probs = policy.action_probabilities(obs, np.ones_like(masks))
    np.testing.assert_array_equal(probs.argmax(axis=1), q.argmax(axis=1))
    np.testing.assert_array_equal(probs.max(axis=1), 1.0)
    # Masked: the best eligible Q-value wins.
    masked = policy.action_probabilities(obs, masks)
    np.testing.assert_array_equal(masked.argmax(axis=1), np.where(masks, q, -np.inf).argmax(axis=1))
    # Epsilon: uniform share over eligible actions only.
    explore = MLPPolicy(
        SCENARIO, policy.weights, policy.biases, activation="relu", head="q_values", epsilon=0.2
    ).action_probabilities(obs, masks)
    assert (explore[~masks] == 0).all()
    np.testing.assert_allclose(explore, 0.8 * masked + 0.2 * masks / masks.sum(1, keepdims=True))


def test_from_sb3_refuses_raw_observation_models_and_other_activations() -> None:
    raw = PPO(
        "MlpPolicy", CustomerLifecycleSB3VecEnv(4, SCENARIO), n_steps=2, batch_size=8, device="cpu"
    )
    with pytest.raises(ValueError, match="raw one"):
        MLPPolicy.from_sb3(raw, SCENARIO)
    elu = PPO("MlpPolicy", make_env(), device="cpu", policy_kwargs={"activation_fn": torch.nn.ELU})
    with pytest.raises(ValueError, match="unsupported layer 1 ELU"):
        MLPPolicy.from_sb3(elu, SCENARIO)
    # Same features (offers do not enter the observation), fewer actions.
    one_offer = scenario_from_mapping({**SCENARIO.model_dump(), "offers": {"none": {"uplift": 0}}})
    with pytest.raises(ValueError, match=r"action space must be Discrete\(5\)"):
        MLPPolicy.from_sb3(elu, one_offer)
    with pytest.raises(ValueError, match="expected a Stable-Baselines3 model"):
        MLPPolicy.from_sb3(object(), SCENARIO)


def _layers(*sizes: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    ws = [rng.normal(size=(a, b)) for a, b in itertools.pairwise(sizes)]
    return ws, [rng.normal(size=w.shape[1]) for w in ws]


def _net(*sizes: int) -> dict[str, list[np.ndarray]]:
    weights, biases = _layers(*sizes)
    return {"weights": weights, "biases": biases}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weights": [], "biases": []}, "weights must hold at least one"),
        ({"biases": [np.zeros(8)]}, "biases must have one vector per layer"),
        (
            _net(N_FEATURES - 1, 8, 25),
            rf"weights\[0\] must have shape \({N_FEATURES}, k\) to match the number of",
        ),
        (
            {"weights": [np.ones((N_FEATURES, 8)), np.ones((7, 25))]},
            r"weights\[1\] must have shape \(8, k\) to match weights\[0\]'s outputs",
        ),
        (_net(N_FEATURES, 8, 24), r"weights\[1\] must have 25 outputs"),
        ({"biases": [np.zeros(8), np.zeros(3)]}, r"biases\[1\] must have shape \(25,\)"),
        ({"activation": "gelu"}, "activation must be one of"),
        ({"head": "values"}, "head must be one of"),
        ({"temperature": 0.0}, "temperature must be finite and > 0"),
        ({"epsilon": 0.1}, "epsilon: only the 'q_values' head"),
        ({"head": "q_values", "temperature": 2.0}, "temperature: only the 'logits' head"),
        ({"head": "q_values", "epsilon": 1.5}, r"epsilon must be in \[0.0, 1.0\]"),
        ({"name": ""}, "name must be a non-empty string"),
    ],
)
def test_mlp_rejects_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    weights, biases = _layers(N_FEATURES, 8, 25)
    args = {"weights": weights, "biases": biases, **kwargs}
    with pytest.raises(ValueError, match=match):
        MLPPolicy(SCENARIO, **args)


def test_temperature_flattens_the_softmax(batch: tuple[np.ndarray, np.ndarray]) -> None:
    obs, masks = batch
    weights, biases = _layers(N_FEATURES, 8, 25)
    sharp = MLPPolicy(SCENARIO, weights, biases).action_probabilities(obs, masks)
    flat = MLPPolicy(SCENARIO, weights, biases, temperature=10.0).action_probabilities(obs, masks)
    assert (flat.max(axis=1) <= sharp.max(axis=1) + 1e-12).all()
    # Huge logits stay finite (softmax computed after subtracting the row max).
    big = MLPPolicy(SCENARIO, [w * 1e4 for w in weights], biases)
    probs = big.action_probabilities(obs, masks)
    assert np.isfinite(probs).all() and (probs[~masks] == 0).all()


def test_weights_layout_changes_no_bit(batch: tuple[np.ndarray, np.ndarray]) -> None:
    """SB3's weights arrive transposed (Fortran order), a bundle's in C order: the same
    numbers must give the same bits either way (BLAS kernels chosen by layout may sum in
    another order), or a loaded bundle's propensities would differ from its policy's."""
    obs, masks = batch
    weights, biases = _layers(N_FEATURES, 64, 64, 25)
    fortran = [np.asfortranarray(w) for w in weights]
    assert all(w.flags.f_contiguous and not w.flags.c_contiguous for w in fortran)
    c_order = MLPPolicy(SCENARIO, weights, biases)
    f_order = MLPPolicy(SCENARIO, fortran, biases)
    np.testing.assert_array_equal(f_order.scores(obs), c_order.scores(obs))
    np.testing.assert_array_equal(
        f_order.action_probabilities(obs, masks), c_order.action_probabilities(obs, masks)
    )


# --------------------------------------------------------------------------- bundles
def _bandit(cls: type[Any], **kwargs: Any) -> Policy:
    policy = cls(SCENARIO, seed=0, **kwargs)
    train_bandit(policy, SCENARIO, n_customers=200, weeks=3, seed=0)
    return policy


@pytest.fixture(scope="module")
def policies(trained: dict[str, BaseAlgorithm]) -> dict[str, Policy]:
    out: dict[str, Policy] = {algo: MLPPolicy.from_sb3(m, SCENARIO) for algo, m in trained.items()}
    out["linucb"] = _bandit(LinUCBPolicy, alpha=0.5)
    out["lints"] = _bandit(LinTSPolicy, v=0.3, n_propensity_samples=16)
    out["epsilon_greedy"] = _bandit(EpsilonGreedyPolicy, epsilon=0.2)
    out["no_contact"] = NoContactPolicy(SCENARIO)
    out["random"] = RandomPolicy(SCENARIO)
    out["rules"] = RuleBasedPolicy(
        SCENARIO,
        rules=[
            Rule(
                "at_risk", "discount_20", ("sms", "email"), when=("acquisition_source_coupon_site",)
            )
        ],
        min_weeks_between_contacts=2,
    )
    out["greedy"] = GreedyUpliftPolicy.fit_from_simulation(SCENARIO, n_customers=300, weeks=4)
    return out


@pytest.fixture(scope="module")
def bundles(policies: dict[str, Policy], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bundles")
    for algo, policy in policies.items():
        save_bundle(
            policy,
            root / algo,
            algo=algo,
            training_config={"steps": 256, "seed": 0, "net_arch": (64, 64)},
            metrics={"value": np.float64(1.5), "ci": [1.0, 2.0]},
        )
    return root


KINDS = {
    "ppo": "mlp",
    "a2c": "mlp",
    "dqn": "mlp",
    "maskable_ppo": "mlp",
    "linucb": "linear_bandit",
    "lints": "linear_bandit",
    "epsilon_greedy": "linear_bandit",
    "no_contact": "no_contact",
    "random": "random",
    "rules": "rules",
    "greedy": "greedy_uplift",
}


@pytest.mark.parametrize("algo", list(KINDS))
def test_bundle_round_trip(
    algo: str,
    policies: dict[str, Policy],
    bundles: Path,
    batch: tuple[np.ndarray, np.ndarray],
) -> None:
    obs, masks = batch
    original = policies[algo]
    bundle = load_bundle(bundles / algo, seed=7)
    assert type(bundle.policy) is type(original) and bundle.policy.name == original.name
    original.seed(7)
    np.testing.assert_array_equal(
        bundle.policy.action_probabilities(obs, masks), original.action_probabilities(obs, masks)
    )
    manifest = json.loads((bundles / algo / MANIFEST_FILE).read_text())
    assert bundle.manifest == manifest
    assert bundle.kind == manifest["kind"] == KINDS[algo] and bundle.algo == algo
    assert bundle.model_id == f"{algo}-{manifest['sha256'][:12]}" == manifest["model_id"]
    assert bundle.version == manifest["sha256"][:12]
    assert bundle.scenario == SCENARIO
    assert bundle.feature_names == original.feature_names
    assert bundle.action_names == SCENARIO.action_names()
    assert manifest["actions"][0] == {
        "index": 0,
        "name": "no_contact",
        "offer": None,
        "channel": None,
    }
    assert manifest["actions"][1]["offer"] == SCENARIO.offer_names[0]
    assert manifest["training_config"]["net_arch"] == [64, 64]
    assert manifest["metrics"] == {"value": 1.5, "ci": [1.0, 2.0]}
    assert manifest["cvm_rl_version"] and manifest["created_at"].endswith("+00:00")
    assert manifest["observation"]["features"] == feature_specs(SCENARIO)
    assert bundle.features_stored
    assert [f.model_dump() for f in bundle.features] == feature_specs(SCENARIO)


def test_same_content_same_version_and_overwrite(
    policies: dict[str, Policy], bundles: Path, tmp_path: Path
) -> None:
    again = save_bundle(
        policies["ppo"],
        tmp_path / "again",
        algo="ppo",
        training_config={"steps": 256, "seed": 0, "net_arch": (64, 64)},
        metrics={"value": np.float64(1.5), "ci": [1.0, 2.0]},
    )
    assert load_bundle(again).version == load_bundle(bundles / "ppo").version
    # Replacing a bundle in place gives the new content and leaves no temporary directory.
    save_bundle(policies["a2c"], again, algo="a2c", training_config={})
    assert load_bundle(again).algo == "a2c"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a bundle"):
        save_bundle(policies["a2c"], tmp_path / "data", algo="a2c", training_config={})


def test_a_failed_save_leaves_the_old_bundle(
    policies: dict[str, Policy], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = save_bundle(policies["dqn"], tmp_path / "model", algo="dqn", training_config={})
    before = (target / MANIFEST_FILE).read_text()

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk full")

    # Crash after both files are written, just before the rename.
    monkeypatch.setattr("cvm_rl.bundle._replace_dir", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_bundle(policies["ppo"], target, algo="ppo", training_config={})
    assert (target / MANIFEST_FILE).read_text() == before
    assert load_bundle(target).algo == "dqn"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # temp dir cleaned up


def test_load_bundle_without_torch(
    policies: dict[str, Policy],
    bundles: Path,
    batch: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    obs, masks = batch
    script = (
        "import sys, json\n"
        "for name in ('torch', 'stable_baselines3', 'sb3_contrib'):\n"
        "    sys.modules[name] = None\n"
        "import numpy as np\n"
        "from cvm_rl.bundle import load_bundle\n"
        "obs, masks = np.load(sys.argv[2]), np.load(sys.argv[3])\n"
        "out = {}\n"
        "for algo in sys.argv[4:]:\n"
        "    b = load_bundle(f'{sys.argv[1]}/{algo}')\n"
        "    out[algo] = b.policy.action_probabilities(obs, masks).tolist()\n"
        "assert not any(m.startswith(('torch', 'stable_baselines3')) for m in sys.modules\n"
        "               if sys.modules[m] is not None)\n"
        "print(json.dumps(out))\n"
    )
    np.save(tmp_path / "obs.npy", obs)
    np.save(tmp_path / "masks.npy", masks)
    algos = ["ppo", "dqn", "maskable_ppo", "linucb", "rules"]
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(bundles),
            str(tmp_path / "obs.npy"),
            str(tmp_path / "masks.npy"),
            *algos,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    for algo in algos:
        np.testing.assert_array_equal(
            np.array(out[algo]), policies[algo].action_probabilities(obs, masks), err_msg=algo
        )


# --------------------------------------------------------------------------- corruptions
def _edit_manifest(bundle: Path, edit: Callable[[dict[str, Any]], None], *, resign: bool) -> None:
    """Apply ``edit`` to the manifest; ``resign`` recomputes the hash so later checks run."""
    path = bundle / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    edit(manifest)
    if resign:
        with np.load(bundle / ARRAYS_FILE) as npz:
            arrays = {k: npz[k] for k in npz.files}
        digest = content_hash(manifest, arrays)
        manifest.update(sha256=digest, version=digest[:12], model_id=f"ppo-{digest[:12]}")
    path.write_text(json.dumps(manifest))


def _rewrite_arrays(bundle: Path, change: Callable[[dict[str, np.ndarray]], None]) -> None:
    with np.load(bundle / ARRAYS_FILE) as npz:
        arrays = {k: npz[k] for k in npz.files}
    change(arrays)
    np.savez(bundle / ARRAYS_FILE, **arrays)  # type: ignore[arg-type]


def _truncate(bundle: Path) -> None:
    data = (bundle / ARRAYS_FILE).read_bytes()
    (bundle / ARRAYS_FILE).write_bytes(data[: len(data) // 2])


def _bump_weight(arrays: dict[str, np.ndarray]) -> None:
    arrays["weight_0"][0, 0] += 1.0


def _drop_bias(arrays: dict[str, np.ndarray]) -> None:
    arrays["bias_0"] = arrays["bias_0"][:-1]


def _shrink_listed_shape(m: dict[str, Any]) -> None:
    m["arrays"]["weight_0"]["shape"] = [N_FEATURES, 63]


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda m: m.__setitem__(key, value)


def _extra_channel(m: dict[str, Any]) -> None:
    m["scenario"]["channels"]["mail"] = dict(m["scenario"]["channels"]["sms"])


def _reorder_actions(m: dict[str, Any]) -> None:
    m["actions"][1]["name"] = "bogus"


def _change_scale(m: dict[str, Any]) -> None:
    m["observation"]["transform"]["scale"][0] = 2.0


def _widen_a_range(m: dict[str, Any]) -> None:
    m["observation"]["features"][6]["max"] = 2.0


def _bad_scenario(m: dict[str, Any]) -> None:
    m["scenario"]["margin_rate"] = 2.0


def _bad_layers(m: dict[str, Any]) -> None:
    m["policy_config"]["n_layers"] = 4


CORRUPTIONS: list[tuple[str, Callable[[Path], None], str]] = [
    ("no manifest", lambda b: (b / MANIFEST_FILE).unlink(), "manifest.json: missing"),
    ("no arrays", lambda b: (b / ARRAYS_FILE).unlink(), "arrays.npz: missing"),
    ("truncated arrays", _truncate, "arrays.npz: unreadable"),
    ("invalid json", lambda b: (b / MANIFEST_FILE).write_text("{"), "invalid JSON"),
    ("changed weight", lambda b: _rewrite_arrays(b, _bump_weight), "content hash mismatch"),
    ("edited value", lambda b: _edit_manifest(b, _set("algo", "a2c"), resign=False), "hash"),
    (
        "edited hash",
        lambda b: _edit_manifest(b, _set("sha256", "0" * 64), resign=False),
        "content hash mismatch",
    ),
    (
        "stale version",
        lambda b: _edit_manifest(b, _set("version", "x"), resign=False),
        "version/model_id 'x'/'ppo-",
    ),
    (
        "format version",
        lambda b: _edit_manifest(b, _set("format_version", 99), resign=False),
        "unknown format_version 99",
    ),
    (
        "unknown kind",
        lambda b: _edit_manifest(b, _set("kind", "xgboost"), resign=False),
        "unknown kind 'xgboost'",
    ),
    (
        "missing key",
        lambda b: _edit_manifest(b, lambda m: m.pop("scenario"), resign=False),
        "missing key 'scenario'",
    ),
    ("array shape", lambda b: _rewrite_arrays(b, _drop_bias), r"array 'bias_0' has shape \[63\]"),
    (
        "listed shape",
        lambda b: _edit_manifest(b, _shrink_listed_shape, resign=True),
        rf"array 'weight_0' has shape \[{N_FEATURES}, 64\]",
    ),
    (
        "feature schema",
        lambda b: _edit_manifest(b, _extra_channel, resign=True),
        "observation schema does not match the bundled scenario",
    ),
    (
        "transform",
        lambda b: _edit_manifest(b, _change_scale, resign=True),
        r"transform.scale differs",
    ),
    (
        "feature range",
        lambda b: _edit_manifest(b, _widen_a_range, resign=True),
        r"features: names or ranges differ",
    ),
    (
        "action catalog",
        lambda b: _edit_manifest(b, _reorder_actions, resign=True),
        "action catalog does not match",
    ),
    ("invalid scenario", lambda b: _edit_manifest(b, _bad_scenario, resign=True), "margin_rate"),
    (
        "inconsistent config",
        lambda b: _edit_manifest(b, _bad_layers, resign=True),
        "cannot rebuild the 'mlp' policy: state: missing arrays",
    ),
]


@pytest.mark.parametrize(
    ("label", "corrupt", "match"), CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS]
)
def test_corrupted_bundles_are_refused(
    label: str, corrupt: Callable[[Path], None], match: str, bundles: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "ppo"
    shutil.copytree(bundles / "ppo", bundle)
    load_bundle(bundle)  # intact copy loads
    corrupt(bundle)
    with pytest.raises(BundleError, match=match):
        load_bundle(bundle)


def test_a_bundle_without_feature_metadata_derives_it_from_its_scenario(
    bundles: Path, tmp_path: Path
) -> None:
    """Bundles saved before the manifest held the features' meanings and ranges still load;
    their features come from their recorded scenario."""
    bundle = tmp_path / "ppo"
    shutil.copytree(bundles / "ppo", bundle)
    _edit_manifest(bundle, lambda m: m["observation"].pop("features"), resign=True)
    loaded = load_bundle(bundle)
    assert not loaded.features_stored
    assert [f.model_dump() for f in loaded.features] == feature_specs(SCENARIO)


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="bundle directory does not exist"):
        load_bundle(tmp_path / "nowhere")
    (tmp_path / "file").write_text("")
    with pytest.raises(BundleError, match="expected a directory"):
        load_bundle(tmp_path / "file")


class _Unregistered(Policy):
    def _probabilities(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return mask / mask.sum(axis=1, keepdims=True)


def test_save_bundle_rejects_bad_input(policies: dict[str, Policy], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="policy: _Unregistered cannot be bundled; supported"):
        save_bundle(_Unregistered(SCENARIO), tmp_path / "x", algo="x", training_config={})
    raw = LinUCBPolicy(None, n_features=3, n_actions=2)
    with pytest.raises(ValueError, match="policy: LinUCBPolicy has no scenario"):
        save_bundle(raw, tmp_path / "x", algo="linucb", training_config={})
    with pytest.raises(ValueError, match="algo must be a non-empty name"):
        save_bundle(policies["ppo"], tmp_path / "x", algo="p p o", training_config={})
    with pytest.raises(ValueError, match=r"metrics.value: must be a finite number"):
        save_bundle(
            policies["ppo"],
            tmp_path / "x",
            algo="ppo",
            training_config={},
            metrics={"value": float("nan")},
        )
    with pytest.raises(ValueError, match=r"training_config.env: object is not JSON"):
        save_bundle(policies["ppo"], tmp_path / "x", algo="ppo", training_config={"env": object()})
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_new_policy_kind_is_one_registration(tmp_path: Path) -> None:
    class Constant(Policy):
        name = "constant"

        def __init__(self, scenario: Scenario, *, action: int = 1, seed: int | None = None):
            super().__init__(scenario, seed=seed)
            self.action = action

        def _probabilities(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
            probs = np.zeros(mask.shape)
            probs[:, self.action] = 1.0
            return probs

        def state_dict(self) -> dict[str, Any]:
            return {"action": self.action, "table": np.arange(3)}

        @classmethod
        def from_state_dict(
            cls, state: dict[str, Any], scenario: Scenario, *, seed: int | None = None
        ) -> Constant:
            assert state["table"].tolist() == [0, 1, 2]
            return cls(scenario, action=state["action"], seed=seed)

    from cvm_rl import bundle as bundle_module

    register_policy_kind("test_constant", Constant)
    try:
        saved = save_bundle(
            Constant(SCENARIO, action=3), tmp_path / "c", algo="c", training_config={}
        )
        loaded = load_bundle(saved).policy
        assert isinstance(loaded, Constant) and loaded.action == 3
        with pytest.raises(ValueError, match="already registered"):
            register_policy_kind("test_constant", Constant)
    finally:
        del bundle_module.POLICY_KINDS["test_constant"]


def test_a_bundle_saved_before_segments_became_latent_still_loads(tmp_path: Path) -> None:
    """Older manifests have no ``segment_observed`` or ``attributes`` and rules with a
    ``segment``: their policies saw the segment label, so they load with it observed."""
    observed = SCENARIO.with_overrides({"attributes": {}, "segment_observed": True})
    rules = RuleBasedPolicy(
        observed, rules=[Rule("at_risk", "discount_20", ("sms",), when=("segment_deal_seekers",))]
    )
    path = save_bundle(rules, tmp_path / "old", algo="rules", training_config={})

    def as_before(m: dict[str, Any]) -> None:
        del m["scenario"]["segment_observed"], m["scenario"]["attributes"]
        (rule,) = m["policy_config"]["rules"]
        del rule["when"]
        rule["segment"] = "deal_seekers"

    manifest = json.loads((path / MANIFEST_FILE).read_text())
    as_before(manifest)
    with np.load(path / ARRAYS_FILE) as npz:
        digest = content_hash(manifest, {k: npz[k] for k in npz.files})
    manifest.update(sha256=digest, version=digest[:12], model_id=f"rules-{digest[:12]}")
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))

    bundle = load_bundle(path)
    assert bundle.scenario.segment_observed
    assert isinstance(bundle.policy, RuleBasedPolicy)
    assert bundle.policy.rules[0].when == ("segment_deal_seekers",)
    pop = Population.create(observed, 2000, np.random.default_rng(0))
    obs, mask = pop.observe(), pop.action_mask()
    np.testing.assert_array_equal(
        bundle.policy.action_probabilities(obs, mask), rules.action_probabilities(obs, mask)
    )
