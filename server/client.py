"""A small typed Python client of the decision service (blocking, one channel).

    with DecisionClient("127.0.0.1:50051") as client:
        info = client.policy_info()
        d = client.decide("customer-1", features, event_id="evt-1")
        client.report_outcome(d.event_id, reward=12.5, purchase=True, spend=40.0)

Errors are ``grpc.RpcError`` with the server's status code and message. Calls that get
UNAVAILABLE (the server restarting, a connection dropped) are retried by gRPC with backoff
(:data:`RETRY_POLICY`); a decision without an event id gets one generated here (time-ordered,
the UUIDv7 layout), so a retried call carries the same ids and the server answers it as a
replay: one decision per event id, end to end.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.generated.cvm.v1 import decision_pb2 as pb
from server.generated.cvm.v1 import decision_pb2_grpc as pb_grpc
from server.ids import new_event_ids

ActionPair = tuple[str, str]
"""(offer, channel); ("", "") is no contact."""

RETRY_POLICY: dict[str, object] = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
"""gRPC's retry policy for every DecisionService and health call: up to 4 attempts on
UNAVAILABLE, with randomized exponential backoff (waits drawn up to 0.1 s, 0.2 s, 0.4 s).
Decisions carry event ids and outcomes are keyed by theirs, so a retry is idempotent. Admin
calls (LoadBundle, RollbackBundle) are not retried: a rollback repeated walks back further."""

SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": "cvm.v1.DecisionService"},
                    {"service": "grpc.health.v1.Health"},
                ],
                "retryPolicy": RETRY_POLICY,
            }
        ]
    }
)
CHANNEL_OPTIONS = [("grpc.enable_retries", 1), ("grpc.service_config", SERVICE_CONFIG)]


@dataclass(frozen=True)
class Eligibility:
    """Allowed offers/channels (None: all), exclusions, and whether contact is required."""

    offers: Sequence[str] | None = None
    channels: Sequence[str] | None = None
    excluded_offers: Sequence[str] = ()
    excluded_channels: Sequence[str] = ()
    contact_required: bool = False

    def to_proto(self) -> pb.Eligibility:
        msg = pb.Eligibility(
            excluded_offers=list(self.excluded_offers),
            excluded_channels=list(self.excluded_channels),
            contact_required=self.contact_required,
        )
        if self.offers is not None:
            msg.eligible_offers.SetInParent()
            msg.eligible_offers.names.extend(self.offers)
        if self.channels is not None:
            msg.eligible_channels.SetInParent()
            msg.eligible_channels.names.extend(self.channels)
        return msg


@dataclass(frozen=True)
class Decision:
    event_id: str
    customer_id: str
    offer: str
    channel: str
    action_index: int
    propensity: float
    explored: bool
    source: str
    model_id: str
    model_version: str
    probabilities: list[float] = field(default_factory=list)

    @property
    def contact(self) -> bool:
        return self.action_index != 0

    @classmethod
    def from_proto(cls, d: pb.Decision, model: pb.ModelRef) -> Decision:
        return cls(
            event_id=d.event_id,
            customer_id=d.customer_id,
            offer=d.action.offer_id,
            channel=d.action.channel,
            action_index=d.action_index,
            propensity=d.propensity,
            explored=d.explored,
            source=_source_name(d.source),
            model_id=model.model_id,
            model_version=model.model_version,
            probabilities=list(d.probabilities),
        )


@dataclass(frozen=True)
class FeatureInfo:
    """One feature of the schema: its meaning, unit, encoding and valid range [min, max]."""

    name: str
    description: str
    unit: str
    encoding: str
    group: str
    min: float
    max: float


@dataclass(frozen=True)
class PolicyInfo:
    model_id: str
    model_version: str
    action_names: list[str]
    actions: list[ActionPair]
    feature_names: list[str]
    exploration: str
    exploration_param: float
    learning_mode: str
    # The active bundle's activation, and the model id RollbackBundle would restore (None
    # when there is nothing to roll back to) with how many successive rollbacks would succeed.
    activation: int = 0
    rollback_target: str | None = None
    rollback_depth: int = 0
    # Each feature's meaning and valid range, in the order of feature_names.
    features: list[FeatureInfo] = field(default_factory=list)


@dataclass(frozen=True)
class Outcome:
    event_id: str
    reward: float
    purchase: bool | None = None
    spend: float | None = None
    opt_out: bool | None = None

    def to_proto(self) -> pb.Outcome:
        msg = pb.Outcome(event_id=self.event_id, reward=self.reward)
        if self.purchase is not None:
            msg.purchase = self.purchase
        if self.spend is not None:
            msg.spend = self.spend
        if self.opt_out is not None:
            msg.opt_out = self.opt_out
        return msg


@dataclass(frozen=True)
class PackedBatch:
    """A DecideBatch answer as columns (row order); ``probabilities`` is (rows, actions)
    when requested. Map ``action_index`` to (offer, channel) with ``PolicyInfo.actions``."""

    event_ids: list[str]
    action_index: np.ndarray
    propensity: np.ndarray
    explored: np.ndarray
    source: list[str]
    probabilities: np.ndarray | None
    model_id: str
    model_version: str


def _source_name(code: int) -> str:
    return pb.DecisionSource.Name(code).removeprefix("DECISION_SOURCE_").lower()


def _batch_request(
    customer_ids: Sequence[str],
    features: np.ndarray,
    event_ids: Sequence[str],
    feature_names: Sequence[str],
    eligibility: Eligibility | Sequence[Eligibility] | None,
    baselines: Sequence[ActionPair],
) -> pb.DecideBatchRequest:
    matrix = np.asarray(features, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"features must be 2-D (rows x features), got shape {matrix.shape}")
    # Ids generated here, not by the server, so that a retried call is a replay.
    ids = list(event_ids)
    if not ids:
        ids = new_event_ids(len(customer_ids))
    elif not all(ids):
        fresh = iter(new_event_ids(len(ids)))
        ids = [e or next(fresh) for e in ids]
    req = pb.DecideBatchRequest(
        event_ids=ids,
        customer_ids=list(customer_ids),
        features=matrix.ravel().tolist(),
        n_features=matrix.shape[1],
        feature_names=list(feature_names),
        baseline_actions=[pb.Action(offer_id=o, channel=c) for o, c in baselines],
    )
    if isinstance(eligibility, Eligibility):
        req.shared_eligibility.CopyFrom(eligibility.to_proto())
    elif eligibility is not None:
        req.row_eligibilities.rows.extend(e.to_proto() for e in eligibility)
    return req


def _action(pair: ActionPair | None) -> pb.Action | None:
    return None if pair is None else pb.Action(offer_id=pair[0], channel=pair[1])


class DecisionClient:
    """Blocking client; ``token`` sends bearer auth, ``root_certificates`` turns on TLS.
    UNAVAILABLE is retried (:data:`RETRY_POLICY`); decisions without event ids get
    client-generated ones (:func:`server.ids.new_event_ids`), so retries are idempotent."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        root_certificates: bytes | str | Path | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        if root_certificates is not None:
            certs = (
                root_certificates
                if isinstance(root_certificates, bytes)
                else Path(root_certificates).read_bytes()
            )
            self.channel = grpc.secure_channel(
                target, grpc.ssl_channel_credentials(certs), options=CHANNEL_OPTIONS
            )
        else:
            self.channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self.timeout_s = timeout_s
        self._metadata = None if token is None else (("authorization", f"Bearer {token}"),)
        self.stub = pb_grpc.DecisionServiceStub(self.channel)
        self.admin = pb_grpc.DecisionAdminStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> DecisionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _kw(self, timeout_s: float | None) -> dict[str, object]:
        return {
            "timeout": self.timeout_s if timeout_s is None else timeout_s,
            "metadata": self._metadata,
        }

    # ------------------------------------------------------------------ decisions
    def decide(
        self,
        customer_id: str,
        features: Sequence[float] | Mapping[str, float] | np.ndarray,
        *,
        event_id: str = "",
        eligibility: Eligibility | None = None,
        baseline: ActionPair | None = None,
        return_probabilities: bool = False,
        timeout_s: float | None = None,
    ) -> Decision:
        """One decision; ``features`` in schema order, or a name -> value mapping. Without
        ``event_id`` a time-ordered id is generated here (and returned in the decision)."""
        req = pb.DecideRequest(
            event_id=event_id or new_event_ids(1)[0],
            customer_id=customer_id,
            eligibility=None if eligibility is None else eligibility.to_proto(),
            baseline_action=_action(baseline),
            return_probabilities=return_probabilities,
        )
        if isinstance(features, Mapping):
            req.named.values.update({k: float(v) for k, v in features.items()})
        else:
            req.dense.values.extend(np.asarray(features, dtype=np.float32).tolist())
        resp = self.stub.Decide(req, **self._kw(timeout_s))
        return Decision.from_proto(resp.decision, resp.model)

    def decide_batch(
        self,
        customer_ids: Sequence[str],
        features: np.ndarray,
        *,
        event_ids: Sequence[str] = (),
        feature_names: Sequence[str] = (),
        eligibility: Eligibility | Sequence[Eligibility] | None = None,
        baselines: Sequence[ActionPair] = (),
        return_probabilities: bool = False,
        timeout_s: float | None = None,
    ) -> list[Decision]:
        """One decision per row of ``features`` (rows x features, schema order unless
        ``feature_names``); ``eligibility`` shared by all rows or one per row."""
        req = _batch_request(
            customer_ids, features, event_ids, feature_names, eligibility, baselines
        )
        req.return_probabilities = return_probabilities
        resp = self.stub.DecideBatch(req, **self._kw(timeout_s))
        return [Decision.from_proto(d, resp.model) for d in resp.decisions]

    def decide_batch_packed(
        self,
        customer_ids: Sequence[str],
        features: np.ndarray,
        *,
        event_ids: Sequence[str] = (),
        feature_names: Sequence[str] = (),
        eligibility: Eligibility | Sequence[Eligibility] | None = None,
        baselines: Sequence[ActionPair] = (),
        return_probabilities: bool = False,
        timeout_s: float | None = None,
    ) -> PackedBatch:
        """As :meth:`decide_batch`, answered as columns (``DecideBatchRequest.packed``): the
        fast path for large batches."""
        req = _batch_request(
            customer_ids, features, event_ids, feature_names, eligibility, baselines
        )
        req.return_probabilities = return_probabilities
        req.packed = True
        resp = self.stub.DecideBatch(req, **self._kw(timeout_s))
        p = resp.packed
        n = len(p.event_ids)
        probs = np.array(p.probabilities, dtype=np.float64)
        return PackedBatch(
            event_ids=list(p.event_ids),
            action_index=np.array(p.action_indices, dtype=np.int64),
            propensity=np.array(p.propensities, dtype=np.float64),
            explored=np.array(p.explored, dtype=bool),
            source=[_source_name(code) for code in p.sources],
            probabilities=probs.reshape(n, -1) if probs.size else None,
            model_id=resp.model.model_id,
            model_version=resp.model.model_version,
        )

    # ------------------------------------------------------------------ outcomes
    def report_outcome(
        self,
        event_id: str,
        reward: float,
        *,
        purchase: bool | None = None,
        spend: float | None = None,
        opt_out: bool | None = None,
        timeout_s: float | None = None,
    ) -> bool:
        """Record an outcome; True when an identical one was already recorded."""
        outcome = Outcome(event_id, reward, purchase, spend, opt_out).to_proto()
        resp = self.stub.ReportOutcome(
            pb.ReportOutcomeRequest(outcome=outcome), **self._kw(timeout_s)
        )
        return resp.duplicate

    def report_outcomes(
        self, outcomes: Sequence[Outcome], *, timeout_s: float | None = None
    ) -> tuple[int, int]:
        """Record many outcomes atomically; returns (recorded, duplicates)."""
        req = pb.ReportOutcomesRequest(outcomes=[o.to_proto() for o in outcomes])
        resp = self.stub.ReportOutcomes(req, **self._kw(timeout_s))
        return resp.recorded, resp.duplicates

    # ------------------------------------------------------------------ info and admin
    def policy_info(self, *, timeout_s: float | None = None) -> PolicyInfo:
        resp = self.stub.GetPolicyInfo(pb.GetPolicyInfoRequest(), **self._kw(timeout_s))
        e = resp.exploration
        mode = pb.ExplorationMode.Name(e.mode).removeprefix("EXPLORATION_MODE_").lower()
        param = (
            e.epsilon
            if e.HasField("epsilon")
            else e.temperature
            if e.HasField("temperature")
            else 0.0
        )
        return PolicyInfo(
            model_id=resp.model.model_id,
            model_version=resp.model.model_version,
            action_names=[a.name for a in resp.actions],
            actions=[(a.action.offer_id, a.action.channel) for a in resp.actions],
            feature_names=list(resp.feature_names),
            exploration=mode,
            exploration_param=param,
            learning_mode=pb.LearningMode.Name(e.learning_mode)
            .removeprefix("LEARNING_MODE_")
            .lower(),
            activation=resp.active.seq,
            rollback_target=(
                resp.rollback_target.model.model_id if resp.HasField("rollback_target") else None
            ),
            rollback_depth=resp.rollback_depth,
            features=[
                FeatureInfo(f.name, f.description, f.unit, f.encoding, f.group, f.min, f.max)
                for f in resp.features
            ],
        )

    def load_bundle(self, path: str | Path, *, timeout_s: float | None = None) -> str:
        """Hot-reload a bundle (a path on the server); returns the new active model id."""
        resp = self.admin.LoadBundle(pb.LoadBundleRequest(path=str(path)), **self._kw(timeout_s))
        return resp.active_model.model_id

    def rollback(self, *, timeout_s: float | None = None) -> str:
        """Reactivate the previous bundle; returns the active model id."""
        resp = self.admin.RollbackBundle(pb.RollbackBundleRequest(), **self._kw(timeout_s))
        return resp.active_model.model_id

    def health(self, service: str = "", *, timeout_s: float | None = None) -> str:
        """``SERVING``, ``NOT_SERVING``... of the server or of one service."""
        resp = self.health_stub.Check(
            health_pb2.HealthCheckRequest(service=service), **self._kw(timeout_s)
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
