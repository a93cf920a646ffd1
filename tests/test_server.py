"""The decision service in process: servers from ``server.app.running_server`` on
127.0.0.1:0, driven by the blocking ``DecisionClient`` (and raw stubs for malformed requests).

What is checked against what: served probabilities against the bundle's own policy (or the
exploration formula), eligibility against an independent reading of the proto's rules, and
everything that must be stored against the SQLite decision log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import trustme
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from server_fixtures import (
    Bundles,
    corrupt_arrays,
    edit_manifest,
    log_counts,
    make_bundles,
    sample_features,
)

from cvm_rl.bundle import ARRAYS_FILE, MANIFEST_FILE, content_hash, load_bundle, save_bundle
from cvm_rl.config import error_message
from cvm_rl.logs.store import Activation, DecisionLog, ModelRecord
from cvm_rl.policies.bandits import LinTSPolicy
from cvm_rl.policies.mlp import MLPPolicy
from server.app import DecisionServer, running_server
from server.client import Decision, DecisionClient, Eligibility, Outcome, PolicyInfo
from server.config import (
    CLIENT_DEFAULT_RECEIVE_BYTES,
    DEFAULT_MAX_BATCH_ROWS,
    DEFAULT_MAX_RECEIVE_BYTES,
    Exploration,
    ServerConfig,
)
from server.errors import MESSAGE_CHARS
from server.generated.cvm.v1 import decision_pb2 as pb
from server.generated.cvm.v1 import decision_pb2_grpc as pb_grpc
from server.metrics import ServerMetrics
from server.model import ServingModel, hash_uniforms
from server.parsing import OUTSIDE_ROOT
from server.state import HISTORY_DEPTH, ServingState, rollback_history
from simulator.config import load_scenario
from simulator.observation import observation_feature_names

TOKEN = "s3cret-token"
INVALID = grpc.StatusCode.INVALID_ARGUMENT


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    return make_bundles(tmp_path_factory.mktemp("server-bundles"))


@dataclass
class Served:
    """A running in-process server, a client on it and its log."""

    server: DecisionServer
    port: int
    client: DecisionClient
    log_path: Path | None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def counts(self) -> tuple[int, int]:
        assert self.log_path is not None
        return log_counts(self.log_path)

    def stored(self, event_ids: list[str]) -> dict[str, Any]:
        assert self.log_path is not None
        with DecisionLog(self.log_path) as decision_log:
            return decision_log.get_decisions(event_ids)


@contextlib.contextmanager
def serving(
    bundle: Path, log_path: Path | None, *, token: str | None = None, **config: Any
) -> Iterator[Served]:
    cfg = ServerConfig(bundle=bundle, log_path=log_path, grace_s=1.0, **config)
    with (
        running_server(cfg) as (server, port),
        DecisionClient(f"127.0.0.1:{port}", token=token) as client,
    ):
        yield Served(server, port, client, log_path)


StartServer = Callable[..., Served]


@pytest.fixture
def start(bundles: Bundles, tmp_path: Path) -> Iterator[StartServer]:
    """Start servers for the test (stopped at its end): ``start(bundle=..., log=True, **cfg)``;
    ``log=True`` gives each server its own fresh log, a Path shares one, False turns it off."""
    with contextlib.ExitStack() as stack:
        counter = itertools.count()

        def _start(bundle: Path | None = None, *, log: bool | Path = True, **config: Any) -> Served:
            log_path = tmp_path / f"log{next(counter)}.db" if log is True else (log or None)
            return stack.enter_context(serving(bundle or bundles.mlp, log_path, **config))

        yield _start


@pytest.fixture
def served(start: StartServer) -> Served:
    """A policy-mode server on the first MLP bundle, with a log and a small batch limit."""
    return start(max_batch_rows=64)


# --------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def expect_status(code: grpc.StatusCode, match: str | None = None) -> Iterator[None]:
    """The block must fail with ``code`` and, if given, details matching ``match``."""
    with pytest.raises(grpc.RpcError) as excinfo:
        yield
    err = excinfo.value
    assert err.code() == code, f"{err.code()}: {err.details()}"
    # Messages echo the client's input clipped: a long one would come back RESOURCE_EXHAUSTED.
    assert len(err.details()) <= MESSAGE_CHARS
    if match is not None:
        assert re.search(match, err.details()), err.details()


def catalog_names(info: PolicyInfo) -> tuple[list[str], list[str]]:
    """Offers and channels of the catalog, in first-seen order."""
    offers = list(dict.fromkeys(o for o, _ in info.actions[1:]))
    channels = list(dict.fromkeys(c for _, c in info.actions[1:]))
    return offers, channels


def expected_mask(info: PolicyInfo, elig: Eligibility | None) -> np.ndarray:
    """The eligible actions as the proto defines them, computed independently of the server."""
    mask = np.ones(len(info.actions), dtype=bool)
    if elig is None:
        return mask
    mask[0] = not elig.contact_required
    for i, (offer, channel) in enumerate(info.actions[1:], start=1):
        mask[i] = (
            (elig.offers is None or offer in elig.offers)
            and offer not in elig.excluded_offers
            and (elig.channels is None or channel in elig.channels)
            and channel not in elig.excluded_channels
        )
    return mask


def random_eligibilities(info: PolicyInfo, n: int, seed: int) -> list[Eligibility]:
    """Varied eligibilities (allow-lists, exclusions, contact_required), none empty."""
    rng = np.random.default_rng(seed)
    offers, channels = catalog_names(info)

    def some(names: list[str], p: float) -> list[str]:
        return [x for x in names if rng.random() < p]

    out = []
    for _ in range(n):
        elig = Eligibility(
            offers=some(offers, 0.6) if rng.random() < 0.5 else None,
            channels=some(channels, 0.6) if rng.random() < 0.5 else None,
            excluded_offers=some(offers, 0.2),
            excluded_channels=some(channels, 0.2),
            contact_required=bool(rng.random() < 0.5),
        )
        if not expected_mask(info, elig).any():
            elig = Eligibility(offers=elig.offers, channels=elig.channels)
        out.append(elig)
    return out


def check_distribution(d: Decision, mask: np.ndarray) -> np.ndarray:
    """Probabilities returned sum to one, vanish on ineligible actions, and the served action
    is eligible with its probability as the propensity. Returns them as an array."""
    probs = np.asarray(d.probabilities)
    assert probs.shape == mask.shape
    assert probs.sum() == pytest.approx(1.0, abs=1e-9)
    assert np.all(probs[~mask] == 0.0)
    assert mask[d.action_index], "served an ineligible action"
    assert d.propensity == probs[d.action_index] > 0
    return probs


def greedy_one_hot(probs: np.ndarray) -> np.ndarray:
    out = np.zeros_like(probs)
    out[np.arange(len(probs)), probs.argmax(axis=1)] = 1.0
    return out


def metric_samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of one metric from the exposition text, keyed by their sorted labels."""
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


# --------------------------------------------------------------------------- round trip
def test_policy_info_matches_the_bundle_manifest(served: Served, bundles: Bundles) -> None:
    manifest = load_bundle(bundles.mlp).manifest
    info = served.client.policy_info()
    assert info.model_id == manifest["model_id"]
    assert info.model_version == manifest["version"]
    assert info.feature_names == manifest["observation"]["feature_names"]
    assert info.action_names == [a["name"] for a in manifest["actions"]]
    assert info.actions == [(a["offer"] or "", a["channel"] or "") for a in manifest["actions"]]
    assert info.actions[0] == ("", "") and info.action_names[0] == "no_contact"
    assert (info.exploration, info.exploration_param, info.learning_mode) == (
        "policy",
        0.0,
        "online",
    )
    assert [dataclasses.asdict(f) for f in info.features] == manifest["observation"]["features"]
    assert [f.name for f in info.features] == info.feature_names


def test_a_bundle_without_feature_metadata_serves_it_from_its_scenario(
    start: StartServer, bundles: Bundles, tmp_path: Path
) -> None:
    """An older bundle (no features in its manifest) gets them derived, and ranges enforced."""
    old = tmp_path / "old"
    shutil.copytree(bundles.mlp, old)
    manifest_path = old / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    expected = manifest["observation"].pop("features")
    with np.load(old / ARRAYS_FILE) as npz:
        digest = content_hash(manifest, {k: npz[k] for k in npz.files})
    manifest.update(sha256=digest, version=digest[:12], model_id=f"test-{digest[:12]}")
    manifest_path.write_text(json.dumps(manifest))
    served = start(bundle=old)
    info = served.client.policy_info()
    assert [dataclasses.asdict(f) for f in info.features] == expected
    x = sample_features(bundles.mlp, 1, seed=3)[0]
    x[info.feature_names.index("horizon_progress")] = 1.5
    with expect_status(INVALID, r"feature 'horizon_progress' must be in \[0, 1\]"):
        served.client.decide("c", x)


@pytest.mark.parametrize(
    ("exploration", "reported"),
    [
        (Exploration(mode="epsilon", param=0.25), ("epsilon", 0.25, "online")),
        (Exploration(mode="softmax", param=0.5), ("softmax", 0.5, "online")),
        (
            Exploration(mode="policy", param=0.0, learning_mode="apprentice"),
            ("policy", 0.0, "apprentice"),
        ),
    ],
    ids=["epsilon", "softmax", "apprentice"],
)
def test_policy_info_reports_the_exploration_settings(
    start: StartServer, exploration: Exploration, reported: tuple[str, float, str]
) -> None:
    info = start(exploration=exploration).client.policy_info()
    assert (info.exploration, info.exploration_param, info.learning_mode) == reported


def test_decide_round_trip_is_logged_with_its_outcome(served: Served, bundles: Bundles) -> None:
    info = served.client.policy_info()
    x = sample_features(bundles.mlp, 1, seed=1)[0]
    d = served.client.decide("cust-1", x, event_id="evt-1", return_probabilities=True)
    assert (d.event_id, d.customer_id, d.source) == ("evt-1", "cust-1", "policy")
    assert (d.model_id, d.model_version) == (info.model_id, info.model_version)
    assert (d.offer, d.channel) == info.actions[d.action_index]
    assert d.contact == (d.action_index != 0)
    probs = check_distribution(d, np.ones(len(info.actions), dtype=bool))
    assert d.explored == (d.propensity < probs.max())

    row = served.stored(["evt-1"])["evt-1"]
    assert (row.customer_id, row.action_index, row.propensity) == (
        "cust-1",
        d.action_index,
        d.propensity,
    )
    np.testing.assert_array_equal(row.features, x)
    np.testing.assert_array_equal(row.probabilities, probs)
    assert row.baseline_action_index is None

    assert served.client.report_outcome("evt-1", 2.5, purchase=True, spend=40.0) is False
    with DecisionLog(served.log_path) as decision_log:  # type: ignore[arg-type]
        outcome = decision_log.get_outcomes(["evt-1"])["evt-1"]
    assert (outcome.reward, outcome.purchase, outcome.spend, outcome.opt_out) == (
        2.5,
        True,
        40.0,
        None,
    )
    assert served.counts() == (1, 1)


def test_decide_generates_an_event_id_when_empty(served: Served, bundles: Bundles) -> None:
    x = sample_features(bundles.mlp, 1, seed=2)[0]
    first = served.client.decide("c", x)
    second = served.client.decide("c", x)
    assert re.fullmatch(r"[0-9a-f]{32}", first.event_id)
    assert first.event_id != second.event_id
    assert set(served.stored([first.event_id, second.event_id])) == {
        first.event_id,
        second.event_id,
    }


def test_named_features_are_the_same_input_as_dense(served: Served, bundles: Bundles) -> None:
    info = served.client.policy_info()
    x = sample_features(bundles.mlp, 1, seed=3)[0]
    dense = served.client.decide("c", x, event_id="e", return_probabilities=True)
    named = dict(zip(reversed(info.feature_names), reversed(x.tolist()), strict=True))
    # Same event id, same inputs: a replay, not a conflict.
    assert served.client.decide("c", named, event_id="e", return_probabilities=True) == dense
    other = served.client.decide("c", named, event_id="e2", return_probabilities=True)
    np.testing.assert_allclose(other.probabilities, dense.probabilities, rtol=1e-12)
    assert served.counts() == (2, 0)


def test_decide_batch_round_trip(served: Served, bundles: Bundles) -> None:
    info = served.client.policy_info()
    x = sample_features(bundles.mlp, 5, seed=4)
    ids = [f"b-{i}" for i in range(5)]
    decisions = served.client.decide_batch(
        [f"c{i}" for i in range(5)], x, event_ids=ids, return_probabilities=True
    )
    assert [d.event_id for d in decisions] == ids
    assert [d.customer_id for d in decisions] == [f"c{i}" for i in range(5)]
    for d in decisions:
        assert d.model_id == info.model_id
        assert (d.offer, d.channel) == info.actions[d.action_index]
        check_distribution(d, np.ones(len(info.actions), dtype=bool))
    rows = served.stored(ids)
    for i, d in enumerate(decisions):
        np.testing.assert_array_equal(rows[d.event_id].features, x[i])
        assert rows[d.event_id].action_index == d.action_index
    generated = served.client.decide_batch(["a", "b"], x[:2], event_ids=["given", ""])
    assert generated[0].event_id == "given"
    assert re.fullmatch(r"[0-9a-f]{32}", generated[1].event_id)
    assert served.counts() == (7, 0)


def test_packed_answers_equal_the_per_row_messages(served: Served, bundles: Bundles) -> None:
    x = sample_features(bundles.mlp, 6, seed=14)
    customers = [f"c{i}" for i in range(6)]
    ids = [f"p-{i}" for i in range(6)]
    messages = served.client.decide_batch(customers, x, event_ids=ids, return_probabilities=True)
    # The same ids again, packed: replays, so the answers must be the stored ones.
    packed = served.client.decide_batch_packed(
        customers, x, event_ids=ids, return_probabilities=True
    )
    assert packed.event_ids == ids
    assert packed.action_index.tolist() == [d.action_index for d in messages]
    assert packed.propensity.tolist() == [d.propensity for d in messages]
    assert packed.explored.tolist() == [d.explored for d in messages]
    assert packed.source == [d.source for d in messages]
    assert packed.probabilities is not None
    np.testing.assert_array_equal(packed.probabilities, [d.probabilities for d in messages])
    assert packed.model_id == messages[0].model_id
    # New ids, packed without probabilities: logged like any decision.
    fresh = served.client.decide_batch_packed(customers[:2], x[:2])
    assert fresh.probabilities is None and len(fresh.event_ids) == 2
    rows = served.stored(fresh.event_ids)
    assert [rows[e].propensity for e in fresh.event_ids] == fresh.propensity.tolist()
    assert served.counts() == (8, 0)


def test_distributions_can_be_left_out_of_the_log(start: StartServer, bundles: Bundles) -> None:
    served = start(log_probabilities=False)
    x = sample_features(bundles.mlp, 3, seed=21)
    decisions = served.client.decide_batch(["a", "b", "c"], x, return_probabilities=True)
    rows = served.stored([d.event_id for d in decisions])
    for d in decisions:
        row = rows[d.event_id]
        assert row.probabilities is None  # not stored...
        assert row.propensity == d.propensity  # ...but the served propensity always is
        assert d.probabilities[d.action_index] == d.propensity  # and the answer is complete


def test_a_decision_waits_out_another_writer_without_blocking_the_server(
    served: Served, bundles: Bundles
) -> None:
    assert served.log_path is not None
    other = sqlite3.connect(served.log_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another worker holding the write lock
    x = sample_features(bundles.mlp, 1, seed=30)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(served.client.decide, "c", x[0], event_id="waits")
        time.sleep(0.2)
        assert not pending.done()  # not acknowledged before it is stored...
        info = served.client.policy_info()  # ...while the server keeps answering
        assert info.model_id
        other.execute("ROLLBACK")
        decision = pending.result(timeout=10)
    other.close()
    assert served.stored(["waits"])["waits"].action_index == decision.action_index


@pytest.mark.parametrize("many", [False, True], ids=["ReportOutcome", "ReportOutcomes"])
def test_an_outcome_waits_out_another_writer_without_blocking_the_server(
    served: Served, bundles: Bundles, many: bool
) -> None:
    """While another worker holds the log's write lock, a pending outcome report must not
    stall the event loop (SQLite's busy handler would sleep in it for up to 10 s)."""
    assert served.log_path is not None
    x = sample_features(bundles.mlp, 1, seed=31)
    served.client.decide("c", x[0], event_id="reported")

    def report() -> object:
        if many:
            return served.client.report_outcomes([Outcome("reported", 2.0)])
        return served.client.report_outcome("reported", 2.0)

    other = sqlite3.connect(served.log_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another worker holding the write lock
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(report)
            time.sleep(0.2)
            assert not pending.done()  # not acknowledged before it is stored...
            start = time.monotonic()
            info = served.client.policy_info(timeout_s=2)  # ...while the server keeps answering
            assert time.monotonic() - start < 1.0
            assert info.model_id
            other.execute("ROLLBACK")
            result = pending.result(timeout=10)
    finally:
        other.close()
    assert result == ((1, 0) if many else False)
    assert served.counts() == (1, 1)


def test_outcomes_are_recorded_with_their_counts(served: Served, bundles: Bundles) -> None:
    x = sample_features(bundles.mlp, 3, seed=5)
    ids = [d.event_id for d in served.client.decide_batch(["a", "b", "c"], x)]
    outcomes = [Outcome(ids[0], 1.0, purchase=True, spend=3.0), Outcome(ids[1], 0.0)]
    assert served.client.report_outcomes(outcomes) == (2, 0)
    assert served.client.report_outcomes([*outcomes, Outcome(ids[2], -1.0, opt_out=True)]) == (
        1,
        2,
    )
    with DecisionLog(served.log_path) as decision_log:  # type: ignore[arg-type]
        stored = decision_log.get_outcomes(ids)
    assert stored[ids[0]].spend == 3.0 and stored[ids[1]].purchase is None
    assert stored[ids[2]].opt_out is True and stored[ids[2]].reward == -1.0
    assert served.counts() == (3, 3)


# --------------------------------------------------------------------------- probabilities
def test_policy_mode_serves_the_bundles_own_probabilities(served: Served, bundles: Bundles) -> None:
    info = served.client.policy_info()
    policy = load_bundle(bundles.mlp).policy
    n = 48
    x = sample_features(bundles.mlp, n, seed=6)
    eligs = random_eligibilities(info, n, seed=6)
    masks = np.stack([expected_mask(info, e) for e in eligs])
    decisions = served.client.decide_batch(
        [f"c{i}" for i in range(n)],
        x,
        event_ids=[f"p-{i}" for i in range(n)],
        eligibility=eligs,
        return_probabilities=True,
    )
    want = policy.action_probabilities(x, masks)
    got = np.stack([check_distribution(d, masks[i]) for i, d in enumerate(decisions)])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    explored = np.array([d.explored for d in decisions])
    np.testing.assert_array_equal(
        explored, [d.propensity < p.max() for d, p in zip(decisions, got, strict=True)]
    )
    # The log keeps the eligibility it decided under.
    rows = served.stored([d.event_id for d in decisions])
    for i, d in enumerate(decisions):
        np.testing.assert_array_equal(rows[d.event_id].eligible, masks[i])
    # The unary path gives the same probabilities as the batch path.
    for i in range(3):
        d = served.client.decide(
            "c", x[i], event_id=f"u-{i}", eligibility=eligs[i], return_probabilities=True
        )
        np.testing.assert_allclose(check_distribution(d, masks[i]), want[i], rtol=1e-9)


def test_epsilon_mode_follows_the_epsilon_greedy_formula(
    start: StartServer, bundles: Bundles
) -> None:
    epsilon = 0.3
    served = start(exploration=Exploration(mode="epsilon", param=epsilon))
    info = served.client.policy_info()
    policy = load_bundle(bundles.mlp).policy
    n = 48
    x = sample_features(bundles.mlp, n, seed=7)
    eligs = random_eligibilities(info, n, seed=7)
    masks = np.stack([expected_mask(info, e) for e in eligs])
    decisions = served.client.decide_batch(
        [f"c{i}" for i in range(n)], x, eligibility=eligs, return_probabilities=True
    )
    greedy = greedy_one_hot(policy.action_probabilities(x, masks))
    want = (1 - epsilon) * greedy + epsilon * masks / masks.sum(axis=1, keepdims=True)
    got = np.stack([check_distribution(d, masks[i]) for i, d in enumerate(decisions)])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    for d, g in zip(decisions, greedy, strict=True):
        assert d.explored == (g[d.action_index] == 0.0)


def test_softmax_mode_follows_the_tempered_softmax(start: StartServer, bundles: Bundles) -> None:
    temperature = 0.5
    served = start(exploration=Exploration(mode="softmax", param=temperature))
    info = served.client.policy_info()
    policy = load_bundle(bundles.mlp).policy
    assert isinstance(policy, MLPPolicy)
    n = 48
    x = sample_features(bundles.mlp, n, seed=8)
    eligs = random_eligibilities(info, n, seed=8)
    masks = np.stack([expected_mask(info, e) for e in eligs])
    decisions = served.client.decide_batch(
        [f"c{i}" for i in range(n)], x, eligibility=eligs, return_probabilities=True
    )
    z = np.where(masks, policy.scores(x).astype(np.float64) / temperature, -np.inf)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    want = e / e.sum(axis=1, keepdims=True)
    got = np.stack([check_distribution(d, masks[i]) for i, d in enumerate(decisions)])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15)
    # A lower temperature than the bundle's own (1) sharpens the distribution.
    own = policy.action_probabilities(x, masks)
    assert (got.max(axis=1) >= own.max(axis=1) - 1e-12).all()


def test_action_frequencies_match_the_propensities(served: Served, bundles: Bundles) -> None:
    n, rows = 4032, 64
    x = np.repeat(sample_features(bundles.mlp, rows, seed=9)[:1], rows, axis=0)
    decisions = []
    for first in range(0, n, rows):
        decisions += served.client.decide_batch(
            ["c"] * rows,
            x,
            event_ids=[f"f-{i}" for i in range(first, first + rows)],
            return_probabilities=True,
        )
    probs = np.asarray(decisions[0].probabilities)
    assert probs.max() < 0.9, "the test bundle should spread its probability"
    actions = np.array([d.action_index for d in decisions])
    assert len(set(actions.tolist())) > 1, "different event ids must give different draws"
    np.testing.assert_array_equal([d.propensity for d in decisions], probs[actions])
    counts = np.bincount(actions, minlength=len(probs))
    sigma = np.sqrt(n * probs * (1 - probs))
    assert np.all(np.abs(counts - n * probs) <= 5 * sigma + 1), (counts, n * probs)
    assert np.all(counts[probs == 0] == 0)


@pytest.mark.parametrize(
    ("eligibility", "allowed"),
    [
        (Eligibility(offers=[]), {("", "")}),
        (Eligibility(channels=[]), {("", "")}),
        (
            Eligibility(offers=["discount_5"], channels=["email"], contact_required=True),
            {("discount_5", "email")},
        ),
        (
            Eligibility(offers=["discount_5", "none"], excluded_channels=["sms", "push"]),
            {("", "")} | {(o, c) for o in ("discount_5", "none") for c in ("email", "call_centre")},
        ),
        (
            Eligibility(
                excluded_offers=["none", "discount_5", "discount_10", "discount_20"],
                channels=["sms"],
                contact_required=True,
            ),
            {("free_shipping", "sms"), ("loyalty_bonus", "sms")},
        ),
    ],
    ids=["no-offer", "no-channel", "single-pair", "allow-and-exclude", "required-contact"],
)
def test_eligibility_is_honoured(
    served: Served, bundles: Bundles, eligibility: Eligibility, allowed: set[tuple[str, str]]
) -> None:
    info = served.client.policy_info()
    mask = np.array([a in allowed for a in info.actions])
    assert mask.sum() == len(allowed), "the allowed pairs must exist in the catalog"
    assert np.array_equal(mask, expected_mask(info, eligibility))
    x = sample_features(bundles.mlp, 30, seed=10)
    decisions = served.client.decide_batch(
        [f"c{i}" for i in range(30)], x, eligibility=eligibility, return_probabilities=True
    )
    for d in decisions:
        check_distribution(d, mask)
        assert (d.offer, d.channel) in allowed
    if len(allowed) == 1:
        assert all(d.propensity == 1.0 for d in decisions)


def test_same_event_id_gives_the_same_draw_on_another_server(
    start: StartServer, bundles: Bundles
) -> None:
    """Schema-order batch on one server, a column-permuted batch on another, and unary calls
    on both: the same event ids give the same decisions."""
    first, second = start(), start()
    info = first.client.policy_info()
    n = 40
    x = sample_features(bundles.mlp, n, seed=11)
    ids = [f"s-{i}" for i in range(n)]
    customers = [f"c{i}" for i in range(n)]
    plain = first.client.decide_batch(customers, x, event_ids=ids, return_probabilities=True)
    order = np.random.default_rng(11).permutation(len(info.feature_names))
    permuted = second.client.decide_batch(
        customers,
        x[:, order],
        event_ids=ids,
        feature_names=[info.feature_names[j] for j in order],
        return_probabilities=True,
    )
    assert permuted == plain
    assert len({d.action_index for d in plain}) > 1
    # The log holds the features in schema order whatever the column order on the wire.
    np.testing.assert_array_equal(second.stored(ids[:1])[ids[0]].features, x[0])
    unary_ids = [f"unary-{i}" for i in range(8)]
    unary = [
        [
            s.client.decide("c", x[i], event_id=unary_ids[i], return_probabilities=True)
            for i in range(8)
        ]
        for s in (first, second)
    ]
    assert unary[0] == unary[1]


def test_an_event_ids_draw_does_not_depend_on_its_batch(
    start: StartServer, bundles: Bundles
) -> None:
    first, second = start(), start()
    n = 40
    x = sample_features(bundles.mlp, n, seed=11)
    ids = [f"s-{i}" for i in range(n)]
    batch = first.client.decide_batch(["c"] * n, x, event_ids=ids, return_probabilities=True)
    unary = [
        second.client.decide("c", x[i], event_id=ids[i], return_probabilities=True)
        for i in range(n)
    ]
    assert [d.action_index for d in unary] == [d.action_index for d in batch]


def test_hash_uniforms_of_a_key_is_independent_of_the_other_keys() -> None:
    salt = b"0123456789ab\0"
    alone = hash_uniforms(salt, ["evt-1"])
    together = hash_uniforms(salt, ["evt-1", "a-much-longer-event-id-than-the-first"])
    assert alone[0] == together[0]
    # Few keys are hashed with Python ints, many with numpy: the same function either way.
    keys = ["", "a", "x" * 8, "y" * 9, *(f"event-{i}" * (i % 7) for i in range(40))]
    vectorized = hash_uniforms(salt, keys)
    one_by_one = np.concatenate([hash_uniforms(salt, [k]) for k in keys])
    np.testing.assert_array_equal(vectorized, one_by_one)
    assert len(set(vectorized.tolist())) == len(set(keys))


def test_rules_bundle_never_serves_an_ineligible_action(
    start: StartServer, bundles: Bundles
) -> None:
    served = start(bundle=bundles.rules)
    info = served.client.policy_info()
    elig = Eligibility(contact_required=True)
    mask = expected_mask(info, elig)
    # Lower bounds: no lifecycle stage is set, so no rule fires.
    low = np.asarray(load_bundle(bundles.rules).manifest["observation"]["transform"]["low"])
    d = served.client.decide("c", low, eligibility=elig, return_probabilities=True)
    check_distribution(d, mask)


def test_thompson_sampling_draws_depend_only_on_event_id_and_model(
    start: StartServer, tmp_path: Path
) -> None:
    bundle = save_bundle(
        LinTSPolicy(load_scenario("default")), tmp_path / "lints", algo="lints", training_config={}
    )
    first, second = start(bundle=bundle), start(bundle=bundle)
    x = sample_features(bundle, 1, seed=28)[0]
    for i in range(5):
        second.client.decide("c", x, event_id=f"warm-up-{i}")
    answers = [
        [s.client.decide("c", x, event_id=f"ts-{i}", return_probabilities=True) for i in range(10)]
        for s in (first, second)
    ]
    assert answers[0] == answers[1]


# --------------------------------------------------------------------------- idempotency
def test_replayed_decide_returns_the_first_decision(served: Served, bundles: Bundles) -> None:
    x = sample_features(bundles.mlp, 2, seed=12)
    elig = Eligibility(excluded_channels=["sms"])
    first = served.client.decide("c", x[0], event_id="r", eligibility=elig)
    assert served.client.decide("c", x[0], event_id="r", eligibility=elig) == first
    assert served.counts() == (1, 0)
    conflicts = [
        {"customer_id": "c", "features": x[1], "eligibility": elig},
        {"customer_id": "other", "features": x[0], "eligibility": elig},
        {"customer_id": "c", "features": x[0], "eligibility": None},
        {"customer_id": "c", "features": x[0], "eligibility": elig, "baseline": ("none", "sms")},
    ]
    for kw in conflicts:
        with expect_status(grpc.StatusCode.ALREADY_EXISTS, r"event_id 'r' was already decided"):
            served.client.decide(event_id="r", **kw)
    assert served.counts() == (1, 0)
    row = served.stored(["r"])["r"]
    np.testing.assert_array_equal(row.features, x[0])
    assert row.customer_id == "c"


def test_concurrent_identical_requests_store_one_row(served: Served, bundles: Bundles) -> None:
    x = sample_features(bundles.mlp, 1, seed=13)[0]
    n = 16
    barrier = threading.Barrier(n)

    def call(_: int) -> Decision:
        barrier.wait()
        return served.client.decide("c", x, event_id="same", return_probabilities=True)

    with ThreadPoolExecutor(n) as pool:
        decisions = list(pool.map(call, range(n)))
    assert all(d == decisions[0] for d in decisions)
    assert served.counts() == (1, 0)


def test_batch_replays_keep_stored_rows_and_conflicts_store_nothing(
    served: Served, bundles: Bundles
) -> None:
    x = sample_features(bundles.mlp, 3, seed=14)
    old = served.client.decide("c0", x[0], event_id="old")
    mixed = served.client.decide_batch(["c0", "c1"], x[:2], event_ids=["old", "new"])
    assert mixed[0] == old
    assert served.counts() == (2, 0)
    with expect_status(grpc.StatusCode.ALREADY_EXISTS, r"'old'"):
        served.client.decide_batch(["c0", "c2"], x[[1, 2]], event_ids=["old", "newer"])
    assert served.counts() == (2, 0)
    assert "newer" not in served.stored(["newer"])


def test_outcome_idempotency_and_unknown_events(served: Served, bundles: Bundles) -> None:
    x = sample_features(bundles.mlp, 3, seed=15)
    ids = [d.event_id for d in served.client.decide_batch(["a", "b", "c"], x)]
    assert served.client.report_outcome(ids[0], 1.0, purchase=True) is False
    assert served.client.report_outcome(ids[0], 1.0, purchase=True) is True
    with expect_status(grpc.StatusCode.ALREADY_EXISTS, "already has a different outcome"):
        served.client.report_outcome(ids[0], 2.0, purchase=True)
    with expect_status(grpc.StatusCode.ALREADY_EXISTS):
        served.client.report_outcome(ids[0], 1.0, purchase=False)
    with expect_status(grpc.StatusCode.NOT_FOUND, r"unknown event_id 'nope'"):
        served.client.report_outcome("nope", 1.0)
    assert served.counts() == (3, 1)
    with DecisionLog(served.log_path) as decision_log:  # type: ignore[arg-type]
        assert decision_log.get_outcomes([ids[0]])[ids[0]].reward == 1.0

    # Atomic: one unknown id, or one conflicting outcome, and nothing of the call is stored.
    with expect_status(grpc.StatusCode.NOT_FOUND, r"'ghost'"):
        served.client.report_outcomes([Outcome(ids[1], 1.0), Outcome("ghost", 1.0)])
    with expect_status(grpc.StatusCode.ALREADY_EXISTS):
        served.client.report_outcomes([Outcome(ids[2], 1.0), Outcome(ids[0], 9.0)])
    assert served.counts() == (3, 1)
    assert served.client.report_outcomes([Outcome(ids[1], 1.0), Outcome(ids[2], 1.0)]) == (2, 0)


# --------------------------------------------------------------------------- bad input
@dataclass(frozen=True)
class Ctx:
    """What the bad-request builders need: a good feature row, its names, a decided event."""

    x: list[float]
    names: list[str]
    known: str


def _dense(ctx: Ctx, values: list[float] | None = None, **kw: Any) -> pb.DecideRequest:
    kw.setdefault("customer_id", "c")
    return pb.DecideRequest(
        dense=pb.FeatureVector(values=ctx.x if values is None else values), **kw
    )


def _with(ctx: Ctx, index: int, value: float) -> list[float]:
    values = list(ctx.x)
    values[index] = value
    return values


def _named(ctx: Ctx, drop: int = 0, extra: dict[str, float] | None = None) -> pb.DecideRequest:
    values = dict(zip(ctx.names[drop:], ctx.x[drop:], strict=True)) | (extra or {})
    return pb.DecideRequest(customer_id="c", named=pb.NamedFeatures(values=values))


def _elig(offers: list[str] | None = None, channels: list[str] | None = None, **kw: Any) -> Any:
    msg = pb.Eligibility(**kw)
    if offers is not None:
        msg.eligible_offers.SetInParent()
        msg.eligible_offers.names.extend(offers)
    if channels is not None:
        msg.eligible_channels.SetInParent()
        msg.eligible_channels.names.extend(channels)
    return msg


def _batch(ctx: Ctx, rows: int = 2, **kw: Any) -> pb.DecideBatchRequest:
    fields: dict[str, Any] = {
        "customer_ids": [f"c{i}" for i in range(rows)],
        "features": ctx.x * rows,
        "n_features": len(ctx.x),
    }
    fields.update(kw)
    return pb.DecideBatchRequest(**fields)


def _outcome(**kw: Any) -> pb.ReportOutcomeRequest:
    return pb.ReportOutcomeRequest(outcome=pb.Outcome(**kw))


def _eligible(ctx: Ctx, **kw: Any) -> pb.DecideRequest:
    return _dense(ctx, eligibility=_elig(**kw))


def _baseline(ctx: Ctx, offer: str = "", channel: str = "") -> pb.DecideRequest:
    return _dense(ctx, baseline_action=pb.Action(offer_id=offer, channel=channel))


def _rows(*rows: pb.Eligibility) -> pb.RowEligibilities:
    return pb.RowEligibilities(rows=list(rows))


def _outcomes(*outcomes: pb.Outcome) -> pb.ReportOutcomesRequest:
    return pb.ReportOutcomesRequest(outcomes=list(outcomes))


def _case(method: str, build: Callable[[Ctx], Any], match: str, case_id: str) -> Any:
    return pytest.param(method, build, match, id=f"{method}-{case_id}")


NAN, INF = math.nan, math.inf
DENSE = r"^features\.dense\.values: "
NAMED = r"^features\.named\.values: "
BOTH_OR_NEITHER = "offer_id and channel must both be set"
N_FEATURES = len(observation_feature_names(load_scenario("default")))
BAD_REQUESTS = [
    # Decide: features
    _case("Decide", lambda c: _dense(c, c.x[:-1]), DENSE + f"expected {N_FEATURES} ", "short"),
    _case("Decide", lambda c: _dense(c, [*c.x, 0.0]), DENSE + f"expected {N_FEATURES} ", "long"),
    _case("Decide", lambda c: _dense(c, _with(c, 3, NAN)), DENSE + r".* finite, got nan", "nan"),
    _case(
        "Decide",
        lambda c: _dense(c, _with(c, 0, -INF)),
        DENSE + "feature 'recency_weeks' must be finite",
        "inf",
    ),
    _case(
        "Decide", lambda c: pb.DecideRequest(customer_id="c"), r"^features: required", "no-features"
    ),
    _case(
        "Decide",
        lambda c: _named(c, drop=1),
        NAMED + r".*missing \['recency_weeks'\]",
        "named-missing",
    ),
    _case(
        "Decide",
        lambda c: _named(c, extra={"bogus": 1.0}),
        NAMED + r".*unknown \['bogus'\]",
        "named-unknown",
    ),
    _case(
        "Decide",
        lambda c: _named(c, extra={c.names[2]: NAN}),
        NAMED + r".* must be finite",
        "named-nan",
    ),
    _case(
        "Decide",
        lambda c: _dense(c, _with(c, 6, 2.0)),
        DENSE + r"feature 'opt_in_email' must be in \[0, 1\] \(1 if .*\), got 2$",
        "above-range",
    ),
    _case(
        "Decide",
        lambda c: _dense(c, _with(c, 0, -1.0)),
        DENSE + r"feature 'recency_weeks' must be in \[0, 520\] weeks \(.*\), got -1$",
        "below-range",
    ),
    _case(
        "Decide",
        lambda c: _named(c, extra={"week_of_year_sin": 1.5}),
        NAMED + r"feature 'week_of_year_sin' must be in \[-1, 1\] .*, got 1\.5$",
        "named-range",
    ),
    # Decide: eligibility
    _case(
        "Decide",
        lambda c: _eligible(c, offers=["nope"]),
        r"^eligibility\.eligible_offers\.names\[0\]: unknown offer 'nope'",
        "allow-offer",
    ),
    _case(
        "Decide",
        lambda c: _eligible(c, channels=["email", "fax"]),
        r"^eligibility\.eligible_channels\.names\[1\]: unknown channel 'fax'",
        "allow-channel",
    ),
    _case(
        "Decide",
        lambda c: _eligible(c, excluded_offers=["nope"]),
        r"^eligibility\.excluded_offers\[0\]: unknown offer",
        "exclude-offer",
    ),
    _case(
        "Decide",
        lambda c: _eligible(c, excluded_channels=["fax"]),
        r"^eligibility\.excluded_channels\[0\]: unknown channel",
        "exclude-channel",
    ),
    _case(
        "Decide",
        lambda c: _eligible(c, channels=[], contact_required=True),
        r"^eligibility: no eligible action",
        "nothing-left",
    ),
    _case(
        "Decide",
        lambda c: _eligible(c, offers=["none"], excluded_offers=["none"], contact_required=True),
        r"^eligibility: no eligible action",
        "all-excluded",
    ),
    # Decide: ids and baseline
    _case("Decide", lambda c: _dense(c, customer_id=""), r"^customer_id: required", "no-customer"),
    _case(
        "Decide",
        lambda c: _dense(c, event_id="e" * 129),
        r"^event_id: at most 128 characters, got 129",
        "long-event-id",
    ),
    _case(
        "Decide",
        lambda c: _baseline(c, offer="discount_5"),
        "^baseline_action: " + BOTH_OR_NEITHER,
        "baseline-no-channel",
    ),
    _case(
        "Decide",
        lambda c: _baseline(c, channel="email"),
        "^baseline_action: " + BOTH_OR_NEITHER,
        "baseline-no-offer",
    ),
    _case(
        "Decide",
        lambda c: _baseline(c, "nope", "email"),
        r"^baseline_action\.offer_id: unknown offer 'nope'",
        "baseline-offer",
    ),
    _case(
        "Decide",
        lambda c: _baseline(c, "none", "fax"),
        r"^baseline_action\.channel: unknown channel 'fax'",
        "baseline-channel",
    ),
    # DecideBatch: matrix
    _case(
        "DecideBatch",
        lambda c: _batch(c, n_features=N_FEATURES - 1),
        rf"^n_features: expected {N_FEATURES}",
        "n-features",
    ),
    _case(
        "DecideBatch",
        lambda c: _batch(c, n_features=0),
        rf"^n_features: expected {N_FEATURES}",
        "n-features-0",
    ),
    _case(
        "DecideBatch",
        lambda c: _batch(c, features=[*c.x, *c.x, 1.0]),
        rf"^features: expected 2 rows x {N_FEATURES} features = {2 * N_FEATURES} values, "
        rf"got {2 * N_FEATURES + 1}",
        "length",
    ),
    _case(
        "DecideBatch",
        lambda c: _batch(c, features=_with(c, 5, NAN) * 2),
        r"^features: row 0, feature '\w+' must be finite",
        "nan",
    ),
    _case(
        "DecideBatch",
        lambda c: _batch(c, features=c.x + _with(c, 5, INF)),
        r"^features: row 1, feature '\w+' must be finite",
        "inf",
    ),
    _case(
        "DecideBatch",
        lambda c: _batch(c, rows=3, features=c.x * 2 + _with(c, 1, 1e9)),
        r"^features: row 2, feature 'frequency' must be in \[0, 100000\] purchases .*, got 1e\+09$",
        "range",
    ),
    _case(
        "DecideBatch",
        lambda c: _batch(c, rows=65),
        r"^customer_ids: 65 rows exceed the batch limit of 64",
        "oversized",
    ),
    _case("DecideBatch", lambda c: _batch(c, rows=0), r"^customer_ids: at least one row", "empty"),
    _case(
        "DecideBatch",
        lambda c: _batch(c, customer_ids=["a", ""]),
        r"^customer_ids\[1\]: required",
        "no-customer",
    ),
    _case(
        "DecideBatch",
        lambda c: _batch(c, feature_names=c.names[1:]),
        r"^feature_names: must be a permutation .*missing \['recency_weeks'\]",
        "names-missing",
    ),
    _case(
        "DecideBatch",
        lambda c: _batch(c, feature_names=[*c.names[:-1], "bogus"]),
        r"^feature_names: .*unknown \['bogus'\]",
        "names-unknown",
    ),
    _case(
        "DecideBatch",
        lambda c: _batch(c, feature_names=[*c.names[:-1], c.names[0]]),
        r"^feature_names: .*duplicated \['recency_weeks'\]",
        "names-duplicated",
    ),
    # DecideBatch: per-row fields
    _case(
        "DecideBatch",
        lambda c: _batch(c, event_ids=["dup", "dup"]),
        r"^event_ids: must be distinct .*'dup' repeats",
        "duplicate-ids",
    ),
    _case(
        "DecideBatch",
        lambda c: _batch(c, event_ids=["only-one"]),
        r"^event_ids: expected 0 or 2 entries",
        "ids-length",
    ),
    _case(
        "DecideBatch",
        lambda c: _batch(c, event_ids=["ok", "e" * 129]),
        r"^event_ids\[1\]: at most 128",
        "long-event-id",
    ),
    _case(
        "DecideBatch",
        lambda c: _batch(c, row_eligibilities=_rows(_elig())),
        r"^row_eligibilities\.rows: expected 2 entries",
        "rows-length",
    ),
    _case(
        "DecideBatch",
        lambda c: _batch(c, row_eligibilities=_rows(_elig(), _elig(offers=["nope"]))),
        r"^row_eligibilities\.rows\[1\]\.eligible_offers\.names\[0\]: unknown",
        "row-offer",
    ),
    _case(
        "DecideBatch",
        lambda c: _batch(
            c, row_eligibilities=_rows(_elig(), _elig(offers=[], contact_required=True))
        ),
        r"^row_eligibilities\.rows\[1\]: no eligible action",
        "row-nothing-left",
    ),
    _case(
        "DecideBatch",
        lambda c: _batch(c, shared_eligibility=_elig(excluded_channels=["fax"])),
        r"^shared_eligibility\.excluded_channels\[0\]: unknown channel",
        "shared-channel",
    ),
    _case(
        "DecideBatch",
        lambda c: _batch(c, baseline_actions=[pb.Action()]),
        r"^baseline_actions: expected 0 or 2 entries",
        "baselines-length",
    ),
    _case(
        "DecideBatch",
        lambda c: _batch(c, baseline_actions=[pb.Action(), pb.Action(offer_id="none")]),
        r"^baseline_actions\[1\]: " + BOTH_OR_NEITHER,
        "baseline-no-channel",
    ),
    _case(
        "DecideBatch",
        lambda c: _batch(c, baseline_actions=[pb.Action(offer_id="x", channel="sms"), pb.Action()]),
        r"^baseline_actions\[0\]\.offer_id: unknown offer 'x'",
        "baseline-offer",
    ),
    # Outcomes
    _case(
        "ReportOutcome",
        lambda c: _outcome(event_id=c.known),
        r"^outcome\.reward: required",
        "no-reward",
    ),
    _case(
        "ReportOutcome",
        lambda c: _outcome(event_id=c.known, reward=NAN),
        r"^outcome\.reward: must be finite",
        "nan-reward",
    ),
    _case(
        "ReportOutcome",
        lambda c: _outcome(event_id=c.known, reward=INF),
        r"^outcome\.reward: must be finite",
        "inf-reward",
    ),
    _case(
        "ReportOutcome",
        lambda c: _outcome(event_id=c.known, reward=1.0, spend=-0.01),
        r"^outcome\.spend: must be finite and >= 0",
        "negative-spend",
    ),
    _case(
        "ReportOutcome",
        lambda c: _outcome(event_id=c.known, reward=1.0, spend=NAN),
        r"^outcome\.spend: must be finite",
        "nan-spend",
    ),
    _case(
        "ReportOutcome",
        lambda c: _outcome(reward=1.0),
        r"^outcome\.event_id: required",
        "no-event-id",
    ),
    _case(
        "ReportOutcome", lambda c: pb.ReportOutcomeRequest(), r"^outcome: required", "no-outcome"
    ),
    _case(
        "ReportOutcome",
        lambda c: _outcome(event_id=c.known, reward=1.0, reported_at=Timestamp(seconds=-5)),
        r"^outcome\.reported_at: must be a valid time",
        "before-1970",
    ),
    _case("ReportOutcomes", lambda c: _outcomes(), r"^outcomes: at least one", "empty"),
    _case(
        "ReportOutcomes",
        lambda c: _outcomes(*[pb.Outcome(event_id=c.known, reward=1.0)] * 2),
        r"^outcomes\[1\]\.event_id: '\w+' repeats",
        "repeated-id",
    ),
    _case(
        "ReportOutcomes",
        lambda c: _outcomes(pb.Outcome(event_id=c.known, reward=1.0), pb.Outcome(event_id="x")),
        r"^outcomes\[1\]\.reward: required",
        "no-reward",
    ),
    _case(
        "ReportOutcome",
        lambda c: _outcome(event_id=c.known, reward=1.0, reported_at=Timestamp(seconds=10**13)),
        r"^outcome\.reported_at: must be a valid time in \[1970-01-01T00:00:00Z, "
        r"9999-12-31T23:59:59\.999999999Z\] .*got seconds=10000000000000",
        "reported-at-overflow",
    ),
    _case(
        "ReportOutcome",
        lambda c: _outcome(
            event_id=c.known, reward=1.0, reported_at=Timestamp(seconds=253_402_300_800)
        ),
        r"^outcome\.reported_at: .*seconds in \[0, 253402300799\]",
        "reported-at-after-9999",
    ),
    _case(
        "ReportOutcome",
        lambda c: _outcome(event_id=c.known, reward=1.0, reported_at=Timestamp(nanos=-1)),
        r"^outcome\.reported_at: .*nanos in \[0, 999999999\]",
        "reported-at-negative-nanos",
    ),
    _case(
        "ReportOutcomes",
        lambda c: _outcomes(
            pb.Outcome(event_id=c.known, reward=1.0, reported_at=Timestamp(seconds=2**62))
        ),
        r"^outcomes\[0\]\.reported_at: must be a valid time",
        "reported-at-overflow",
    ),
    # String bounds (the echo of a long value is clipped: see expect_status).
    _case(
        "Decide",
        lambda c: _dense(c, customer_id="c" * 1_000_000),
        r"^customer_id: at most 256 characters, got 1000000",
        "huge-customer-id",
    ),
    _case(
        "DecideBatch",
        lambda c: _batch(c, customer_ids=["a", "b" * 257]),
        r"^customer_ids\[1\]: at most 256 characters, got 257",
        "long-customer-id",
    ),
    _case(
        "Decide",
        lambda c: _baseline(c, "o" * 129, "email"),
        r"^baseline_action\.offer_id: at most 128 characters",
        "long-baseline-offer",
    ),
    _case(
        "DecideBatch",
        lambda c: _batch(
            c, baseline_actions=[pb.Action(), pb.Action(offer_id="x", channel="c" * 129)]
        ),
        r"^baseline_actions\[1\]\.channel: at most 128 characters",
        "long-baseline-channel",
    ),
    _case(
        "Decide",
        lambda c: _eligible(c, excluded_channels=["x" * 100_000]),
        r"^eligibility\.excluded_channels\[0\]: at most 128 characters, got 100000",
        "long-channel-name",
    ),
    _case(
        "Decide",
        lambda c: _eligible(c, offers=["none", "y" * 129]),
        r"^eligibility\.eligible_offers\.names\[1\]: at most 128",
        "long-offer-name",
    ),
    _case(
        "Decide",
        lambda c: _named(c, extra={"k" * 129: 1.0}),
        r"^features\.named\.values \(a key\): at most 128",
        "long-feature-key",
    ),
    _case(
        "Decide",
        lambda c: _named(c, extra={f"unknown-{i:04d}-" + "k" * 100: 1.0 for i in range(2000)}),
        NAMED + r".*unknown \['unknown-0000-k+.*\u2026",
        "many-unknown-features",
    ),
    _case(
        "DecideBatch",
        lambda c: _batch(c, feature_names=["f" * 129, *c.names[1:]]),
        r"^feature_names\[0\]: at most 128",
        "long-feature-name",
    ),
    _case(
        "ReportOutcome",
        lambda c: _outcome(event_id="e" * 100_000, reward=1.0),
        r"^outcome\.event_id: at most 128 characters, got 100000",
        "long-event-id",
    ),
    _case(
        "ReportOutcomes",
        lambda c: _outcomes(
            pb.Outcome(event_id=c.known, reward=1.0), pb.Outcome(event_id="e" * 129, reward=1.0)
        ),
        r"^outcomes\[1\]\.event_id: at most 128 characters, got 129",
        "long-event-id",
    ),
    # Admin
    _case("LoadBundle", lambda c: pb.LoadBundleRequest(), r"^path: required", "no-path"),
    _case(
        "LoadBundle",
        lambda c: pb.LoadBundleRequest(path="/tmp/" + "b" * 256),
        r"^path: each component at most 255 bytes \(UTF-8\), got one of 256",
        "long-component",
    ),
    _case(
        "LoadBundle",
        lambda c: pb.LoadBundleRequest(path="/tmp/" + "\u00e9" * 128),
        r"^path: each component at most 255 bytes \(UTF-8\), got one of 256",
        "long-component-utf8",
    ),
    _case(
        "LoadBundle",
        lambda c: pb.LoadBundleRequest(path="/" + "/".join(["d" * 200] * 21)),
        r"^path: at most 4095 bytes \(UTF-8\), got 4221",
        "long-path",
    ),
    _case(
        "LoadBundle",
        lambda c: pb.LoadBundleRequest(path="/" + "p" * 1_000_000),
        r"^path: at most 4095 bytes",
        "huge-path",
    ),
]


@pytest.mark.parametrize(("method", "build", "match"), BAD_REQUESTS)
def test_bad_requests_are_invalid_argument_and_store_nothing(
    served: Served, bundles: Bundles, method: str, build: Callable[[Ctx], Any], match: str
) -> None:
    info = served.client.policy_info()
    x = sample_features(bundles.mlp, 1, seed=16)[0]
    known = served.client.decide("c", x, event_id="known").event_id
    ctx = Ctx(x.tolist(), info.feature_names, known)
    before = served.counts()
    stub = served.client.admin if method == "LoadBundle" else served.client.stub
    with expect_status(INVALID, match):
        getattr(stub, method)(build(ctx), timeout=10)
    assert served.counts() == before
    assert served.client.policy_info().model_id == info.model_id
    # The server still answers a good call.
    assert served.client.decide("c", x, event_id="after").event_id == "after"
    assert served.client.report_outcome("known", 1.0) is False


def test_apprentice_mode_serves_the_baseline_and_logs_the_shadow_draw(
    start: StartServer, bundles: Bundles
) -> None:
    served = start(exploration=Exploration(learning_mode="apprentice"))
    info = served.client.policy_info()
    policy = load_bundle(bundles.mlp).policy
    baselines = [("discount_5", "email"), ("", ""), ("loyalty_bonus", "push")]
    x = sample_features(bundles.mlp, 3, seed=17)
    ids = ["a0", "a1", "a2"]
    decisions = [
        served.client.decide("c", x[0], event_id=ids[0], baseline=baselines[0]),
        *served.client.decide_batch(["c", "c"], x[1:], event_ids=ids[1:], baselines=baselines[1:]),
    ]
    rows = served.stored(ids)
    all_eligible = np.ones((3, len(info.actions)), dtype=bool)
    probs = policy.action_probabilities(x, all_eligible)
    for i, d in enumerate(decisions):
        index = info.actions.index(baselines[i])
        assert ((d.offer, d.channel), d.action_index) == (baselines[i], index)
        assert (d.propensity, d.source) == (1.0, "baseline")
        row = rows[ids[i]]
        assert (row.action_index, row.propensity, row.baseline_action_index) == (index, 1.0, index)
        assert row.policy_propensity == pytest.approx(probs[i, row.policy_action_index], rel=1e-9)
    # A replay is still the baseline's decision.
    assert served.client.decide("c", x[0], event_id=ids[0], baseline=baselines[0]) == decisions[0]
    assert served.counts() == (3, 0)

    refused = [
        (lambda: served.client.decide("c", x[0]), r"^baseline_action: required in apprentice"),
        (
            lambda: served.client.decide_batch(["c", "d"], x[:2]),
            r"^baseline_actions\[0\]: required in apprentice",
        ),
        (
            lambda: served.client.decide(
                "c",
                x[0],
                baseline=("discount_5", "sms"),
                eligibility=Eligibility(excluded_channels=["sms"]),
            ),
            r"^baseline_action: 'discount_5@sms' is not eligible",
        ),
        (
            lambda: served.client.decide_batch(
                ["c", "d"],
                x[:2],
                baselines=[("", ""), ("", "")],
                eligibility=Eligibility(contact_required=True),
            ),
            r"^baseline_actions\[0\]: 'no_contact' is not eligible",
        ),
    ]
    for call, match in refused:
        with expect_status(INVALID, match):
            call()
    assert served.counts() == (3, 0)
    assert served.client.decide("c", x[0], baseline=("", "")).source == "baseline"


def test_online_mode_logs_the_baseline_beside_the_policy_draw(
    served: Served, bundles: Bundles
) -> None:
    info = served.client.policy_info()
    x = sample_features(bundles.mlp, 1, seed=18)[0]
    d = served.client.decide("c", x, event_id="o", baseline=("free_shipping", "sms"))
    assert d.source == "policy"
    row = served.stored(["o"])["o"]
    assert row.baseline_action_index == info.actions.index(("free_shipping", "sms"))
    assert (row.action_index, row.propensity) == (d.action_index, d.propensity)
    assert (row.policy_action_index, row.policy_propensity) == (d.action_index, d.propensity)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tls_cert": "cert.pem"}, r"^tls_cert and tls_key must be given together$"),
        ({"auth_token": ""}, r"^auth_token must not be empty"),
        ({"grace_s": -1.0}, r"^grace_s must be >= 0, got -1.0$"),
        ({"max_batch_rows": 0}, r"^max_batch_rows must be >= 1, got 0$"),
        ({"max_receive_bytes": 10}, r"^max_receive_bytes must be in \[1024, 2\*\*31 - 1\]"),
        ({"synchronous": "sometimes"}, r"^synchronous: .*'normal' or 'full'"),
        ({"exploration": {"mode": "greedy"}}, r"^exploration mode must be one of"),
        ({"exploration": {"learning_mode": "x"}}, r"^learning_mode must be one of"),
        ({"exploration": {"param": 0.1}}, r"^exploration mode 'policy' takes no parameter"),
        ({"exploration": {"mode": "epsilon", "param": 2}}, r"^epsilon must be in \[0.0, 1.0\]"),
        ({"exploration": {"mode": "softmax"}}, r"^temperature must be finite and > 0"),
        ({"colour": "blue"}, r"^colour: unknown field$"),
    ],
)
def test_server_config_refuses_a_bad_value_naming_the_field(
    bundles: Bundles, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError) as excinfo:
        ServerConfig(bundle=bundles.mlp, **changes)
    assert re.search(message, error_message(excinfo.value)), error_message(excinfo.value)


def test_a_config_copy_per_worker_keeps_the_settings(bundles: Bundles) -> None:
    config = ServerConfig(
        bundle=bundles.mlp, exploration=Exploration(mode="epsilon", param=0.1), metrics_port=9100
    )
    worker = config.replace(reuse_port=True, metrics_port=9101)
    assert (worker.reuse_port, worker.metrics_port) == (True, 9101)
    assert worker.exploration == config.exploration
    assert worker.model_dump(exclude={"reuse_port", "metrics_port"}) == config.model_dump(
        exclude={"reuse_port", "metrics_port"}
    )


# --------------------------------------------------------------------------- auth and TLS
def test_bearer_token_guards_every_service_but_health(start: StartServer, bundles: Bundles) -> None:
    served = start(auth_token=TOKEN, token=TOKEN)
    x = sample_features(bundles.mlp, 1, seed=19)[0]
    model_a = served.client.policy_info().model_id
    for token in (None, "wrong-token", TOKEN + "x"):
        with DecisionClient(served.target, token=token) as client:
            with expect_status(grpc.StatusCode.UNAUTHENTICATED, "bearer token"):
                client.decide("c", x)
            with expect_status(grpc.StatusCode.UNAUTHENTICATED, "bearer token"):
                client.load_bundle(bundles.mlp2)
            with expect_status(grpc.StatusCode.UNAUTHENTICATED):
                client.rollback()
            assert client.health() == "SERVING"
    assert served.counts() == (0, 0)
    assert served.client.policy_info().model_id == model_a
    assert served.client.decide("c", x).model_id == model_a
    model_b = served.client.load_bundle(bundles.mlp2)
    assert model_b != model_a and served.client.policy_info().model_id == model_b


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_auth_scheme_is_case_insensitive(
    start: StartServer, bundles: Bundles, scheme: str
) -> None:
    served = start(auth_token=TOKEN)
    x = sample_features(bundles.mlp, 1, seed=21)[0]
    request = pb.DecideRequest(customer_id="c", dense=pb.FeatureVector(values=x.tolist()))
    stub = served.client.stub
    ok = stub.Decide(request, metadata=(("authorization", f"{scheme} {TOKEN}"),), timeout=10)
    assert ok.decision.customer_id == "c"
    for refused in (f"{scheme} {TOKEN}x", f"Basic {TOKEN}", f"{scheme}{TOKEN}", TOKEN):
        with expect_status(grpc.StatusCode.UNAUTHENTICATED, "bearer token"):
            stub.Decide(request, metadata=(("authorization", refused),), timeout=10)
    assert served.counts() == (1, 0)


GARBAGE = b"\xff\xff\xff\xff not a protobuf message"
UNARY_METHODS = [
    "/cvm.v1.DecisionService/Decide",
    "/cvm.v1.DecisionService/DecideBatch",
    "/cvm.v1.DecisionService/ReportOutcome",
    "/cvm.v1.DecisionService/ReportOutcomes",
    "/cvm.v1.DecisionService/GetPolicyInfo",
    "/cvm.v1.DecisionAdmin/LoadBundle",
    "/cvm.v1.DecisionAdmin/RollbackBundle",
    "/grpc.health.v1.Health/Check",
]


@pytest.mark.parametrize("path", UNARY_METHODS)
def test_bytes_that_do_not_parse_are_invalid_argument_and_counted(
    start: StartServer, bundles: Bundles, path: str
) -> None:
    served = start(auth_token=TOKEN, token=TOKEN)
    raw = served.client.channel.unary_unary(
        path, request_serializer=None, response_deserializer=None
    )
    auth = (("authorization", f"Bearer {TOKEN}"),)
    with expect_status(INVALID, f"^request: the bytes are not a valid request message of {path}$"):
        raw(GARBAGE, metadata=auth, timeout=10)
    if not path.startswith("/grpc.health"):
        # Without the token the caller is told that first, whatever it sent.
        with expect_status(grpc.StatusCode.UNAUTHENTICATED, "bearer token"):
            raw(GARBAGE, timeout=10)
    assert served.counts() == (0, 0)
    # Counted under its method, and the server keeps serving.
    key = (("code", "INVALID_ARGUMENT"), ("method", path.rpartition("/")[2]))
    deadline = time.monotonic() + 10
    while True:  # counted when the handler returns, a moment after the client has its answer
        requests = metric_samples(served.server.metrics.text(), "cvm_requests_total")
        if requests.get(key) == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert requests.get(key) == 1, requests
    x = sample_features(bundles.mlp, 1, seed=22)[0]
    assert served.client.decide("c", x, event_id="after").event_id == "after"


def test_without_auth_no_token_is_needed(served: Served, bundles: Bundles) -> None:
    with DecisionClient(served.target) as client:
        x = sample_features(bundles.mlp, 1, seed=20)[0]
        assert client.decide("c", x, event_id="open").event_id == "open"
        assert client.load_bundle(bundles.mlp2) == client.policy_info().model_id


def test_tls_serves_clients_that_trust_the_ca_only(
    start: StartServer, bundles: Bundles, tmp_path: Path
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    key_path, chain_path = tmp_path / "key.pem", tmp_path / "cert.pem"
    cert.private_key_pem.write_to_path(str(key_path))
    chain_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    served = start(tls_cert=chain_path, tls_key=key_path)
    x = sample_features(bundles.mlp, 1, seed=21)[0]
    with DecisionClient(served.target, root_certificates=ca.cert_pem.bytes()) as client:
        assert client.decide("c", x, event_id="tls").event_id == "tls"
        assert client.health() == "SERVING"
    with expect_status(grpc.StatusCode.UNAVAILABLE):
        served.client.policy_info(timeout_s=5)  # plaintext against TLS
    untrusted = trustme.CA().cert_pem.bytes()
    with (
        DecisionClient(served.target, root_certificates=untrusted) as other,
        expect_status(grpc.StatusCode.UNAVAILABLE),
    ):
        other.policy_info(timeout_s=5)  # a certificate from a CA it does not trust
    assert served.counts() == (1, 0)


# --------------------------------------------------------------------------- hot reload
def test_load_and_rollback_switch_the_model(
    start: StartServer, bundles: Bundles, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp_path = tmp_path_factory.mktemp("refused-bundles")
    # The test bundles and the refused copies share pytest's base temp directory.
    served = start(bundle_root=tmp_path_factory.getbasetemp())
    manifest_a, manifest_b = (load_bundle(b).manifest for b in (bundles.mlp, bundles.mlp2))
    x = sample_features(bundles.mlp, 2, seed=22)
    first = served.client.decide("c", x[0], event_id="before")
    assert first.model_id == manifest_a["model_id"]

    assert served.client.load_bundle(bundles.mlp2) == manifest_b["model_id"]
    info = served.client.policy_info()
    assert (info.model_id, info.model_version) == (manifest_b["model_id"], manifest_b["version"])
    after = served.client.decide("c", x[1], event_id="after")
    assert after.model_id == manifest_b["model_id"]
    # A replay answers with the model that made the decision, not the current one.
    assert served.client.decide("c", x[0], event_id="before") == first

    refused = [
        (corrupt_arrays(bundles.mlp, tmp_path / "corrupt"), INVALID, r"^path: bundle refused"),
        (edit_manifest(bundles.mlp, tmp_path / "edited"), INVALID, r"content hash mismatch"),
        (tmp_path / "missing", grpc.StatusCode.NOT_FOUND, r"^path: .*does not exist"),
    ]
    for path, code, match in refused:
        with expect_status(code, match):
            served.client.load_bundle(path)
        assert served.client.policy_info().model_id == manifest_b["model_id"]
        assert served.client.decide("c", x[1]).model_id == manifest_b["model_id"]

    assert served.client.rollback() == manifest_a["model_id"]
    assert served.client.policy_info().model_id == manifest_a["model_id"]
    assert served.client.decide("c", x[1]).model_id == manifest_a["model_id"]
    with DecisionLog(served.log_path) as decision_log:  # type: ignore[arg-type]
        reasons = [a.reason for a in decision_log.activations()]
    assert reasons == ["start", "load", "rollback"]
    reloads = metric_samples(served.server.metrics.text(), "cvm_model_reloads_total")
    assert reloads[(("reason", "load"), ("result", "ok"))] == 1
    assert reloads[(("reason", "load"), ("result", "refused"))] == 2


def test_rollback_without_history_is_failed_precondition(start: StartServer) -> None:
    for served in (start(), start(log=False)):
        model = served.client.policy_info().model_id
        with expect_status(grpc.StatusCode.FAILED_PRECONDITION, "no earlier bundle"):
            served.client.rollback()
        assert served.client.policy_info().model_id == model


def test_softmax_exploration_refuses_a_rules_bundle(start: StartServer, bundles: Bundles) -> None:
    served = start(exploration=Exploration(mode="softmax", param=1.0))
    model = served.client.policy_info().model_id
    with expect_status(INVALID, r"^path: bundle refused.*softmax"):
        served.client.load_bundle(bundles.rules)
    assert served.client.policy_info().model_id == model


def test_running_server_reports_a_refused_bundle_promptly(bundles: Bundles) -> None:
    config = ServerConfig(
        bundle=bundles.rules, log_path=None, exploration=Exploration(mode="softmax", param=1.0)
    )
    raised: list[BaseException] = []

    def enter() -> None:
        try:
            with running_server(config):
                pass
        except BaseException as exc:  # handed to the test thread below
            raised.append(exc)

    # A daemon thread: when the bug hangs it, the test fails after 3 s instead of 60.
    thread = threading.Thread(target=enter, daemon=True)
    thread.start()
    thread.join(timeout=3)
    assert raised, "running_server did not raise within 3 s"
    assert isinstance(raised[0], ValueError) and "softmax" in str(raised[0])


def test_a_reload_reaches_another_server_on_the_same_log(
    start: StartServer, bundles: Bundles, tmp_path: Path
) -> None:
    shared = tmp_path / "shared.db"
    one, two = start(log=shared), start(log=shared)
    model_b = one.client.load_bundle(bundles.mlp2)
    deadline = time.monotonic() + 10
    while two.client.policy_info().model_id != model_b:
        assert time.monotonic() < deadline, "the second server never followed the reload"
        time.sleep(0.05)
    x = sample_features(bundles.mlp, 1, seed=23)[0]
    assert two.client.decide("c", x).model_id == model_b


def test_without_a_log_decisions_work_and_outcomes_are_refused(
    start: StartServer, bundles: Bundles
) -> None:
    served = start(log=False)
    x = sample_features(bundles.mlp, 1, seed=24)[0]
    d = served.client.decide("c", x, event_id="nolog")
    # The draw is a function of the event id and the model, log or not.
    assert served.client.decide("c", x, event_id="nolog") == d
    with expect_status(grpc.StatusCode.FAILED_PRECONDITION, "without a decision log"):
        served.client.report_outcome("nolog", 1.0)


def test_rollbacks_walk_back_through_the_history(
    start: StartServer, bundles: Bundles, tmp_path: Path
) -> None:
    a, b, c = bundles.mlp, bundles.mlp2, bundles.rules
    ids = [load_bundle(x).manifest["model_id"] for x in (a, b, c)]
    for served in (start(bundle=a), start(bundle=a, log=False)):
        info = served.client.policy_info()
        assert (info.model_id, info.rollback_target, info.rollback_depth) == (ids[0], None, 0)
        for x in (b, c):
            served.client.load_bundle(x)
        info = served.client.policy_info()
        assert (info.model_id, info.rollback_target, info.rollback_depth) == (ids[2], ids[1], 2)
        for expected, target, depth in ((ids[1], ids[0], 1), (ids[0], None, 0)):
            assert served.client.rollback() == expected
            info = served.client.policy_info()
            assert (info.model_id, info.rollback_target, info.rollback_depth) == (
                expected,
                target,
                depth,
            )
        with expect_status(grpc.StatusCode.FAILED_PRECONDITION, "no earlier bundle"):
            served.client.rollback()
        assert served.client.policy_info().model_id == ids[0]
        # A load after rollbacks starts a new branch: a rollback returns to A.
        served.client.load_bundle(c)
        assert served.client.policy_info().rollback_target == ids[0]


def test_the_rollback_history_is_shared_through_the_log(
    start: StartServer, bundles: Bundles, tmp_path: Path
) -> None:
    shared = tmp_path / "shared.db"
    one, two = start(log=shared), start(log=shared, adopt_latest=True)
    ids = [one.client.load_bundle(x) for x in (bundles.mlp2, bundles.rules)]
    deadline = time.monotonic() + 10
    while two.client.policy_info().model_id != ids[1]:
        assert time.monotonic() < deadline, "the second server never followed the reload"
        time.sleep(0.05)
    assert two.client.policy_info().rollback_target == ids[0]
    assert two.client.rollback() == ids[0]  # the other worker's rollback goes on from there
    while one.client.policy_info().model_id != ids[0]:
        assert time.monotonic() < deadline, "the first server never followed the rollback"
        time.sleep(0.05)
    assert one.client.rollback() == load_bundle(bundles.mlp).manifest["model_id"]


def test_rollback_history_is_bounded() -> None:
    acts = [
        Activation(i + 1, f"m{i}", f"/b/{i}", "online", "policy", 0.0, "load") for i in range(40)
    ]
    stack = rollback_history(acts)
    assert len(stack) == HISTORY_DEPTH and stack[-1].model_id == "m39"
    assert stack[0].model_id == f"m{40 - HISTORY_DEPTH}"


@pytest.fixture
def bundle_tree(bundles: Bundles, tmp_path: Path) -> Path:
    """``root/`` with a bundle, a run directory and symlinks in and out; ``outside/`` beside
    it with a bundle; returns ``root``."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    shutil.copytree(bundles.mlp2, root / "b")
    shutil.copytree(bundles.rules, root / "run" / "bundle")
    shutil.copytree(bundles.mlp2, outside / "b")
    (root / "link-out").symlink_to(outside / "b")
    (root / "link-in").symlink_to(root / "b")
    (root / "dir").mkdir()
    return root


OK = grpc.StatusCode.OK
DENIED = grpc.StatusCode.PERMISSION_DENIED
LOAD_PATHS = [
    ("outside-bundle", "{outside}/b", DENIED),
    ("outside-missing", "{outside}/missing", DENIED),
    ("outside-dir", "{outside}", DENIED),
    ("filesystem-root", "/", DENIED),
    ("etc", "/etc/passwd", DENIED),
    ("dotdot-relative", "../outside/b", DENIED),
    ("dotdot-absolute", "{root}/b/../../outside/b", DENIED),
    ("dotdot-missing", "{root}/../nowhere/x", DENIED),
    ("symlink-out", "{root}/link-out", DENIED),
    ("symlink-out-relative", "link-out", DENIED),
    ("missing-inside", "{root}/missing", grpc.StatusCode.NOT_FOUND),
    ("not-a-bundle-inside", "{root}/dir", INVALID),
    ("bundle-absolute", "{root}/b", OK),
    ("bundle-relative", "b", OK),
    ("dotdot-inside", "{root}/dir/../b", OK),
    ("symlink-in", "{root}/link-in", OK),
    ("run-directory", "{root}/run", OK),
]


@pytest.mark.parametrize(
    ("path", "code"), [p[1:] for p in LOAD_PATHS], ids=[p[0] for p in LOAD_PATHS]
)
def test_load_bundle_is_confined_to_the_bundle_root(
    start: StartServer, bundles: Bundles, bundle_tree: Path, path: str, code: grpc.StatusCode
) -> None:
    served = start(bundle_root=bundle_tree)
    before = served.client.policy_info().model_id
    given = path.format(root=bundle_tree, outside=bundle_tree.parent / "outside")
    if code == OK:
        assert served.client.load_bundle(given) != before
    else:
        # One message for every path outside the root, whether it exists or not.
        match = "^" + re.escape(OUTSIDE_ROOT) + "$" if code == DENIED else None
        with expect_status(code, match):
            served.client.load_bundle(given)
        assert served.client.policy_info().model_id == before
    x = sample_features(bundles.mlp, 1, seed=40)[0]
    assert served.client.decide("c", x).model_id == served.client.policy_info().model_id


def test_the_default_bundle_root_is_the_start_bundles_directory(
    start: StartServer, bundle_tree: Path
) -> None:
    # A run directory's bundle: the root is the directory holding the run directory.
    served = start(bundle=bundle_tree / "run" / "bundle")
    assert served.client.load_bundle(bundle_tree / "b")
    with expect_status(DENIED):
        served.client.load_bundle(bundle_tree.parent / "outside" / "b")


# --------------------------------------------------------------------------- sizes
def test_the_largest_allowed_batch_answer_fits_a_default_client(
    start: StartServer, bundles: Bundles
) -> None:
    rows = DEFAULT_MAX_BATCH_ROWS
    served = start(log=False)
    x = sample_features(bundles.mlp, rows, seed=41)
    # The longest ids allowed: their echo is most of the per-row answer.
    request = pb.DecideBatchRequest(
        event_ids=[f"{i:0128d}" for i in range(rows)],
        customer_ids=[f"{i:0256d}" for i in range(rows)],
        features=x.ravel().tolist(),
        n_features=x.shape[1],
        return_probabilities=True,
    )
    assert request.ByteSize() < DEFAULT_MAX_RECEIVE_BYTES
    # A channel with gRPC's default receive limit, as a campaign engine would open.
    with grpc.insecure_channel(served.target) as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        sizes = {}
        for packed in (False, True):
            request.packed = packed
            answer = stub.DecideBatch(request, timeout=60)
            sizes[packed] = answer.ByteSize()
            assert sizes[packed] < CLIENT_DEFAULT_RECEIVE_BYTES
    print(
        f"request {request.ByteSize():,} B; answer per-row {sizes[False]:,} B, "
        f"packed {sizes[True]:,} B"
    )


def test_a_request_over_the_receive_limit_is_resource_exhausted(
    start: StartServer, bundles: Bundles
) -> None:
    served = start(max_receive_bytes=64 * 1024)
    x = sample_features(bundles.mlp, 1000, seed=42)
    with expect_status(grpc.StatusCode.RESOURCE_EXHAUSTED):
        served.client.decide_batch([f"c{i}" for i in range(1000)], x)
    assert served.counts() == (0, 0)
    assert served.client.decide_batch(["c0"], x[:1])[0].customer_id == "c0"


# --------------------------------------------------------------------------- operations
def test_health_and_reflection(served: Served) -> None:
    for service in ("", "cvm.v1.DecisionService", "cvm.v1.DecisionAdmin"):
        assert served.client.health(service) == "SERVING"
    with expect_status(grpc.StatusCode.NOT_FOUND):
        served.client.health("cvm.v1.NoSuchService")
    stub = reflection_pb2_grpc.ServerReflectionStub(served.client.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = stub.ServerReflectionInfo(iter([request]), timeout=10)
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"cvm.v1.DecisionService", "cvm.v1.DecisionAdmin", "grpc.health.v1.Health"} <= names


def test_reflection_v1_lists_the_services(served: Served) -> None:
    # grpcio-reflection ships v1alpha stubs only; v1's messages are the same field for field,
    # so its stubs under v1's method name make a v1 client (what grpcurl asks first).
    call = served.client.channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    names = {
        s.name for r in call(iter([request]), timeout=10) for s in r.list_services_response.service
    }
    assert {
        "cvm.v1.DecisionService",
        "cvm.v1.DecisionAdmin",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    symbol = reflection_pb2.ServerReflectionRequest(file_containing_symbol="cvm.v1.DecisionService")
    (answer,) = list(call(iter([symbol]), timeout=10))
    assert answer.file_descriptor_response.file_descriptor_proto


def test_metrics_count_requests_by_code_and_decisions(served: Served, bundles: Bundles) -> None:
    x = sample_features(bundles.mlp, 4, seed=25)
    for i in range(3):
        served.client.decide("c", x[i])
    for _ in range(2):
        with expect_status(INVALID):
            served.client.decide("c", x[0, :-1])
    served.client.decide_batch(["a", "b", "c", "d"], x)
    text = served.server.metrics.text()
    requests = metric_samples(text, "cvm_requests_total")
    assert requests[(("code", "OK"), ("method", "Decide"))] == 3
    assert requests[(("code", "INVALID_ARGUMENT"), ("method", "Decide"))] == 2
    assert requests[(("code", "OK"), ("method", "DecideBatch"))] == 1
    decisions = metric_samples(text, "cvm_decisions_total")
    assert sum(decisions.values()) == 7
    assert {dict(k)["source"] for k in decisions} == {"policy"}


def test_metrics_count_every_rpc_with_its_status(start: StartServer, bundles: Bundles) -> None:
    """Every call is counted, whatever answers it: calls refused for want of a token, the
    health and reflection services, unary and streaming alike."""
    served = start(auth_token=TOKEN, token=TOKEN)
    x = sample_features(bundles.mlp, 1, seed=32)[0]
    with DecisionClient(served.target) as anonymous:
        with expect_status(grpc.StatusCode.UNAUTHENTICATED):
            anonymous.decide("c", x)
        assert anonymous.health() == "SERVING"
        with expect_status(grpc.StatusCode.NOT_FOUND):
            anonymous.health("cvm.v1.NoSuchService")
    served.client.decide("c", x)
    stub = reflection_pb2_grpc.ServerReflectionStub(served.client.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    with expect_status(grpc.StatusCode.UNAUTHENTICATED):
        list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    auth = (("authorization", f"Bearer {TOKEN}"),)
    assert list(stub.ServerReflectionInfo(iter([request]), timeout=10, metadata=auth))
    watch = served.client.health_stub.Watch(health_pb2.HealthCheckRequest(), timeout=10)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()  # a stream that ends when the client goes away

    expected = {
        ("Decide", "UNAUTHENTICATED"): 1,
        ("Decide", "OK"): 1,
        ("Check", "OK"): 1,
        ("Check", "NOT_FOUND"): 1,
        ("ServerReflectionInfo", "UNAUTHENTICATED"): 1,
        ("ServerReflectionInfo", "OK"): 1,
        ("Watch", "CANCELLED"): 1,
    }
    deadline = time.monotonic() + 10
    while True:  # the server sees the cancelled Watch end a moment later
        text = served.server.metrics.text()
        requests = metric_samples(text, "cvm_requests_total")
        counted = {(dict(k)["method"], dict(k)["code"]): v for k, v in requests.items()}
        if counted == expected or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert counted == expected
    latency = metric_samples(text, "cvm_request_duration_seconds_count")
    assert {dict(k)["method"] for k in latency} == {m for m, _ in expected}
    assert latency[(("method", "Decide"),)] == 2


def test_metrics_count_the_new_rows_of_a_partly_replayed_batch(
    served: Served, bundles: Bundles
) -> None:
    x = sample_features(bundles.mlp, 4, seed=26)
    served.client.decide("c", x[0], event_id="seen")
    served.client.decide_batch(["c", "d", "e", "f"], x, event_ids=["seen", "n1", "n2", "n3"])
    decisions = metric_samples(served.server.metrics.text(), "cvm_decisions_total")
    assert sum(decisions.values()) == 4


def test_an_expired_deadline_fails_and_the_server_keeps_serving(
    served: Served, bundles: Bundles
) -> None:
    """A 1 us deadline: gRPC's timers round it up to about a millisecond, so a fast call can
    still make it; most 64-row batches cannot, and none may fail any other way."""
    x = sample_features(bundles.mlp, 64, seed=27)
    codes = []
    for _ in range(20):
        try:
            served.client.decide_batch(["c"] * 64, x, timeout_s=1e-6)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as err:
            codes.append(err.code())
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}
    assert codes.count(grpc.StatusCode.DEADLINE_EXCEEDED) >= 5, codes
    assert served.client.decide("c", x[0], event_id="on-time").event_id == "on-time"
    assert served.client.health() == "SERVING"


def test_a_refused_follow_keeps_decisions_attributed_to_the_serving_model(
    bundles: Bundles, tmp_path: Path
) -> None:
    with DecisionLog(tmp_path / "shared.db") as decision_log:
        model = ServingModel(load_bundle(bundles.mlp), Exploration())
        state = ServingState(model, decision_log, ServerMetrics())
        serving_activation = state.current.activation
        # Another worker activates a bundle this process cannot load (gone since).
        gone = ModelRecord.from_bundle(load_bundle(bundles.mlp2))
        gone = dataclasses.replace(gone, path=str(tmp_path / "deleted-bundle"))
        decision_log.activate(
            gone,
            learning_mode="online",
            exploration="policy",
            exploration_param=0.0,
            reason="load",
        )
        state.follow()
        assert state.current is model
        assert state.current.activation == serving_activation
        refused = state.metrics.reloads.labels("follow", "refused")._value.get()
        state.follow()  # not retried on every poll
        assert state.metrics.reloads.labels("follow", "refused")._value.get() == refused == 1


# --------------------------------------------------------------------------- client retries
class _Faults(grpc.aio.ServerInterceptor):
    """Records the event ids of every DecisionService request as the server receives them,
    and answers the first ``failures`` Decide/DecideBatch calls with UNAVAILABLE *after* the
    handler ran (the decision is stored, the answer is lost: what a retry must survive)."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.received: list[list[str]] = []

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if not details.method.endswith(("/Decide", "/DecideBatch")):
            return handler
        behavior = handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            ids = [request.event_id] if hasattr(request, "event_id") else list(request.event_ids)
            self.received.append(ids)
            response = await behavior(request, context)
            if self.failures > 0:
                self.failures -= 1
                await context.abort(grpc.StatusCode.UNAVAILABLE, "injected: answer lost")
            return response

        return grpc.unary_unary_rpc_method_handler(
            unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


@contextlib.contextmanager
def _faulty(bundle: Path, log_path: Path, faults: _Faults) -> Iterator[Served]:
    cfg = ServerConfig(bundle=bundle, log_path=log_path, grace_s=1.0)
    with (
        running_server(cfg, extra_interceptors=[faults]) as (server, port),
        DecisionClient(f"127.0.0.1:{port}") as client,
    ):
        yield Served(server, port, client, log_path)


def test_the_client_sends_time_ordered_event_ids_when_none_are_given(
    bundles: Bundles, tmp_path: Path
) -> None:
    faults = _Faults()
    x = sample_features(bundles.mlp, 4, seed=21)
    with _faulty(bundles.mlp, tmp_path / "log.db", faults) as served:
        before_ms = time.time_ns() // 1_000_000
        first = served.client.decide("c", x[0])
        time.sleep(0.005)
        batch = served.client.decide_batch(["a", "b", "c"], x[1:])
        after_ms = time.time_ns() // 1_000_000
        # The server received the client's ids (none left for it to generate) and logged them.
        assert faults.received == [[first.event_id], [d.event_id for d in batch]]
        ids = [first.event_id, *(d.event_id for d in batch)]
        assert all(re.fullmatch(r"[0-9a-f]{32}", e) for e in ids) and len(set(ids)) == 4
        assert set(served.stored(ids)) == set(ids)
    # UUIDv7 layout: 48 bits of Unix milliseconds first, so the ids sort by time.
    millis = [int(e[:12], 16) for e in ids]
    assert before_ms <= millis[0] < millis[1] <= after_ms
    assert millis[1:] == [millis[1]] * 3


@pytest.mark.parametrize("method", ["decide", "decide_batch"])
def test_a_retried_call_after_unavailable_is_idempotent(
    bundles: Bundles, tmp_path: Path, method: str
) -> None:
    """The first attempt is stored but answered UNAVAILABLE; the client's retry policy
    resends the same request with the same client-generated ids, and the server answers it
    as a replay: the call succeeds and each event id has exactly one decision."""
    faults = _Faults(failures=1)
    x = sample_features(bundles.mlp, 3, seed=22)
    log_path = tmp_path / "log.db"
    with _faulty(bundles.mlp, log_path, faults) as served:
        if method == "decide":
            decisions = [served.client.decide("c", x[0], return_probabilities=True)]
        else:
            decisions = served.client.decide_batch(["a", "b", "c"], x, return_probabilities=True)
        ids = [d.event_id for d in decisions]
        assert faults.received == [ids, ids]  # two attempts, the same ids
        assert faults.failures == 0
        stored = served.stored(ids)
        for d in decisions:
            assert stored[d.event_id].action_index == d.action_index
            assert stored[d.event_id].propensity == pytest.approx(d.propensity)
    assert log_counts(log_path) == (len(ids), 0)
    with sqlite3.connect(log_path) as db:
        rows = db.execute("SELECT event_id, COUNT(*) FROM decisions GROUP BY event_id").fetchall()
    assert sorted(rows) == sorted((e, 1) for e in ids)


def test_admin_calls_are_not_retried_but_decisions_are() -> None:
    from server.client import SERVICE_CONFIG

    config = json.loads(SERVICE_CONFIG)["methodConfig"][0]
    assert config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert config["retryPolicy"]["maxAttempts"] >= 2
    services = {name["service"] for name in config["name"]}
    assert "cvm.v1.DecisionService" in services and "cvm.v1.DecisionAdmin" not in services
