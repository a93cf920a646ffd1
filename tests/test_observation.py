"""The observation schema (``simulator.observation``) and everything derived from it."""

from __future__ import annotations

import numpy as np
import pytest

from cvm_rl.policies.features import FeatureTransform
from simulator.config import STAGES, Scenario, scenario_from_mapping
from simulator.core import Population
from simulator.observation import (
    ObservationLayout,
    observation_feature_names,
    observation_features,
)
from simulator.spaces import observation_space

# (name, low, high, heavy_tailed) of the default scenario, pinned: changing the schema changes
# what every saved policy and bundle was trained on, so it must be a deliberate edit here.
DEFAULT_SCHEMA = [
    ("recency_weeks", 0.0, 520.0, True),
    ("frequency", 0.0, 100_000.0, True),
    ("monetary_avg", 0.0, 1e7, True),
    ("tenure_weeks", 0.0, 520.0, True),
    ("weeks_since_contact_email", 0.0, 52.0, True),
    ("contacts_in_window_email", 0.0, 4.0, False),
    ("opt_in_email", 0.0, 1.0, False),
    ("weeks_since_contact_sms", 0.0, 52.0, True),
    ("contacts_in_window_sms", 0.0, 4.0, False),
    ("opt_in_sms", 0.0, 1.0, False),
    ("weeks_since_contact_push", 0.0, 52.0, True),
    ("contacts_in_window_push", 0.0, 4.0, False),
    ("opt_in_push", 0.0, 1.0, False),
    ("weeks_since_contact_call_centre", 0.0, 52.0, True),
    ("contacts_in_window_call_centre", 0.0, 4.0, False),
    ("opt_in_call_centre", 0.0, 1.0, False),
    ("stage_prospect", 0.0, 1.0, False),
    ("stage_new", 0.0, 1.0, False),
    ("stage_active", 0.0, 1.0, False),
    ("stage_at_risk", 0.0, 1.0, False),
    ("stage_lapsed", 0.0, 1.0, False),
    ("stage_churned", 0.0, 1.0, False),
    ("stage_reactivated", 0.0, 1.0, False),
    ("segment_loyalists", 0.0, 1.0, False),
    ("segment_mainstream", 0.0, 1.0, False),
    ("segment_deal_seekers", 0.0, 1.0, False),
    ("segment_sleeping_dogs", 0.0, 1.0, False),
    ("week_of_year_sin", -1.0, 1.0, False),
    ("week_of_year_cos", -1.0, 1.0, False),
    ("horizon_progress", 0.0, 1.0, False),
]


def _one_channel_scenario(default_data: dict) -> Scenario:
    """The default scenario with email only: every per-channel group has a single member."""
    data = dict(default_data)
    data["channels"] = {"email": default_data["channels"]["email"]}
    data["segments"] = {
        name: {
            **seg,
            "channel_affinity": {
                c: x for c, x in seg.get("channel_affinity", {}).items() if c == "email"
            },
        }
        for name, seg in default_data["segments"].items()
    }
    return scenario_from_mapping(data)


def test_default_schema_is_pinned(default_scenario: Scenario) -> None:
    features = observation_features(default_scenario)
    assert [(f.name, f.low, f.high, f.heavy_tailed) for f in features] == DEFAULT_SCHEMA
    assert observation_feature_names(default_scenario) == [row[0] for row in DEFAULT_SCHEMA]


def test_space_and_transform_are_read_from_the_schema(default_scenario: Scenario) -> None:
    low = np.array([row[1] for row in DEFAULT_SCHEMA])
    high = np.array([row[2] for row in DEFAULT_SCHEMA])
    heavy_tailed = np.array([row[3] for row in DEFAULT_SCHEMA])
    space = observation_space(default_scenario)
    assert space.dtype == np.float32
    assert space.low.dtype == space.high.dtype == np.float32
    np.testing.assert_array_equal(space.low, low.astype(np.float32))
    np.testing.assert_array_equal(space.high, high.astype(np.float32))
    transform = FeatureTransform.from_scenario(default_scenario)
    np.testing.assert_array_equal(transform.low, low)
    np.testing.assert_array_equal(transform.high, high)
    np.testing.assert_array_equal(transform.log, heavy_tailed)


@pytest.mark.parametrize("which", ["default", "one_channel"])
def test_layout_covers_every_column_once_in_schema_order(
    default_scenario: Scenario, default_data: dict, which: str
) -> None:
    sc = default_scenario if which == "default" else _one_channel_scenario(default_data)
    layout = ObservationLayout.from_scenario(sc)
    assert layout.width == len(observation_features(sc))
    # Each group writes its own column numbers: the result reads 0..D-1 only if the groups
    # partition the columns and members land in schema order.
    columns = np.arange(layout.width)
    obs = layout.assemble(2, {group: columns[cols] for group, cols in layout.columns.items()})
    np.testing.assert_array_equal(obs, np.tile(columns, (2, 1)))


def test_assemble_rejects_values_that_do_not_match_the_schema(default_scenario: Scenario) -> None:
    layout = ObservationLayout.from_scenario(default_scenario)
    values: dict[str, np.ndarray | float] = dict.fromkeys(layout.columns, 0.0)
    del values["frequency"]
    with pytest.raises(ValueError, match=r"missing \['frequency'\], unknown \[\]"):
        layout.assemble(3, values)
    with pytest.raises(ValueError, match=r"missing \[\], unknown \['loyalty_points'\]"):
        layout.assemble(3, {**values, "frequency": 0.0, "loyalty_points": 0.0})
    with pytest.raises(ValueError):  # one column per channel, not a per-channel quantity more
        layout.assemble(3, {**values, "frequency": 0.0, "opt_in": np.zeros((3, 5))})


@pytest.mark.parametrize("which", ["default", "one_channel"])
def test_observe_reads_each_feature_from_its_state(
    default_scenario: Scenario, default_data: dict, which: str
) -> None:
    sc = default_scenario if which == "default" else _one_channel_scenario(default_data)
    rng = np.random.default_rng(0)
    pop = Population.create(sc, 300, rng)
    for _ in range(5):
        pop.step(rng.integers(0, sc.n_actions, size=pop.n))
    obs = pop.observe()
    col = {name: i for i, name in enumerate(observation_feature_names(sc))}
    np.testing.assert_array_equal(obs[:, col["recency_weeks"]], pop.recency)
    np.testing.assert_array_equal(obs[:, col["tenure_weeks"]], pop.tenure)
    np.testing.assert_array_equal(obs[:, col["frequency"]], pop.n_repeat)
    for i, ch in enumerate(sc.channels):
        np.testing.assert_array_equal(
            obs[:, col[f"weeks_since_contact_{ch}"]], pop.weeks_since_contact[:, i]
        )
        np.testing.assert_array_equal(
            obs[:, col[f"contacts_in_window_{ch}"]], pop.window_counts[:, i]
        )
        np.testing.assert_array_equal(obs[:, col[f"opt_in_{ch}"]], pop.opt_in[:, i])
    stage_cols = [col[f"stage_{s}"] for s in STAGES]
    np.testing.assert_array_equal(obs[:, stage_cols].argmax(axis=1), pop.stage())
    np.testing.assert_array_equal(obs[:, stage_cols].sum(axis=1), 1.0)
    segment_cols = [col[f"segment_{s}"] for s in sc.segments]
    np.testing.assert_array_equal(obs[:, segment_cols].argmax(axis=1), pop.segment)
    np.testing.assert_array_equal(obs[:, segment_cols].sum(axis=1), 1.0)
    np.testing.assert_array_equal(obs[:, col["horizon_progress"]], np.float32(5 / sc.horizon_weeks))
