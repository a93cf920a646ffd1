"""Two replicas of the service: promotion reaches both, or neither; their logs export as the
shards of one dataset.

Two ``cvm serve`` processes on 127.0.0.1 (port 0), each with its own decision log and the
same ``--bundle-root`` (the shared bundle store), as replicas behind a load balancer would be.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_fixtures import random_mlp, sample_features

from cvm_rl.bundle import load_bundle, save_bundle
from cvm_rl.cli.process import ServeProcess, serve_process
from cvm_rl.logs.export import export_parquet, read_export
from cvm_rl.loop.replicas import PromotionResult, promote
from server.client import DecisionClient
from simulator.config import load_scenario

SCENARIO = load_scenario("default")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _replicas(store: Path, tmp_path: Path, n: int) -> Iterator[list[ServeProcess]]:
    """``n`` replicas on the store's ``a`` bundle, replica i logging to ``tmp_path/ri.db``."""
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                serve_process(
                    [
                        "--bundle",
                        str(store / "a"),
                        "--bundle-root",
                        str(store),
                        "--log",
                        str(tmp_path / f"r{i}.db"),
                    ],
                    tmp_path,
                    name=f"r{i}",
                )
            )
            for i in range(n)
        ]


def _serving(target: str) -> str:
    with DecisionClient(target) as client:
        return client.policy_info().model_id


def _decide(target: str, prefix: str, n: int, bundle: Path) -> set[str]:
    """``n`` decisions with event ids ``prefix-i``; the model ids that made them."""
    x = sample_features(bundle, n, seed=len(prefix))
    with DecisionClient(target) as client:
        return {client.decide(f"c{i}", x[i], event_id=f"{prefix}-{i}").model_id for i in range(n)}


def test_promote_needs_distinct_replicas() -> None:
    with pytest.raises(ValueError, match="at least one replica"):
        promote([], "b")
    with pytest.raises(ValueError, match="each replica once"):
        promote(["h:1", "h:1"], "b")


def test_a_result_says_whether_the_replica_is_consistent() -> None:
    assert PromotionResult("h:1", "promoted", "a", "b").consistent
    assert PromotionResult("h:1", "rolled_back", "a", "a", "h:2 failed").consistent
    split = PromotionResult("h:1", "failed", "a", "b", "RollbackBundle: UNAVAILABLE")
    assert not split.ok and not split.consistent
    assert split.line() == "h:1: failed (a -> b): RollbackBundle: UNAVAILABLE"


@pytest.mark.slow
def test_promotion_reaches_every_replica_or_none(tmp_path: Path) -> None:
    store = tmp_path / "bundles"  # the shared bundle store
    model_a = load_bundle(
        save_bundle(random_mlp(SCENARIO, 0), store / "a", algo="test", training_config={})
    ).model_id
    with _replicas(store, tmp_path, 2) as (r0, r1):
        targets = [r0.target, r1.target]
        assert [_serving(t) for t in targets] == [model_a, model_a]
        assert _decide(r0.target, "r0-before", 5, store / "a") == {model_a}
        assert _decide(r1.target, "r1-before", 5, store / "a") == {model_a}

        # A new bundle lands in the store; promote it on both replicas.
        b = save_bundle(random_mlp(SCENARIO, 1), store / "b", algo="test", training_config={})
        model_b = load_bundle(b).model_id
        results = promote(targets, b, timeout=20)
        assert [(r.address, r.status, r.before, r.active) for r in results] == [
            (t, "promoted", model_a, model_b) for t in targets
        ]
        assert all(r.ok and r.error is None for r in results)
        assert [_serving(t) for t in targets] == [model_b, model_b]
        assert _decide(r0.target, "r0-after", 5, b) == {model_b}
        assert _decide(r1.target, "r1-after", 5, b) == {model_b}
        # Promoting it again changes nothing.
        assert [r.status for r in promote(targets, b)] == ["unchanged", "unchanged"]

        # One replica unreachable: the one switched already is rolled back to model B.
        c = save_bundle(random_mlp(SCENARIO, 2), store / "c", algo="test", training_config={})
        dead = f"127.0.0.1:{_free_port()}"
        switched, failed = promote([r0.target, dead], c, timeout=10)
        assert (failed.address, failed.status, failed.active) == (dead, "failed", None)
        assert failed.error is not None and "GetPolicyInfo: UNAVAILABLE" in failed.error
        assert (switched.status, switched.before, switched.active) == (
            "rolled_back",
            model_b,
            model_b,
        )
        assert switched.error is not None and switched.error.startswith(f"{dead} failed: ")
        assert switched.consistent and not switched.ok
        # Unreachable first: nothing is touched.
        failed, skipped = promote([dead, r0.target], c, timeout=10)
        assert failed.status == "failed" and skipped.status == "not_attempted"
        assert skipped.consistent and not failed.consistent  # unreachable: state not known
        assert _serving(r0.target) == model_b
        # A replica that activates another model than expected is rolled back itself.
        (wrong,) = promote([r1.target], c, model_id="test-000000000000")
        assert (wrong.status, wrong.before, wrong.active) == ("failed", model_b, model_b)
        assert wrong.error is not None and "not test-000000000000" in wrong.error
        assert "rolled back to" in wrong.error
        assert [_serving(t) for t in targets] == [model_b, model_b]
        assert _decide(r0.target, "r0-end", 3, b) == {model_b}
        assert [s.stop() for s in (r0, r1)] == [0, 0]

    # Both logs, exported as two shards of one dataset, hold every decision with the model
    # that made it.
    export = tmp_path / "export"
    for shard in ("r0", "r1"):
        export_parquet(tmp_path / f"{shard}.db", export, outcome_window_s=0, shard=shard)
    table = read_export(export)
    model_of = dict(
        zip(table.column("event_id").to_pylist(), table.column("model_id").to_pylist(), strict=True)
    )
    assert len(model_of) == table.num_rows == 5 + 5 + 5 + 5 + 3
    for event, model in model_of.items():
        assert model == (model_a if "before" in event else model_b), event
