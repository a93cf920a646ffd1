"""gRPC servicers of ``cvm.v1``: request validation, decisions, logging, outcomes, admin.

Requests become arrays (:mod:`server.model` decides on them), decisions are committed to the
decision log before the response is sent, and every invalid request is answered with a status
code and a message naming the field, without storing anything.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from cvm_rl.bundle import BundleError, load_bundle
from cvm_rl.logs.store import (
    Activation,
    DecisionBatch,
    DecisionLog,
    EventConflict,
    LogBusy,
    OutcomeRecord,
    StoredDecision,
    UnknownEvents,
    now_us,
)
from server.generated.cvm.v1 import decision_pb2 as pb
from server.generated.cvm.v1 import decision_pb2_grpc as pb_grpc
from server.metrics import ServerMetrics
from server.model import Exploration, ServingModel

log = logging.getLogger("cvm_rl.server")

MAX_EVENT_ID_LENGTH = 128
BUSY_RETRY_S = 0.0002  # a group commit takes about a millisecond; poll well inside that
DEFAULT_MAX_BATCH_ROWS = 10_000
EXPLORATION_ENUM = {
    "epsilon": pb.EXPLORATION_MODE_EPSILON,
    "softmax": pb.EXPLORATION_MODE_SOFTMAX,
    "policy": pb.EXPLORATION_MODE_POLICY,
}
LEARNING_ENUM = {"online": pb.LEARNING_MODE_ONLINE, "apprentice": pb.LEARNING_MODE_APPRENTICE}


class RequestError(Exception):
    """A request the server refuses: a status code and a message naming the field."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


# --------------------------------------------------------------------------- state
class GroupCommitWriter:
    """Writes the decisions of requests that arrive together in one transaction.

    A request queues its batch and awaits; the first one schedules a flush for the next turn
    of the event loop, by which time concurrent requests have queued theirs. The flush runs
    on the loop thread (a SQLite commit of a few hundred rows takes well under a
    millisecond; a thread hop would cost more in GIL hand-offs than it saves), and every
    request is answered only after the transaction holding its rows has committed.
    """

    def __init__(self, decision_log: DecisionLog) -> None:
        self.log = decision_log
        self._pending: list[tuple[DecisionBatch, asyncio.Future[dict[str, StoredDecision]]]] = []

    async def insert(self, batch: DecisionBatch) -> dict[str, StoredDecision]:
        """Store ``batch``; returns the stored decisions of replayed ids (see
        :meth:`DecisionLog.insert_decisions`), or raises its :class:`EventConflict`."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, StoredDecision]] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((batch, future))
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        try:
            results = self.log.insert_decision_batches([batch for batch, _ in pending], wait=False)
        except LogBusy:
            # Another worker is committing: keep serving and retry shortly (with whatever
            # else queues meanwhile), rather than sleep in SQLite's busy handler.
            self._pending = pending + self._pending
            asyncio.get_running_loop().call_later(BUSY_RETRY_S, self._flush)
            return
        except Exception as exc:  # e.g. the disk is full: every waiting request fails
            for _, future in pending:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(pending, results, strict=True):
            if future.done():  # the caller was cancelled; its rows are stored all the same
                continue
            if isinstance(result, EventConflict):
                future.set_exception(result)
            else:
                future.set_result(result)


def record_activation(decision_log: DecisionLog, model: ServingModel, reason: str) -> Activation:
    """Make ``model`` with its exploration settings the log's active model."""
    e = model.exploration
    return decision_log.activate(
        model.record,
        learning_mode=e.learning_mode,
        exploration=e.mode,
        exploration_param=e.param,
        reason=reason,
    )


class ServingState:
    """The active model, its history for rollback, the log, and the metrics of one process.

    With a log, activations are recorded in it and every process serving the same log
    follows the newest one (:meth:`follow`), so a hot reload sent to one worker reaches all.
    """

    def __init__(
        self,
        model: ServingModel,
        decision_log: DecisionLog | None,
        metrics: ServerMetrics,
        *,
        max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
        log_probabilities: bool = True,
        reason: str = "start",
        adopt: Activation | None = None,
    ) -> None:
        if max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be >= 1, got {max_batch_rows}")
        self.log = decision_log
        self.metrics = metrics
        self.max_batch_rows = max_batch_rows
        self.log_probabilities = log_probabilities
        self.exploration = model.exploration
        self._local: list[Activation] = []  # activations of this process when there is no log
        self._refused = 0  # newest activation made elsewhere that this process could not load
        self.writer = None if decision_log is None else GroupCommitWriter(decision_log)
        self.reload_lock = asyncio.Lock()
        if adopt is not None:
            model.activation = adopt.seq
        else:
            self._record_activation(model, reason)
        self._set_current(model)

    @property
    def current(self) -> ServingModel:
        return self._current

    def _set_current(self, model: ServingModel) -> None:
        self._current = model
        exploration = model.exploration
        self.metrics.set_model(
            model.model_id, model.version, exploration.mode, exploration.learning_mode
        )

    def _record_activation(self, model: ServingModel, reason: str) -> None:
        e = model.exploration
        if self.log is not None:
            act = record_activation(self.log, model, reason)
        else:
            seq = len(self._local) + 1
            act = Activation(
                seq, model.model_id, model.record.path, e.learning_mode, e.mode, e.param, reason
            )
            self._local.append(act)
        model.activation = act.seq

    def activations(self) -> list[Activation]:
        return self.log.activations() if self.log is not None else list(self._local)

    def load(self, path: str, reason: str) -> ServingModel:
        """Load and validate a bundle, record it and make it current (ValueError if refused)."""
        try:
            bundle = load_bundle(path)
            model = ServingModel(bundle, self.exploration)
        except (BundleError, ValueError) as exc:
            self.metrics.reloads.labels(reason, "refused").inc()
            raise ValueError(str(exc)) from None
        self._record_activation(model, reason)
        self._set_current(model)
        self.metrics.reloads.labels(reason, "ok").inc()
        log.info(
            "model_activated",
            extra={"model_id": model.model_id, "path": path, "reason": reason},
        )
        return model

    def rollback_target(self) -> Activation:
        """The newest earlier activation of a different bundle (LookupError when none)."""
        current = self.current
        for act in reversed(self.activations()):
            if act.seq < current.activation and act.model_id != current.model_id:
                return act
        raise LookupError("no earlier bundle to roll back to")

    def follow(self) -> None:
        """Adopt the log's newest activation if another process made one."""
        if self.log is None:
            return
        latest = self.log.latest_activation()
        if latest <= max(self.current.activation, self._refused):
            return
        act = self.log.activations()[-1]
        exploration = Exploration(act.exploration, act.exploration_param, act.learning_mode)  # type: ignore[arg-type]
        try:
            model = ServingModel(load_bundle(act.path), exploration, activation=act.seq)
        except (BundleError, ValueError) as exc:
            self.metrics.reloads.labels("follow", "refused").inc()
            log.error("follow_refused", extra={"activation": act.seq, "error": str(exc)})
            # Don't retry it on every poll; the current model keeps its own activation, so
            # its decisions stay attributed to it.
            self._refused = act.seq
            return
        self.exploration = exploration
        self._set_current(model)
        self.metrics.reloads.labels("follow", "ok").inc()
        log.info("model_followed", extra={"model_id": model.model_id, "activation": act.seq})

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


# --------------------------------------------------------------------------- parsing
def _action_index(model: ServingModel, action: pb.Action, field: str) -> int:
    if bool(action.offer_id) != bool(action.channel):
        raise invalid(
            f"{field}: offer_id and channel must both be set, or both empty for no contact"
        )
    index = model.action_index.get((action.offer_id, action.channel))
    if index is None:
        if action.offer_id not in model.offer_columns:
            raise invalid(
                f"{field}.offer_id: unknown offer {action.offer_id!r}; known: {model.offers}"
            )
        raise invalid(
            f"{field}.channel: unknown channel {action.channel!r}; known: {model.channels}"
        )
    return index


def _names(names: Sequence[str], known: dict[str, np.ndarray], what: str, field: str) -> None:
    for i, name in enumerate(names):
        if name not in known:
            raise invalid(f"{field}[{i}]: unknown {what} {name!r}; known: {list(known)}")


def eligibility_mask(model: ServingModel, elig: pb.Eligibility | None, field: str) -> np.ndarray:
    """(A,) boolean mask of the actions ``elig`` allows (no contact unless contact_required)."""
    mask = np.ones(model.n_actions, dtype=bool)
    if elig is None:
        return mask
    for allow_field, excluded_field, columns, what in (
        ("eligible_offers", "excluded_offers", model.offer_columns, "offer"),
        ("eligible_channels", "excluded_channels", model.channel_columns, "channel"),
    ):
        if elig.HasField(allow_field):
            names = list(getattr(elig, allow_field).names)
            _names(names, columns, what, f"{field}.{allow_field}.names")
            allowed = np.zeros(model.n_actions, dtype=bool)
            allowed[0] = True
            for name in names:
                allowed |= columns[name]
            mask &= allowed
        excluded = list(getattr(elig, excluded_field))
        _names(excluded, columns, what, f"{field}.{excluded_field}")
        for name in excluded:
            mask &= ~columns[name]
    if elig.contact_required:
        mask[0] = False
        if not mask.any():
            raise invalid(
                f"{field}: no eligible action: contact_required is set but the allow-lists "
                "and exclusions leave no (offer, channel) pair"
            )
    return mask


def _check_finite(features: np.ndarray, names: list[str], field: str) -> None:
    bad = ~np.isfinite(features)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        where = f"row {row}, " if features.shape[0] > 1 else ""
        raise invalid(
            f"{field}: {where}feature {names[col]!r} must be finite, got {features[row, col]}"
        )


def new_event_ids(n: int) -> list[str]:
    """``n`` time-ordered 128-bit hex ids: 48 bits of Unix milliseconds, then 80 random bits
    (the layout of UUIDv7). Ids that grow with time keep the log's event-id index
    append-mostly; random ids would touch a different index page per row on every commit."""
    millis = f"{time.time_ns() // 1_000_000:012x}"
    noise = os.urandom(10 * n).hex()
    return [millis + noise[i : i + 20] for i in range(0, 20 * n, 20)]


def _event_id(event_id: str, field: str) -> str:
    if not event_id:
        return new_event_ids(1)[0]
    if len(event_id) > MAX_EVENT_ID_LENGTH:
        raise invalid(f"{field}: at most {MAX_EVENT_ID_LENGTH} characters, got {len(event_id)}")
    return event_id


@dataclass
class ParsedRows:
    """Validated request rows as arrays."""

    event_ids: list[str]
    customer_ids: list[str]
    features: np.ndarray  # (N, F) float32
    eligible: np.ndarray  # (N, A) bool
    baseline: np.ndarray  # (N,) int, -1 = none
    return_probabilities: bool


def parse_decide(model: ServingModel, req: pb.DecideRequest) -> ParsedRows:
    if not req.customer_id:
        raise invalid("customer_id: required (the id outcomes and exports join on)")
    event_id = _event_id(req.event_id, "event_id")
    which = req.WhichOneof("features")
    names = model.feature_names
    if which is None:
        raise invalid("features: required: set dense (values in schema order) or named")
    if which == "dense":
        values = req.dense.values
        if len(values) != model.n_features:
            raise invalid(
                f"features.dense.values: expected {model.n_features} values in schema order "
                f"(see GetPolicyInfo.feature_names), got {len(values)}"
            )
        features = np.array(values, dtype=np.float32)[None, :]
        _check_finite(features, names, "features.dense.values")
    else:
        named = req.named.values
        missing = [n for n in names if n not in named]
        unknown = sorted(k for k in named if k not in model.feature_index)
        if missing or unknown:
            raise invalid(
                f"features.named.values: must hold exactly the schema's {model.n_features} "
                f"names; missing {missing}, unknown {unknown}"
            )
        features = np.array([[named[n] for n in names]], dtype=np.float32)
        _check_finite(features, names, "features.named.values")
    elig = req.eligibility if req.HasField("eligibility") else None
    mask = eligibility_mask(model, elig, "eligibility")
    baseline = (
        _action_index(model, req.baseline_action, "baseline_action")
        if req.HasField("baseline_action")
        else -1
    )
    return ParsedRows(
        [event_id],
        [req.customer_id],
        features,
        mask[None, :],
        np.array([baseline]),
        req.return_probabilities,
    )


def parse_batch(model: ServingModel, req: pb.DecideBatchRequest, max_rows: int) -> ParsedRows:
    n = len(req.customer_ids)
    if n == 0:
        raise invalid("customer_ids: at least one row is required (one customer id per row)")
    if n > max_rows:
        raise invalid(f"customer_ids: {n} rows exceed the batch limit of {max_rows}")
    for i, cid in enumerate(req.customer_ids):
        if not cid:
            raise invalid(f"customer_ids[{i}]: required (the id outcomes and exports join on)")
    f = model.n_features
    if req.n_features != f:
        raise invalid(
            f"n_features: expected {f} (the schema's feature count), got {req.n_features}"
        )
    if len(req.features) != n * f:
        raise invalid(
            f"features: expected {n} rows x {f} features = {n * f} values, got {len(req.features)}"
        )
    features = np.array(req.features, dtype=np.float32).reshape(n, f)
    names = model.feature_names
    if req.feature_names:
        given = list(req.feature_names)
        if sorted(given) != sorted(names):
            missing = [x for x in names if x not in given]
            unknown = [x for x in given if x not in model.feature_index]
            raise invalid(
                f"feature_names: must be a permutation of the schema's {f} names; "
                f"missing {missing}, unknown {unknown}, duplicated "
                f"{sorted({x for x in given if given.count(x) > 1})}"
            )
        ordered = np.empty_like(features)
        ordered[:, [model.feature_index[x] for x in given]] = features
        features = ordered
    _check_finite(features, names, "features")
    if req.event_ids:
        if len(req.event_ids) != n:
            raise invalid(
                f"event_ids: expected 0 or {n} entries (one per row), got {len(req.event_ids)}"
            )
        event_ids = [_event_id(e, f"event_ids[{i}]") for i, e in enumerate(req.event_ids)]
        if len(set(event_ids)) != n:
            seen: set[str] = set()
            dup = next(e for e in event_ids if e in seen or seen.add(e))  # type: ignore[func-returns-value]
            raise invalid(f"event_ids: must be distinct within a batch; {dup!r} repeats")
    else:
        event_ids = new_event_ids(n)
    which = req.WhichOneof("eligibility")
    if which == "row_eligibilities":
        rows = req.row_eligibilities.rows
        if len(rows) != n:
            raise invalid(
                f"row_eligibilities.rows: expected {n} entries (one per row), got {len(rows)}"
            )
        mask = np.stack(
            [eligibility_mask(model, e, f"row_eligibilities.rows[{i}]") for i, e in enumerate(rows)]
        )
    else:
        shared = req.shared_eligibility if which == "shared_eligibility" else None
        mask = np.broadcast_to(
            eligibility_mask(model, shared, "shared_eligibility"), (n, model.n_actions)
        )
    if req.baseline_actions:
        if len(req.baseline_actions) != n:
            raise invalid(
                f"baseline_actions: expected 0 or {n} entries (one per row), "
                f"got {len(req.baseline_actions)}"
            )
        baseline = np.array(
            [
                _action_index(model, a, f"baseline_actions[{i}]")
                for i, a in enumerate(req.baseline_actions)
            ]
        )
    else:
        baseline = np.full(n, -1)
    return ParsedRows(
        event_ids, list(req.customer_ids), features, mask, baseline, req.return_probabilities
    )


@dataclass
class Served:
    """What a request is answered with, per row (replays already substituted)."""

    event_ids: list[str]
    customer_ids: list[str]
    action: np.ndarray
    propensity: np.ndarray
    explored: np.ndarray
    source: np.ndarray  # DecisionSource codes
    probabilities: np.ndarray  # (N, A)

    def fill_messages(
        self, add: Callable[..., pb.Decision], model: ServingModel, with_probabilities: bool
    ) -> None:
        """One Decision per row through ``add`` (a repeated field's ``add``)."""
        actions = _action_protos(tuple(model.actions))
        columns = zip(
            self.event_ids,
            self.customer_ids,
            self.action.tolist(),
            self.propensity.tolist(),
            self.explored.tolist(),
            self.source.tolist(),
            strict=True,
        )
        for i, (event_id, customer_id, a, p, x, source) in enumerate(columns):
            decision = add(
                event_id=event_id,
                customer_id=customer_id,
                action=actions[a],
                action_index=a,
                propensity=p,
                explored=x,
                source=source,
            )
            if with_probabilities:
                decision.probabilities.extend(self.probabilities[i].tolist())

    def fill_packed(self, packed: pb.PackedDecisions, with_probabilities: bool) -> None:
        """The rows as columns: a few list copies instead of a message per row."""
        packed.event_ids.extend(self.event_ids)
        packed.action_indices.extend(self.action.tolist())
        packed.propensities.extend(self.propensity.tolist())
        packed.explored.extend(self.explored.tolist())
        packed.sources.extend(self.source.tolist())
        if with_probabilities:
            packed.probabilities.extend(self.probabilities.ravel().tolist())


# --------------------------------------------------------------------------- servicers
_T = TypeVar("_T")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[_T]]


def _rpc(method: str) -> Callable[[Handler[_T]], Handler[_T]]:
    """Metrics, deadline check and error mapping around a handler: a RequestError becomes its
    status; anything else is logged and answered INTERNAL (the server keeps serving)."""

    def wrap(fn: Handler[_T]) -> Handler[_T]:
        @functools.wraps(fn)
        async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> _T:
            metrics: ServerMetrics = self.state.metrics
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                _check_deadline(context)
                return await fn(self, request, context)
            except RequestError as exc:
                code = exc.code
                await context.abort(exc.code, exc.message)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                code = grpc.StatusCode.INTERNAL
                log.exception("internal_error", extra={"method": method})
                await context.abort(
                    grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log"
                )
            finally:
                metrics.requests.labels(method, code.name).inc()
                metrics.latency.labels(method).observe(time.perf_counter() - start)
            raise AssertionError("unreachable: abort raises")

        return handler

    return wrap


def _check_deadline(context: grpc.aio.ServicerContext) -> None:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise RequestError(
            grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the decision"
        )


@functools.lru_cache(maxsize=16)
def _action_protos(actions: tuple[tuple[str, str], ...]) -> list[pb.Action]:
    """The catalog as Action messages, built once per catalog."""
    return [pb.Action(offer_id=o, channel=c) for o, c in actions]


def model_ref(model: ServingModel) -> pb.ModelRef:
    return pb.ModelRef(model_id=model.model_id, model_version=model.version)


class DecisionService(pb_grpc.DecisionServiceServicer):
    """``cvm.v1.DecisionService`` over a :class:`ServingState`."""

    def __init__(self, state: ServingState) -> None:
        self.state = state

    async def _decide(
        self, model: ServingModel, rows: ParsedRows, context: grpc.aio.ServicerContext
    ) -> tuple[Served, dict[str, StoredDecision]]:
        draws = model.decide(rows.event_ids, rows.features, rows.eligible)
        n = len(rows.event_ids)
        apprentice = model.exploration.learning_mode == "apprentice"
        if apprentice:
            missing = np.flatnonzero(rows.baseline < 0)
            if missing.size:
                field = "baseline_action" if n == 1 else f"baseline_actions[{missing[0]}]"
                raise invalid(f"{field}: required in apprentice learning mode (it is executed)")
            ineligible = ~rows.eligible[np.arange(n), rows.baseline]
            if ineligible.any():
                i = int(np.flatnonzero(ineligible)[0])
                field = "baseline_action" if n == 1 else f"baseline_actions[{i}]"
                raise invalid(
                    f"{field}: {model.action_names[rows.baseline[i]]!r} is not eligible under "
                    "the request's eligibility"
                )
            served, propensity = rows.baseline, np.ones(n)
        else:
            served, propensity = draws.action, draws.propensity
        replayed: dict[str, StoredDecision] = {}
        if self.state.writer is not None:
            batch = DecisionBatch(
                event_ids=rows.event_ids,
                customer_ids=rows.customer_ids,
                decided_at_us=np.full(n, now_us()),
                activation=model.activation,
                action_index=served,
                propensity=propensity,
                policy_action_index=draws.action,
                policy_propensity=draws.propensity,
                baseline_action_index=rows.baseline,
                explored=draws.explored,
                features=rows.features,
                eligible=rows.eligible,
                probabilities=draws.probabilities if self.state.log_probabilities else None,
            )
            _check_deadline(context)
            try:
                replayed = await self.state.writer.insert(batch)
            except EventConflict as exc:
                raise RequestError(grpc.StatusCode.ALREADY_EXISTS, str(exc)) from None
        source = np.full(
            n, pb.DECISION_SOURCE_BASELINE if apprentice else pb.DECISION_SOURCE_POLICY
        )
        served_rows = Served(
            rows.event_ids,
            rows.customer_ids,
            served,
            propensity,
            draws.explored,
            source,
            draws.probabilities,
        )
        explored = draws.explored
        if replayed:
            explored = explored[[e not in replayed for e in rows.event_ids]]
            self._apply_replays(served_rows, replayed)
        self.state.metrics.count_decisions(
            "baseline" if apprentice else "policy", int(explored.sum()), len(explored)
        )
        return served_rows, replayed

    def _apply_replays(self, served: Served, replayed: dict[str, StoredDecision]) -> None:
        """Answer replayed event ids with what they were answered the first time."""
        modes = {a.seq: a.learning_mode for a in self.state.activations()}
        # The draws' arrays are the log's too: answer from copies.
        served.action, served.propensity = served.action.copy(), served.propensity.copy()
        served.explored = served.explored.copy()
        served.probabilities = served.probabilities.copy()
        for i, event_id in enumerate(served.event_ids):
            stored = replayed.get(event_id)
            if stored is None:
                continue
            served.action[i] = stored.action_index
            served.propensity[i] = stored.propensity
            served.explored[i] = stored.explored
            served.source[i] = (
                pb.DECISION_SOURCE_BASELINE
                if modes.get(stored.activation) == "apprentice"
                else pb.DECISION_SOURCE_POLICY
            )
            if stored.probabilities is not None:
                served.probabilities[i] = stored.probabilities

    def _stored_model_ref(self, stored: StoredDecision, fallback: ServingModel) -> pb.ModelRef:
        """The model that made a stored decision (a replay answers with it)."""
        act = next((a for a in self.state.activations() if a.seq == stored.activation), None)
        record = None
        if act is not None and self.state.log is not None:
            record = self.state.log.models().get(act.model_id)
        if record is None:
            return model_ref(fallback)
        return pb.ModelRef(model_id=record.model_id, model_version=record.model_version)

    @_rpc("Decide")
    async def Decide(
        self, request: pb.DecideRequest, context: grpc.aio.ServicerContext
    ) -> pb.DecideResponse:
        model = self.state.current
        rows = parse_decide(model, request)
        served, replayed = await self._decide(model, rows, context)
        ref = (
            self._stored_model_ref(replayed[rows.event_ids[0]], model)
            if replayed
            else model_ref(model)
        )
        out = pb.DecideResponse(model=ref)

        def set_decision(**fields: Any) -> pb.Decision:
            out.decision.MergeFrom(pb.Decision(**fields))
            return out.decision

        served.fill_messages(set_decision, model, request.return_probabilities)
        return out

    @_rpc("DecideBatch")
    async def DecideBatch(
        self, request: pb.DecideBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.DecideBatchResponse:
        model = self.state.current
        rows = parse_batch(model, request, self.state.max_batch_rows)
        served, _ = await self._decide(model, rows, context)
        out = pb.DecideBatchResponse(model=model_ref(model))
        if request.packed:
            served.fill_packed(out.packed, request.return_probabilities)
        else:
            served.fill_messages(out.decisions.add, model, request.return_probabilities)
        return out

    async def _record(self, outcomes: Sequence[pb.Outcome], field: str) -> tuple[int, int]:
        if self.state.log is None:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this server runs without a decision log (--no-log); outcomes cannot be stored",
            )
        records = []
        seen: set[str] = set()
        for i, o in enumerate(outcomes):
            where = field if len(outcomes) == 1 and field == "outcome" else f"{field}[{i}]"
            if not o.event_id:
                raise invalid(f"{where}.event_id: required")
            if o.event_id in seen:
                raise invalid(f"{where}.event_id: {o.event_id!r} repeats within the request")
            seen.add(o.event_id)
            if not o.HasField("reward"):
                raise invalid(f"{where}.reward: required (the value the policy learns from)")
            if not np.isfinite(o.reward):
                raise invalid(f"{where}.reward: must be finite, got {o.reward}")
            if o.HasField("spend") and not (np.isfinite(o.spend) and o.spend >= 0):
                raise invalid(f"{where}.spend: must be finite and >= 0, got {o.spend}")
            reported = None
            if o.HasField("reported_at"):
                reported = _timestamp_us(o.reported_at, f"{where}.reported_at")
            records.append(
                OutcomeRecord(
                    o.event_id,
                    o.reward,
                    o.purchase if o.HasField("purchase") else None,
                    o.spend if o.HasField("spend") else None,
                    o.opt_out if o.HasField("opt_out") else None,
                    reported,
                )
            )
        try:
            recorded, duplicates = self.state.log.record_outcomes(records)
        except UnknownEvents as exc:
            raise RequestError(grpc.StatusCode.NOT_FOUND, str(exc)) from None
        except EventConflict as exc:
            raise RequestError(grpc.StatusCode.ALREADY_EXISTS, str(exc)) from None
        metrics = self.state.metrics
        if recorded:
            metrics.outcomes.labels("recorded").inc(recorded)
        if duplicates:
            metrics.outcomes.labels("duplicate").inc(duplicates)
        return recorded, duplicates

    @_rpc("ReportOutcome")
    async def ReportOutcome(
        self, request: pb.ReportOutcomeRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReportOutcomeResponse:
        if not request.HasField("outcome"):
            raise invalid("outcome: required")
        _, duplicates = await self._record([request.outcome], "outcome")
        return pb.ReportOutcomeResponse(duplicate=duplicates == 1)

    @_rpc("ReportOutcomes")
    async def ReportOutcomes(
        self, request: pb.ReportOutcomesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReportOutcomesResponse:
        if not request.outcomes:
            raise invalid("outcomes: at least one outcome is required")
        recorded, duplicates = await self._record(list(request.outcomes), "outcomes")
        return pb.ReportOutcomesResponse(recorded=recorded, duplicates=duplicates)

    @_rpc("GetPolicyInfo")
    async def GetPolicyInfo(
        self, request: pb.GetPolicyInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPolicyInfoResponse:
        return policy_info(self.state.current)


def _timestamp_us(ts: Timestamp, field: str) -> int:
    if ts.seconds < 0 or not 0 <= ts.nanos < 1_000_000_000:
        raise invalid(f"{field}: must be a valid time after 1970-01-01, got {ts}")
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def policy_info(model: ServingModel) -> pb.GetPolicyInfoResponse:
    e = model.exploration
    exploration = pb.ExplorationSettings(
        mode=EXPLORATION_ENUM[e.mode], learning_mode=LEARNING_ENUM[e.learning_mode]
    )
    if e.mode == "epsilon":
        exploration.epsilon = e.param
    elif e.mode == "softmax":
        exploration.temperature = e.param
    return pb.GetPolicyInfoResponse(
        model=model_ref(model),
        actions=[
            pb.CatalogAction(index=i, name=name, action=pb.Action(offer_id=o, channel=c))
            for i, (name, (o, c)) in enumerate(zip(model.action_names, model.actions, strict=True))
        ],
        feature_names=model.feature_names,
        exploration=exploration,
    )


class AdminService(pb_grpc.DecisionAdminServicer):
    """``cvm.v1.DecisionAdmin``: hot reload and rollback of the served bundle."""

    def __init__(self, state: ServingState) -> None:
        self.state = state

    @_rpc("LoadBundle")
    async def LoadBundle(
        self, request: pb.LoadBundleRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoadBundleResponse:
        if not request.path:
            raise invalid("path: required (a bundle directory on the server)")
        if not Path(request.path).exists():
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"path: {request.path} does not exist")
        loop = asyncio.get_running_loop()
        async with self.state.reload_lock:
            try:
                model = await loop.run_in_executor(None, self.state.load, request.path, "load")
            except ValueError as exc:
                log.warning("model_refused", extra={"path": request.path, "error": str(exc)})
                raise invalid(
                    f"path: bundle refused, the active model keeps serving: {exc}"
                ) from None
        return pb.LoadBundleResponse(active_model=model_ref(model))

    @_rpc("RollbackBundle")
    async def RollbackBundle(
        self, request: pb.RollbackBundleRequest, context: grpc.aio.ServicerContext
    ) -> pb.RollbackBundleResponse:
        loop = asyncio.get_running_loop()
        async with self.state.reload_lock:
            try:
                target = self.state.rollback_target()
            except LookupError as exc:
                raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None
            try:
                model = await loop.run_in_executor(None, self.state.load, target.path, "rollback")
            except ValueError as exc:
                raise RequestError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"the previous bundle {target.model_id} at {target.path} no longer "
                    f"loads: {exc}",
                ) from None
        return pb.RollbackBundleResponse(active_model=model_ref(model))
