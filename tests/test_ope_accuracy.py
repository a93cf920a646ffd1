"""Smoke test of experiments/ope_accuracy.py: its simulated truths are the runs they claim to
be, and the whole pipeline (truths, every estimator, summaries, JSON and Markdown) runs at a
tiny size with cheap untrained policies."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from cvm_rl.evaluation import run_episode
from cvm_rl.ope.trajectories import Trajectories
from cvm_rl.policies import (
    EpsilonMixturePolicy,
    LinUCBPolicy,
    MLPPolicy,
    NoContactPolicy,
    RuleBasedPolicy,
)
from cvm_rl.training import train_bandit
from simulator.config import load_scenario

SCENARIO = load_scenario("default")
SCRIPT = Path(__file__).parents[1] / "experiments" / "ope_accuracy.py"


@pytest.fixture(scope="module")
def experiment() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ope_accuracy", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ope_accuracy"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def _random_mlp(temperature: float, name: str) -> MLPPolicy:
    rng = np.random.default_rng(7)
    n_features = len(RuleBasedPolicy(SCENARIO).feature_names)
    return MLPPolicy(
        SCENARIO,
        [rng.normal(size=(n_features, 8)), rng.normal(size=(8, SCENARIO.n_actions))],
        [np.zeros(8), np.zeros(SCENARIO.n_actions)],
        temperature=temperature,
        name=name,
    )


def test_logging_reproduces_from_rollout(experiment: ModuleType) -> None:
    logger = EpsilonMixturePolicy(SCENARIO, RuleBasedPolicy(SCENARIO), 0.3)
    logged = experiment.log_with_single_step_truth(
        logger,
        [NoContactPolicy(SCENARIO), RuleBasedPolicy(SCENARIO)],
        SCENARIO,
        n_customers=40,
        seed=5,
        replicates=3,
        stream=0,
        weeks=6,
    )
    # Copying and stepping the population for the truth must not disturb the log.
    reference = Trajectories.from_rollout(logger, SCENARIO, n_customers=40, seed=5, weeks=6)
    for name in ("obs", "mask", "action", "pscore", "reward", "logging_probabilities"):
        np.testing.assert_array_equal(
            getattr(logged.trajectories, name), getattr(reference, name), err_msg=name
        )
    for truth in logged.single_step_truth.values():
        assert truth.replicates == 3
        assert math.isfinite(truth.value) and truth.standard_error > 0


def test_long_run_replicate_zero_is_run_episode(experiment: ModuleType) -> None:
    policy = EpsilonMixturePolicy(SCENARIO, RuleBasedPolicy(SCENARIO), 0.2)
    values = experiment.long_run_values(policy, SCENARIO, n_customers=50, seed=11, replicates=3)
    assert values.shape == (50, 3)
    assert values[:, 0].mean() == pytest.approx(run_episode(policy, SCENARIO, 50, 11)["value"])
    # Same customers, redrawn dynamics: the replicates differ.
    assert not np.allclose(values[:, 0], values[:, 1])
    truth = experiment.long_run_truth(values)
    assert truth.value == pytest.approx(values.mean()) and truth.standard_error > 0


def test_pipeline_at_a_tiny_size(experiment: ModuleType, tmp_path: Path) -> None:
    linucb = LinUCBPolicy(SCENARIO, seed=100)
    train_bandit(linucb, SCENARIO, n_customers=100, weeks=3, seed=100)
    policies = experiment.PolicySet(
        loggers=[
            EpsilonMixturePolicy(SCENARIO, RuleBasedPolicy(SCENARIO), 0.3),
            _random_mlp(2.0, "mlp@T2"),
        ],
        targets=[linucb, RuleBasedPolicy(SCENARIO), NoContactPolicy(SCENARIO)],
        provenance={"mlp@T2": "random weights"},
    )
    args = experiment.Args(
        customers=[20, 40],
        seeds=2,
        weeks=3,
        single_step_replicates=2,
        truth_replicates=2,
        reference_customers=30,
        reference_seeds=2,
        n_bootstrap=20,
        workers=1,
        out=tmp_path,
    )
    payload = experiment.run(args, policies)

    name = args.run_name
    assert name.startswith("ope_accuracy__")
    stored = json.loads((tmp_path / f"{name}.json").read_text(), parse_constant=_refuse)
    assert len(stored["records"]) == 4 and stored["decisions"] == [60, 120]
    markdown = (tmp_path / f"{name}.md").read_text()
    for heading in ("## Truths", "## Selection regret", "## Error and coverage by target"):
        assert heading in markdown
    summary = payload["summary"]
    for logger in ("rules+eps0.3", "mlp@T2"):
        for kind, names in experiment.ESTIMATOR_NAMES.items():
            block = summary[logger][kind]["120"]
            assert set(block["errors"]) == set(names)
            for cells in block["errors"].values():
                for cell in cells.values():
                    assert 0.0 <= cell["coverage"] <= 1.0
            for picks in block["selection"].values():
                assert picks["estimate"]["mean_regret"] >= 0
                for rho in picks["estimate"]["per_seed_rank_correlation"]:
                    assert -1.0 <= rho <= 1.0
    # A finished run's summaries are rewritten from its JSON alone, to the same numbers.
    again = experiment.summarize_again(tmp_path / f"{name}.json", tmp_path / "again")
    assert json.dumps(experiment._jsonable(again["summary"]), sort_keys=True) == json.dumps(
        stored["summary"], sort_keys=True
    )
    assert (tmp_path / "again" / f"{name}.md").read_text() == markdown
    record = payload["records"][0]
    # Long-run truths are shared by the loggers (same customers): one per target.
    assert set(record["long_run_truth"]) == {"linucb", "rules", "no_contact"}
    for logger in record["loggers"].values():
        for target in logger["targets"].values():
            assert set(target["single_step"]) == set(experiment.SINGLE_STEP_NAMES)
            assert set(target["long_run"]) == set(experiment.ESTIMATOR_NAMES["long_run"])


def test_switch_and_shrinkage_are_not_plain_dr(experiment: ModuleType) -> None:
    tuned = {e.estimator_name: e for e in experiment.single_step_estimators()}
    assert math.isfinite(tuned["switch-dr"].tau)
    assert math.isfinite(tuned["dr-os"].lambda_)


def test_evaluation_seeds_never_training_seeds(experiment: ModuleType) -> None:
    args = experiment.Args()
    jobs = experiment.make_jobs(args, experiment.PolicySet([], [], {}))
    eval_seeds = {job.seed for job in jobs}
    assert len(eval_seeds) == len(args.customers) * args.seeds
    training = {args.logger_train_seed, args.target_train_seed, *args.bandit_train_seeds}
    validation = {10_000 + args.logger_train_seed, 10_000 + args.target_train_seed}
    reference = {experiment.REFERENCE_SEED_BASE + k for k in range(args.reference_seeds)}
    assert not eval_seeds & (training | validation | reference)


def _refuse(constant: str) -> float:
    raise ValueError(f"non-standard JSON constant {constant}")
