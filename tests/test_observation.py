"""The observation schema (``simulator.observation``) and everything derived from it."""

from __future__ import annotations

import numpy as np
import pytest

from cvm_rl.policies.features import FeatureTransform
from simulator.config import STAGES, Scenario, scenario_from_mapping
from simulator.core import Population
from simulator.observation import (
    FIXED_FEATURE_GROUPS,
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
    ("acquisition_source_organic", 0.0, 1.0, False),
    ("acquisition_source_paid_search", 0.0, 1.0, False),
    ("acquisition_source_coupon_site", 0.0, 1.0, False),
    ("acquisition_source_referral", 0.0, 1.0, False),
    ("contact_preference_any", 0.0, 1.0, False),
    ("contact_preference_occasional", 0.0, 1.0, False),
    ("contact_preference_not_stated", 0.0, 1.0, False),
    ("category_affinity_new_releases", 0.0, 1.0, False),
    ("category_affinity_catalogue", 0.0, 1.0, False),
    ("category_affinity_both", 0.0, 1.0, False),
    ("region_type_urban", 0.0, 1.0, False),
    ("region_type_suburban", 0.0, 1.0, False),
    ("region_type_rural", 0.0, 1.0, False),
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
    for k, (name, attribute) in enumerate(sc.attributes.items()):
        cols = [col[f"{name}_{m}"] for m in attribute.members]
        np.testing.assert_array_equal(obs[:, cols].argmax(axis=1), pop.attributes[:, k])
        np.testing.assert_array_equal(obs[:, cols].sum(axis=1), 1.0)
    assert not any(name.startswith("segment_") for name in col)
    np.testing.assert_array_equal(obs[:, col["horizon_progress"]], np.float32(5 / sc.horizon_weeks))


# ---------------------------------------------------------------- latent segments


def test_no_observation_column_is_the_segment_label(default_scenario: Scenario) -> None:
    """Segments are latent: no column, and no one-hot group, tells a customer's segment, and
    all the observation's static attributes together name it for only about half of them."""
    sc = default_scenario
    pop = Population.create(sc, 40_000, np.random.default_rng(3))
    rng = np.random.default_rng(4)
    for _ in range(4):
        pop.step(rng.integers(0, sc.n_actions, size=pop.n))
    obs = pop.observe()
    segment = pop.segment.astype(np.intp)
    prior_best = np.bincount(segment).max() / pop.n
    for j, name in enumerate(observation_feature_names(sc)):
        values, codes = np.unique(obs[:, j], return_inverse=True)
        if len(values) > 200:  # continuous: the best threshold on its ranks
            codes = np.minimum(np.argsort(np.argsort(obs[:, j])) * 20 // pop.n, 19)
        # Accuracy of guessing each customer's segment as its value's most common segment.
        table = np.zeros((codes.max() + 1, sc.segments.__len__()))
        np.add.at(table, (codes, segment), 1)
        accuracy = table.max(axis=1).sum() / pop.n
        assert accuracy < prior_best + 0.15, f"{name} names the segment ({accuracy:.2f})"
    # Every static attribute at once (the cells of their joint one-hot groups).
    cell = np.ravel_multi_index(
        pop.attributes.T.astype(np.intp), [len(a.members) for a in sc.attributes.values()]
    )
    table = np.zeros((cell.max() + 1, len(sc.segments)))
    np.add.at(table, (cell, segment), 1)
    joint = table.max(axis=1).sum() / pop.n
    assert prior_best < joint < 0.65
    # ... and the customers likeliest to be sleeping dogs are so less than half the time.
    dogs = sc.segment_names.index("sleeping_dogs")
    dog_share = table[:, dogs] / np.maximum(table.sum(axis=1), 1)
    assert 0.2 < dog_share[table.sum(axis=1) > 200].max() < 0.6


def test_attributes_follow_their_segment_distribution(default_scenario: Scenario) -> None:
    sc = default_scenario
    pop = Population.create(sc, 60_000, np.random.default_rng(5))
    for k, attribute in enumerate(sc.attributes.values()):
        for s, name in enumerate(sc.segments):
            members = pop.attributes[pop.segment == s, k]
            shares = np.bincount(members, minlength=len(attribute.members)) / len(members)
            np.testing.assert_allclose(shares, attribute.by_segment[name], atol=0.025)


def test_attributes_are_static_and_shared_by_every_policy(default_scenario: Scenario) -> None:
    sc = default_scenario
    a = Population.create(sc, 500, np.random.default_rng(6))
    b = Population.create(sc, 500, np.random.default_rng(6))
    start = a.attributes.copy()
    a.step(np.zeros(500, dtype=np.int64))
    b.step(np.random.default_rng(7).integers(0, sc.n_actions, size=500))
    b.reseed(8)
    b.step(np.zeros(500, dtype=np.int64))
    np.testing.assert_array_equal(a.attributes, start)
    np.testing.assert_array_equal(b.attributes, start)


def test_the_segment_can_be_observed_as_an_ablation(default_scenario: Scenario) -> None:
    sc = default_scenario.with_overrides({"segment_observed": True})
    names = observation_feature_names(sc)
    assert names[-len(sc.segments) - 3 : -3] == [f"segment_{s}" for s in sc.segments]
    pop = Population.create(sc, 300, np.random.default_rng(0))
    cols = [names.index(f"segment_{s}") for s in sc.segments]
    np.testing.assert_array_equal(pop.observe()[:, cols].argmax(axis=1), pop.segment)


def test_groups_of_a_scenario_without_attributes_are_the_fixed_ones(
    default_scenario: Scenario,
) -> None:
    sc = default_scenario.with_overrides({"attributes": {}, "segment_observed": True})
    assert set(ObservationLayout.from_scenario(sc).columns) == set(FIXED_FEATURE_GROUPS)
