"""The features' meanings and ranges: the simulator's observations stay inside the declared
ranges, the decision service accepts them and refuses values outside, and the README's table
is the schema's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from server_fixtures import random_mlp

from cvm_rl.bundle import feature_specs, load_bundle, save_bundle
from cvm_rl.feature_docs import BEGIN, END, feature_table
from server.config import Exploration
from server.errors import RequestError
from server.generated.cvm.v1 import decision_pb2 as pb
from server.model import ServingModel
from server.parsing import parse_batch
from simulator import CustomerLifecycleVectorEnv, observation_features
from simulator.config import load_scenario

README = Path(__file__).resolve().parents[1] / "README.md"


def test_simulated_observations_stay_inside_the_declared_ranges(tmp_path: Path) -> None:
    """A full episode with random eligible actions: every observation inside [min, max],
    and the decision service's request check accepts every row."""
    scenario = load_scenario("default")
    env = CustomerLifecycleVectorEnv(500, scenario)
    specs = feature_specs(scenario)
    low = np.array([f["min"] for f in specs], dtype=np.float32)
    high = np.array([f["max"] for f in specs], dtype=np.float32)
    bundle = save_bundle(random_mlp(scenario, 0), tmp_path / "b", algo="t", training_config={})
    model = ServingModel(load_bundle(bundle), Exploration(mode="policy", param=0.0))
    rng = np.random.default_rng(0)
    obs, info = env.reset(seed=3)
    weeks = 0
    while True:
        assert obs.dtype == np.float32
        outside = (obs < low) | (obs > high)
        assert not outside.any(), [specs[j]["name"] for j in np.flatnonzero(outside.any(0))]
        request = pb.DecideBatchRequest(
            customer_ids=[f"c{i}" for i in range(len(obs))],
            features=obs.ravel().tolist(),
            n_features=obs.shape[1],
        )
        parse_batch(model, request, max_rows=len(obs))
        if weeks == scenario.horizon_weeks:
            break
        mask = info["action_mask"]
        actions = np.array([rng.choice(np.flatnonzero(row)) for row in mask])
        obs, _, _, truncated, info = env.step(actions)
        weeks += 1
    assert weeks == scenario.horizon_weeks == 52 and truncated.all()


def test_feature_specs_follow_the_observation_schema() -> None:
    scenario = load_scenario("default")
    specs = feature_specs(scenario)
    features = observation_features(scenario)
    assert [s["name"] for s in specs] == [f.name for f in features]
    assert [(s["min"], s["max"]) for s in specs] == [(f.low, f.high) for f in features]
    for spec in specs:
        assert spec["description"] and spec["encoding"], spec["name"]
    encodings = {s["name"]: s["encoding"] for s in specs}
    assert encodings["recency_weeks"] == "count, log-scaled"
    assert encodings["stage_new"] == "one-hot"
    assert encodings["week_of_year_sin"] == "sin"


def test_an_out_of_range_row_is_refused_naming_row_feature_range_and_value(
    tmp_path: Path,
) -> None:
    scenario = load_scenario("default")
    bundle = save_bundle(random_mlp(scenario, 0), tmp_path / "b", algo="t", training_config={})
    model = ServingModel(load_bundle(bundle), Exploration(mode="policy", param=0.0))
    rows = np.repeat(model.feature_min[None, :], 3, axis=0)
    rows[2, model.feature_index["opt_in_sms"]] = 2.0
    request = pb.DecideBatchRequest(
        customer_ids=["a", "b", "c"], features=rows.ravel().tolist(), n_features=rows.shape[1]
    )
    with pytest.raises(
        RequestError,
        match=r"^features: row 2, feature 'opt_in_sms' must be in "
        r"\[0, 1\] \(1 if the customer .*\), got 2$",
    ):
        parse_batch(model, request, max_rows=10)


def test_the_readme_table_is_the_schemas() -> None:
    text = README.read_text(encoding="utf-8")
    start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
    assert text[start:stop].strip() == feature_table(load_scenario("default")), (
        "README feature table is stale: run python -m cvm_rl.feature_docs README.md"
    )
