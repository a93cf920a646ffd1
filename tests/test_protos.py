"""The gRPC API definition (proto/cvm/v1/decision.proto) and its committed stubs."""

from __future__ import annotations

import importlib.util
import pickle
import re
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType

import grpc
import numpy as np
import pytest

from server.generated.cvm.v1 import decision_pb2 as pb
from server.generated.cvm.v1 import decision_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto" / "cvm" / "v1" / "decision.proto"
GENERATED = ROOT / "server" / "generated"


def _gen_protos() -> ModuleType:
    """The generator module (imported lazily: it needs grpc_tools only when it runs)."""
    return importlib.import_module("server.gen_protos")


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_committed_stubs_are_up_to_date(tmp_path: Path) -> None:
    grpc_tools = pytest.importorskip(
        "grpc_tools", reason="grpcio-tools (a dev dependency) is needed to regenerate stubs"
    )
    del grpc_tools
    out = tmp_path / "generated"
    _gen_protos().generate(out)
    fresh, committed = _tree(out), _tree(GENERATED)
    hint = "stale stubs: run `python -m server.gen_protos` and commit server/generated"
    assert sorted(fresh) == sorted(committed), hint
    for name, data in fresh.items():
        assert data == committed[name], f"{name}: {hint} (or grpcio-tools differs)"


def test_generate_refuses_to_wipe_a_foreign_directory(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools is needed to run the generator")
    (tmp_path / "keep.txt").write_text("not generated")
    with pytest.raises(ValueError, match=r"out_dir: .* not empty and was not generated"):
        _gen_protos().generate(tmp_path)
    assert (tmp_path / "keep.txt").exists()


def test_proto_files_rejects_an_empty_root(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"proto_root: no \.proto files"):
        _gen_protos().proto_files(tmp_path)


def test_stubs_import_from_the_package_and_describe_the_api() -> None:
    assert pb.DESCRIPTOR.name == "cvm/v1/decision.proto"  # canonical name for reflection
    assert pb.DESCRIPTOR.package == "cvm.v1"
    services = {
        name: sorted(m.name for m in s.methods)
        for name, s in pb.DESCRIPTOR.services_by_name.items()
    }
    assert services == {
        "DecisionService": sorted(
            ["Decide", "DecideBatch", "ReportOutcome", "ReportOutcomes", "GetPolicyInfo"]
        ),
        "DecisionAdmin": ["LoadBundle", "RollbackBundle"],
    }
    assert pb.DecideRequest.__module__ == "server.generated.cvm.v1.decision_pb2"
    # Message classes pickle (multiprocessing) because their module name is importable.
    request = pb.DecideRequest(event_id="e1")
    assert pickle.loads(pickle.dumps(request)) == request


def test_every_enum_starts_with_unspecified() -> None:
    assert pb.DESCRIPTOR.enum_types_by_name, "the API is expected to define enums"
    for name, enum in pb.DESCRIPTOR.enum_types_by_name.items():
        zero = enum.values_by_number[0].name
        prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()
        assert zero == f"{prefix}_UNSPECIFIED", name
        assert all(v.name.startswith(prefix + "_") for v in enum.values), name


_DECLARATION = re.compile(
    r"^\s*(?:(?:optional|repeated)\s+)?(?:[\w.]+|map<[\w.]+,\s*[\w.]+>)\s+\w+\s*=\s*\d+;"  # field
    r"|^\s*[A-Z][A-Z0-9_]+\s*=\s*\d+;"  # enum value
    r"|^\s*(?:message|enum|service|oneof)\s+\w+\s*\{"
    r"|^\s*rpc\s+\w+"
)


def _undocumented(text: str) -> Iterator[str]:
    previous = ""
    for line in text.splitlines():
        if not line.strip():
            continue
        if _DECLARATION.match(line) and not previous.lstrip().startswith("//"):
            yield line.strip()
        previous = line


def test_every_declaration_of_the_proto_is_commented() -> None:
    assert list(_undocumented(PROTO.read_text(encoding="utf-8"))) == []
    # The check itself sees a missing comment.
    assert list(_undocumented("message A {\n  // ok\n  string b = 1;\n  int32 c = 2;\n}")) == [
        "message A {",
        "int32 c = 2;",
    ]


def test_decide_request_round_trips_with_presence() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=30).astype(np.float32)
    request = pb.DecideRequest(
        event_id="evt-1",
        customer_id="cust-9",
        dense=pb.FeatureVector(values=values.tolist()),
        eligibility=pb.Eligibility(
            eligible_offers=pb.NameList(names=[]),  # set but empty: no offer at all
            excluded_channels=["sms"],
        ),
        baseline_action=pb.Action(),  # set and empty: the baseline is "no contact"
        return_probabilities=True,
    )
    back = pb.DecideRequest.FromString(request.SerializeToString())
    assert back == request
    assert back.WhichOneof("features") == "dense"
    np.testing.assert_array_equal(np.asarray(back.dense.values, dtype=np.float32), values)
    assert back.eligibility.HasField("eligible_offers")
    assert not back.eligibility.HasField("eligible_channels")
    assert back.HasField("baseline_action")
    assert not pb.DecideRequest().HasField("baseline_action")

    named = pb.DecideRequest(named=pb.NamedFeatures(values={"recency": 3.0, "frequency": 1.5}))
    back = pb.DecideRequest.FromString(named.SerializeToString())
    assert back.WhichOneof("features") == "named"
    assert dict(back.named.values) == {"recency": 3.0, "frequency": 1.5}


def test_features_are_packed_float32() -> None:
    # 30 floats: 1 tag byte + 1 length byte + 4 bytes each (packed, not doubles or per-tag).
    assert len(pb.FeatureVector(values=[0.5] * 30).SerializeToString()) == 2 + 4 * 30


def test_decide_batch_request_round_trips_a_matrix() -> None:
    rng = np.random.default_rng(1)
    matrix = rng.normal(size=(4, 30)).astype(np.float32)
    request = pb.DecideBatchRequest(
        event_ids=[f"e{i}" for i in range(4)],
        customer_ids=[f"c{i}" for i in range(4)],
        features=matrix.ravel().tolist(),  # row-major
        n_features=matrix.shape[1],
        row_eligibilities=pb.RowEligibilities(
            rows=[pb.Eligibility(excluded_offers=[f"o{i}"]) for i in range(4)]
        ),
        baseline_actions=[pb.Action(offer_id="discount_5", channel="email")] * 4,
    )
    back = pb.DecideBatchRequest.FromString(request.SerializeToString())
    assert back == request
    assert back.WhichOneof("eligibility") == "row_eligibilities"
    restored = np.asarray(back.features, dtype=np.float32).reshape(-1, back.n_features)
    np.testing.assert_array_equal(restored, matrix)
    assert [r.excluded_offers[0] for r in back.row_eligibilities.rows] == ["o0", "o1", "o2", "o3"]

    # The eligibility oneof keeps only the last form set.
    request.shared_eligibility.excluded_channels.append("sms")
    assert request.WhichOneof("eligibility") == "shared_eligibility"
    assert not request.HasField("row_eligibilities")


def test_outcome_tells_zero_from_unset() -> None:
    outcome = pb.Outcome(event_id="e1", reward=0.0, purchase=False)
    outcome.reported_at.FromSeconds(1_700_000_000)
    back = pb.Outcome.FromString(outcome.SerializeToString())
    assert back.HasField("reward") and back.reward == 0.0
    assert back.HasField("purchase") and not back.purchase
    assert not back.HasField("spend") and not back.HasField("opt_out")
    assert back.reported_at.seconds == 1_700_000_000
    assert not pb.Outcome(event_id="e1").HasField("reward")


class _EchoDecisions(pb_grpc.DecisionServiceServicer):
    def Decide(self, request: pb.DecideRequest, context: grpc.ServicerContext) -> pb.DecideResponse:
        return pb.DecideResponse(
            decision=pb.Decision(
                event_id=request.event_id,
                customer_id=request.customer_id,
                action=pb.Action(offer_id="discount_5", channel="email"),
                action_index=5,
                propensity=0.25,
                source=pb.DECISION_SOURCE_POLICY,
            ),
            model=pb.ModelRef(model_id="linucb-abc", model_version="abc"),
        )


def test_stubs_serve_over_a_real_channel() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    pb_grpc.add_DecisionServiceServicer_to_server(_EchoDecisions(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            response = stub.Decide(pb.DecideRequest(event_id="e7", customer_id="c7"), timeout=5)
            assert response.decision.event_id == "e7"
            assert response.decision.action.offer_id == "discount_5"
            assert response.model.model_version == "abc"
            with pytest.raises(grpc.RpcError) as err:
                stub.GetPolicyInfo(pb.GetPolicyInfoRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(grace=None)
