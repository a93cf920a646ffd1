"""Scenario schema: the shipped default, action ids, and every kind of bad input.

Bad files are written to ``tmp_path`` from the default file with one thing changed; each error
must name the file, the dotted key and what is allowed.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from simulator.config import (
    STAGES,
    Scenario,
    ScenarioError,
    builtin_scenarios,
    load_scenario,
    scenario_from_mapping,
)

# ----------------------------------------------------------------------------- helpers

RANGE_RE = re.compile(r"allowed ([\[(])([^,\]]+), ([^\])]+)([\])])")


def _set(data: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        node = node[key]
    node[leaf] = value


def _delete(data: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        node = node[key]
    del node[leaf]


def _write(tmp_path: Path, data: dict, name: str = "scenario.toml") -> Path:
    path = tmp_path / name
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def _stated_range(message: str) -> tuple[str, float, float, str]:
    """The ``allowed <interval>`` of a message: (left bracket, low, high, right bracket)."""
    match = RANGE_RE.search(message)
    assert match, f"no 'allowed [low, high]' range in: {message}"
    lo_bracket, lo, hi, hi_bracket = match.groups()
    return lo_bracket, float(lo), float(hi), hi_bracket


def _outside_stated_range(message: str, value: float) -> bool:
    """Whether ``value`` lies outside the interval the message states as allowed.

    ``[``/``]`` are closed ends, ``(``/``)`` open ones; ``inf``/``-inf`` are unbounded.
    """
    lo_bracket, low, high, hi_bracket = _stated_range(message)
    below = value < low or (value == low and lo_bracket == "(")
    above = value > high or (value == high and hi_bracket == ")")
    return below or above


@pytest.fixture
def data(default_data: dict) -> dict:
    """A private deep copy of the parsed default file, free to modify."""
    return copy.deepcopy(default_data)


# ----------------------------------------------------------------------------- the default


def test_builtin_scenarios_contains_default() -> None:
    names = builtin_scenarios()
    assert "default" in names
    assert names == sorted(names)


def test_default_loads_and_matches_the_file(default_data: dict) -> None:
    sc = load_scenario("default")
    assert isinstance(sc, Scenario)
    assert sc.name == default_data["name"] == "default"
    assert sc.horizon_weeks == default_data["horizon_weeks"]
    assert sc.margin_rate == pytest.approx(default_data["margin_rate"])
    assert sc.channel_names == list(default_data["channels"])
    assert sc.offer_names == list(default_data["offers"])
    assert sc.segment_names == list(default_data["segments"])
    for name, table in default_data["channels"].items():
        for key, value in table.items():
            assert getattr(sc.channels[name], key) == pytest.approx(value), (name, key)
    assert math.isclose(sum(s.share for s in sc.segments.values()), 1.0)
    n_off, n_ch = len(default_data["offers"]), len(default_data["channels"])
    assert sc.n_actions == 1 + n_off * n_ch


def test_default_loads_by_path_and_from_mapping(
    tmp_path: Path, default_text: str, default_data: dict
) -> None:
    path = tmp_path / "copy.toml"
    path.write_text(default_text, encoding="utf-8")
    by_name = load_scenario("default")
    assert load_scenario(path) == by_name
    assert load_scenario(str(path)) == by_name
    assert scenario_from_mapping(default_data) == by_name
    # A Scenario passes through unchanged.
    assert load_scenario(by_name) is by_name


def test_scenario_is_frozen(default_scenario: Scenario) -> None:
    with pytest.raises(Exception, match="frozen"):
        default_scenario.margin_rate = 0.5  # type: ignore[misc]


# ----------------------------------------------------------------------------- action ids


def test_action_names_and_decode_round_trip(default_scenario: Scenario) -> None:
    sc = default_scenario
    names = sc.action_names()
    assert len(names) == sc.n_actions == len(set(names))
    assert names[0] == "no_contact"
    assert sc.decode_action(0) == (None, None)
    seen = set()
    for action in range(1, sc.n_actions):
        offer, channel = sc.decode_action(action)
        assert offer in sc.offers and channel in sc.channels
        assert names[action] == f"{offer}@{channel}"
        seen.add((offer, channel))
    # Every (offer, channel) pair exactly once, offer-major.
    assert seen == {(o, c) for o in sc.offers for c in sc.channels}
    n_ch = len(sc.channels)
    for action in range(1, sc.n_actions):
        offer, channel = sc.decode_action(action)
        assert sc.offer_names.index(offer) == (action - 1) // n_ch
        assert sc.channel_names.index(channel) == (action - 1) % n_ch


@pytest.mark.parametrize("action", [-1, -100, "n_actions", "n_actions+1"])
def test_decode_action_rejects_out_of_range(default_scenario: Scenario, action: Any) -> None:
    n = default_scenario.n_actions
    value = {"n_actions": n, "n_actions+1": n + 1}.get(action, action)
    with pytest.raises(ValueError, match=rf"\[0, {n}\).*got {value}"):
        default_scenario.decode_action(value)


def test_action_ids_follow_a_smaller_scenario(data: dict) -> None:
    for name in ("push", "call_centre"):
        del data["channels"][name]
    for seg in data["segments"].values():
        seg.get("channel_affinity", {}).pop("push", None)
        seg.get("channel_affinity", {}).pop("call_centre", None)
    del data["offers"]["loyalty_bonus"]
    sc = scenario_from_mapping(data)
    assert sc.n_actions == 1 + 5 * 2
    assert sc.action_names()[1:3] == ["none@email", "none@sms"]
    assert sc.decode_action(sc.n_actions - 1) == ("free_shipping", "sms")


# ----------------------------------------------------------------------------- bad files

# (id, mutate the parsed default, dotted key the message must name, other fragments)
BAD_VALUES: list[tuple[str, Callable[[dict], None], str, list[str]]] = [
    (
        "unknown-top-level-key",
        lambda d: _set(d, "colour", "red"),
        "colour",
        ["unknown key", "allowed keys", "horizon_weeks", "margin_rate", "channels"],
    ),
    (
        "unknown-channel-key",
        lambda d: _set(d, "channels.sms.colour", "blue"),
        "channels.sms.colour",
        ["unknown key", "allowed keys", "cost", "opt_in_prob", "max_per_window", "optout_base"],
    ),
    (
        "unknown-segment-key",
        lambda d: _set(d, "segments.mainstream.loyalty", 1.0),
        "segments.mainstream.loyalty",
        ["unknown key", "allowed keys", "share", "contact_churn_prob", "channel_affinity"],
    ),
    (
        "unknown-purchase-key",
        lambda d: _set(d, "purchase.rr", 1.0),
        "purchase.rr",
        ["unknown key", "allowed keys", "alpha", "spend_q"],
    ),
    (
        "unknown-seasonality-key",
        lambda d: _set(d, "seasonality", [{**d["seasonality"][0], "height": 2}]),
        "seasonality.0.height",
        ["unknown key", "start_week", "end_week", "multiplier"],
    ),
    (
        "wrong-type",
        lambda d: _set(d, "channels.email.cost", "cheap"),
        "channels.email.cost",
        ["number", "cheap"],
    ),
    (
        "missing-channels",
        lambda d: _delete(d, "channels"),
        "channels",
        ["missing required key"],
    ),
    (
        "empty-offers",
        lambda d: _set(d, "offers", {}),
        "",
        ["at least one entry"],
    ),
    (
        "segment-shares",
        lambda d: _set(d, "segments.mainstream.share", 0.40),
        "",
        ["segment shares must sum to 1", "0.95"],
    ),
    (
        "affinity-unknown-channel",
        lambda d: _set(d, "segments.loyalists.channel_affinity", {"email": 1.2, "fax": 2.0}),
        "segments.loyalists.channel_affinity",
        ["unknown channel", "fax", "call_centre", "email", "push", "sms"],
    ),
    (
        "stages-out-of-order",
        lambda d: _set(d, "stages.lapsed_weeks", 10),
        "stages",
        ["at_risk_weeks < lapsed_weeks < churned_weeks", "12, 10, 52"],
    ),
    (
        "attribute-probabilities-do-not-sum-to-one",
        lambda d: _set(d, "attributes.region_type.by_segment.loyalists", [0.5, 0.4, 0.2]),
        "attributes.region_type",
        ["by_segment.loyalists", "sum to 1.1"],
    ),
    (
        "attribute-probability-count",
        lambda d: _set(d, "attributes.region_type.by_segment.loyalists", [0.5, 0.5]),
        "attributes.region_type",
        ["by_segment.loyalists", "2 probabilities for 3 members"],
    ),
    (
        "attribute-negative-probability",
        lambda d: _set(d, "attributes.region_type.by_segment.loyalists", [1.2, -0.2, 0.0]),
        "attributes.region_type.by_segment.loyalists.1",
        ["out of range", "[0.0, 1.0]"],
    ),
    (
        "attribute-missing-segment",
        lambda d: _delete(d, "attributes.region_type.by_segment.sleeping_dogs"),
        "attributes.region_type.by_segment",
        ["needs exactly the segments", "sleeping_dogs"],
    ),
    (
        "attribute-duplicate-members",
        lambda d: _set(d, "attributes.region_type.members", ["urban", "urban", "rural"]),
        "attributes.region_type",
        ["members must be distinct identifiers"],
    ),
    (
        "attribute-named-after-a-feature-group",
        lambda d: _set(d, "attributes.stage", d["attributes"]["region_type"]),
        "attributes.stage",
        ["observation's own groups", "recency_weeks"],
    ),
    (
        "stages-equal",
        lambda d: _set(d, "stages.churned_weeks", 26),
        "stages",
        ["at_risk_weeks < lapsed_weeks < churned_weeks", "12, 26, 26"],
    ),
]


@pytest.mark.parametrize(
    ("mutate", "key", "fragments"),
    [pytest.param(m, k, f, id=i) for i, m, k, f in BAD_VALUES],
)
def test_bad_file_names_path_key_and_allowed(
    tmp_path: Path, data: dict, mutate: Callable[[dict], None], key: str, fragments: list[str]
) -> None:
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    message = str(info.value)
    assert str(path) in message
    if key:
        assert f"'{key}'" in message or f"{key}:" in message or f"{key}." in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


INF = math.inf
# (dotted key, bad value, allowed low, allowed high); finite ends are inclusive
OUT_OF_RANGE: list[tuple[str, Any, float, float]] = [
    ("channels.email.cost", -1, 0.0, INF),
    ("channels.call_centre.cost", -0.5, 0.0, INF),
    ("channels.sms.opt_in_prob", 1.5, 0.0, 1.0),
    ("channels.sms.opt_in_prob", -0.1, 0.0, 1.0),
    ("channels.push.fatigue_decay", 1.01, 0.0, 1.0),
    ("channels.email.max_per_window", -1, 0.0, INF),
    ("segments.sleeping_dogs.contact_churn_prob", 1.2, 0.0, 1.0),
    ("segments.sleeping_dogs.contact_churn_prob", -0.01, 0.0, 1.0),
    ("segments.deal_seekers.offer_sensitivity", -2.0, 0.0, INF),
    ("offers.discount_20.discount_rate", 1.2, 0.0, 1.0),
    ("offers.free_shipping.cost_per_order", -4.0, 0.0, INF),
    ("margin_rate", 1.5, 0.0, 1.0),
    ("margin_rate", -0.2, 0.0, 1.0),
    ("horizon_weeks", 0, 1, 520),
    ("horizon_weeks", 521, 1, 520),
    ("start_week", 53, 1, 52),
    ("purchase.reactivation_prob", 2.0, 0.0, 1.0),
    ("constraints.cap_window_weeks", 0, 1, 52),
    ("acquisition.arrival_share", 1.5, 0.0, 1.0),
]


@pytest.mark.parametrize(("key", "value", "low", "high"), OUT_OF_RANGE)
def test_out_of_range_names_path_key_and_range(
    tmp_path: Path, data: dict, key: str, value: Any, low: float, high: float
) -> None:
    _set(data, key, value)
    path = _write(tmp_path, data)
    with pytest.raises(ScenarioError, match=re.escape(f"key '{key}' = {value!r}")) as info:
        load_scenario(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert "out of range" in message
    lo_bracket, stated_low, stated_high, hi_bracket = _stated_range(message)
    assert (stated_low, stated_high) == (low, high), message
    assert lo_bracket == "["  # inclusive lower bound
    if math.isfinite(high):
        assert hi_bracket == "]"
    assert _outside_stated_range(message, value), message


@pytest.mark.parametrize("value", [1.0, 0.5, -3.0])
def test_spend_q_must_exceed_one(tmp_path: Path, data: dict, value: float) -> None:
    _set(data, "purchase.spend_q", value)
    path = _write(tmp_path, data)
    with pytest.raises(ScenarioError, match=re.escape("key 'purchase.spend_q'")) as info:
        load_scenario(path)
    assert str(path) in str(info.value)
    assert "1.0" in str(info.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [("purchase.spend_q", 1.0), ("purchase.r", 0.0), ("purchase.pull_forward_repay", 0.0)],
)
def test_exclusive_bound_is_not_stated_as_allowed(
    tmp_path: Path, data: dict, key: str, value: float
) -> None:
    _set(data, key, value)
    path = _write(tmp_path, data)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    lo_bracket, low, _high, _hi_bracket = _stated_range(str(info.value))
    assert (lo_bracket, low) == ("(", value), str(info.value)
    assert _outside_stated_range(str(info.value), value), str(info.value)


@pytest.mark.parametrize(
    "key",
    ["constraints.budget_per_customer_week", "segments.loyalists.channel_affinity.email"],
)
def test_nested_constraint_range_is_named(tmp_path: Path, data: dict, key: str) -> None:
    _set(data, key, -1.0)
    path = _write(tmp_path, data)
    with pytest.raises(ScenarioError, match=re.escape(f"key '{key}'")) as info:
        load_scenario(path)
    lo_bracket, low, _high, _hi_bracket = _stated_range(str(info.value))
    assert (lo_bracket, low) == ("[", 0.0), str(info.value)
    assert _outside_stated_range(str(info.value), -1.0), str(info.value)


def test_model_level_error_does_not_dump_the_scenario(tmp_path: Path, data: dict) -> None:
    _set(data, "segments.mainstream.share", 0.40)
    path = _write(tmp_path, data)
    with pytest.raises(ScenarioError, match="segment shares must sum to 1") as info:
        load_scenario(path)
    message = str(info.value)
    assert data["description"] not in message
    assert len(message) < 400, len(message)


def test_all_errors_are_reported(tmp_path: Path, data: dict) -> None:
    _set(data, "channels.email.cost", -1)
    _set(data, "channels.sms.opt_in_prob", 1.5)
    _set(data, "channels.push.colour", "red")
    path = _write(tmp_path, data)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    message = str(info.value)
    for key in ("channels.email.cost", "channels.sms.opt_in_prob", "channels.push.colour"):
        assert key in message
    assert message.count(str(path)) == 3


def test_invalid_toml_syntax(tmp_path: Path, default_text: str) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(default_text.replace("cost = 0.02", "cost = = 0.02", 1), encoding="utf-8")
    assert path.read_text() != default_text
    with pytest.raises(ScenarioError, match="not valid TOML") as info:
        load_scenario(path)
    assert str(path) in str(info.value)


def test_duplicate_toml_table_is_invalid(tmp_path: Path, default_text: str) -> None:
    path = tmp_path / "dup.toml"
    path.write_text(default_text + "\n[channels.email]\ncost = 1.0\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match="not valid TOML") as info:
        load_scenario(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("suffix", [".yaml", ".json", ".txt"])
def test_wrong_suffix(tmp_path: Path, default_text: str, suffix: str) -> None:
    path = tmp_path / f"scenario{suffix}"
    path.write_text(default_text, encoding="utf-8")
    with pytest.raises(ScenarioError, match=re.escape(f"got '{suffix}'")) as info:
        load_scenario(path)
    assert str(path) in str(info.value)
    assert ".toml" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ScenarioError, match="neither a file nor a built-in") as info:
        load_scenario(path)
    assert str(path) in str(info.value)
    assert "default" in str(info.value)  # lists the built-in scenarios


@pytest.mark.parametrize("name", ["no_such_scenario", "Default", "default.toml"])
def test_unknown_builtin_name(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # so that no file of that name can exist
    with pytest.raises(ScenarioError, match="neither a file nor a built-in") as info:
        load_scenario(name)
    message = str(info.value)
    assert f"'{name}'" in message
    for builtin in builtin_scenarios():
        assert builtin in message


# ----------------------------------------------------------------------------- overrides


def test_with_overrides_replaces_and_revalidates(default_scenario: Scenario) -> None:
    sc = default_scenario.with_overrides(
        {
            "horizon_weeks": 8,
            "channels.sms.cost": 0.1,
            "segments.loyalists.channel_affinity.email": 2.0,
            "constraints.budget_per_customer_week": 0.05,
        }
    )
    assert sc.horizon_weeks == 8
    assert sc.channels["sms"].cost == pytest.approx(0.1)
    assert sc.segments["loyalists"].channel_affinity["email"] == pytest.approx(2.0)
    assert sc.constraints.budget_per_customer_week == pytest.approx(0.05)
    # Everything else, and the original, unchanged.
    assert sc.channels["email"] == default_scenario.channels["email"]
    assert sc.offers == default_scenario.offers
    assert default_scenario.horizon_weeks == 52
    assert default_scenario.channels["sms"].cost != pytest.approx(0.1)
    assert default_scenario.with_overrides({}) == default_scenario


@pytest.mark.parametrize(
    ("dotted", "missing"),
    [
        ("channels.sms.colour", "colour"),
        ("channels.fax.cost", "fax"),
        ("nope", "nope"),
        ("nope.deeper", "nope"),
        ("horizon_weeks.x", "x"),
    ],
)
def test_with_overrides_unknown_key(default_scenario: Scenario, dotted: str, missing: str) -> None:
    with pytest.raises(ScenarioError, match=re.escape(f"override '{dotted}'")) as info:
        default_scenario.with_overrides({dotted: 1.0})
    assert f"'{missing}'" in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        ({"channels.sms.opt_in_prob": 1.5}, ["channels.sms.opt_in_prob", "[0.0, 1.0]"]),
        ({"channels.email.cost": -1}, ["channels.email.cost", "allowed [0.0, inf"]),
        ({"margin_rate": -0.1}, ["margin_rate", "[0.0, 1.0]"]),
        ({"segments.loyalists.share": 0.3}, ["segment shares must sum to 1"]),
        ({"stages.at_risk_weeks": 30}, ["stages", "at_risk_weeks < lapsed_weeks"]),
        ({"horizon_weeks": "long"}, ["horizon_weeks", "integer"]),
    ],
)
def test_with_overrides_invalid_value(
    default_scenario: Scenario, overrides: dict, fragments: list[str]
) -> None:
    with pytest.raises(ScenarioError) as info:
        default_scenario.with_overrides(overrides)
    message = str(info.value)
    assert "with overrides" in message  # names where the bad value came from
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_stages_constant_matches_observation_schema() -> None:
    # The lifecycle stages are the fixed vocabulary of the observation's one-hot.
    assert len(STAGES) == len(set(STAGES)) == 7
    assert STAGES[0] == "prospect"
