"""Smoke test of experiments/robustness.py: every lever's ends are valid worlds that differ
from the default where they should, and the study runs end to end at a tiny size."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from cvm_rl.bundle import save_bundle
from cvm_rl.policies import MLPPolicy, RuleBasedPolicy
from simulator.config import load_scenario

SCENARIO = load_scenario("default")
EXPERIMENTS = Path(__file__).parents[1] / "experiments"


@pytest.fixture(scope="module")
def experiment() -> ModuleType:
    sys.path.insert(0, str(EXPERIMENTS))  # it imports bandit_vs_rl's run layout
    spec = importlib.util.spec_from_file_location("robustness", EXPERIMENTS / "robustness.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["robustness"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_every_lever_end_is_a_valid_world_that_moves_its_lever(experiment: ModuleType) -> None:
    levers = experiment.levers(SCENARIO)
    assert len(levers) == 12
    worlds = experiment.worlds(SCENARIO)
    assert worlds["default"] is SCENARIO
    for lever in levers:
        for end in (lever.low, lever.high):
            label = experiment.world_label(lever, end)
            world = worlds[label]
            if end[1]:
                assert world.model_dump() != SCENARIO.model_dump(), label
            shares = [segment.share for segment in world.segments.values()]
            assert sum(shares) == pytest.approx(1.0)
    channels = worlds["contact response: email 6.52 (relative match)"].channels
    assert channels["email"].response == pytest.approx(6.52)
    ratio = SCENARIO.channels["sms"].response / SCENARIO.channels["email"].response
    assert channels["sms"].response == pytest.approx(6.52 * ratio)
    dogs = worlds["sleeping-dog share: 20 %"].segments
    assert dogs["sleeping_dogs"].share == pytest.approx(0.20)
    assert dogs["mainstream"].share == pytest.approx(SCENARIO.segments["mainstream"].share - 0.1)
    base_only = worlds["dropout on offer-induced purchases: base purchases only"]
    assert base_only.purchase.dropout_on == "base_purchases"


def test_the_study_runs_end_to_end_at_a_tiny_size(experiment: ModuleType, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n_features = len(RuleBasedPolicy(SCENARIO).feature_names)
    mlp = MLPPolicy(
        SCENARIO,
        [rng.normal(size=(n_features, 8)), rng.normal(size=(8, SCENARIO.n_actions))],
        [np.zeros(8), np.zeros(SCENARIO.n_actions)],
        name="mlp",
    )
    bundle = save_bundle(mlp, tmp_path / "mlp" / "bundle", algo="ppo", training_config={})
    args = experiment.Args(
        bundles=[bundle.parent], seeds=2, eval_customers=40, greedy_customers=200, out=tmp_path
    )
    payload = experiment.run(args)
    worlds = payload["worlds"]
    assert len(worlds) == 1 + 23  # the default, and both ends of every lever but one
    markdown = (tmp_path / f"{args.run_name}.md").read_text()
    for world in worlds:
        assert f"| {world} |" in markdown  # one row per world in the lift and rank tables
    assert (tmp_path / args.run_name / "tornado.png").stat().st_size > 0
    stored = json.loads((tmp_path / f"{args.run_name}.json").read_text())
    assert stored["eval_seeds"] == [1000, 1001]
