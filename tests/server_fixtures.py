"""Bundles, feature samples and log look-ups shared by the decision-server tests.

Importable from the test modules (pytest puts ``tests/`` on the path); each module wraps
:func:`make_bundles` in its own session fixture.
"""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvm_rl.bundle import ARRAYS_FILE, MANIFEST_FILE, load_bundle, save_bundle
from cvm_rl.logs.store import DecisionLog
from cvm_rl.policies import RuleBasedPolicy
from cvm_rl.policies.mlp import MLPPolicy
from simulator.config import Scenario, load_scenario
from simulator.core import observation_feature_names

HIDDEN_UNITS = 16
# Spread of the random weights: wide enough that the served distributions are far from
# uniform and far from one-hot, so frequency and formula checks have something to bite on.
WEIGHT_SCALE = 0.5


@dataclass(frozen=True)
class Bundles:
    """Bundle directories: two different random MLPs and the rule-based calendar."""

    mlp: Path
    mlp2: Path
    rules: Path


def random_mlp(scenario: Scenario, seed: int) -> MLPPolicy:
    """A one-hidden-layer logits MLP with random weights (a valid serving policy)."""
    rng = np.random.default_rng(seed)
    sizes = [len(observation_feature_names(scenario)), HIDDEN_UNITS, scenario.n_actions]
    weights = [
        rng.normal(0.0, WEIGHT_SCALE, (n_in, n_out)).astype(np.float32)
        for n_in, n_out in itertools.pairwise(sizes)
    ]
    biases = [np.zeros(n, dtype=np.float32) for n in sizes[1:]]
    return MLPPolicy(scenario, weights, biases)


def make_bundles(root: Path) -> Bundles:
    """Save the three test bundles under ``root``."""
    scenario = load_scenario("default")
    return Bundles(
        mlp=save_bundle(random_mlp(scenario, 0), root / "mlp", algo="test", training_config={}),
        mlp2=save_bundle(random_mlp(scenario, 1), root / "mlp2", algo="test", training_config={}),
        rules=save_bundle(
            RuleBasedPolicy(scenario), root / "rules", algo="rules", training_config={}
        ),
    )


def sample_features(bundle: Path, n: int, seed: int) -> np.ndarray:
    """(n, F) float32 raw features inside the bundle's schema bounds (ranges capped at 20 so
    that counts and amounts stay in the region a policy distinguishes)."""
    transform = load_bundle(bundle).manifest["observation"]["transform"]
    low = np.asarray(transform["low"], dtype=np.float64)
    high = np.minimum(np.asarray(transform["high"], dtype=np.float64), low + 20.0)
    rng = np.random.default_rng(seed)
    return (low + rng.random((n, len(low))) * (high - low)).astype(np.float32)


def log_counts(path: Path) -> tuple[int, int]:
    """(decisions, outcomes) rows in the decision log at ``path``."""
    with DecisionLog(path) as decision_log:
        return decision_log.count("decisions"), decision_log.count("outcomes")


def corrupt_arrays(src: Path, dst: Path) -> Path:
    """A copy of bundle ``src`` at ``dst`` with bytes flipped in the middle of its arrays."""
    shutil.copytree(src, dst)
    arrays = dst / ARRAYS_FILE
    data = bytearray(arrays.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + 8):
        data[i] ^= 0xFF
    arrays.write_bytes(bytes(data))
    return dst


def edit_manifest(src: Path, dst: Path) -> Path:
    """A copy of bundle ``src`` at ``dst`` whose manifest was edited after hashing."""
    shutil.copytree(src, dst)
    manifest_path = dst / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["metrics"] = {**manifest["metrics"], "tampered": 1.0}
    manifest_path.write_text(json.dumps(manifest))
    return dst
