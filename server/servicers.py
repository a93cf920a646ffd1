"""The gRPC servicers of ``cvm.v1``: ``DecisionService`` (decisions, outcomes, policy info)
and ``DecisionAdmin`` (hot reload and rollback), over one process's :class:`ServingState`.

Requests become arrays (:mod:`server.parsing`), :mod:`server.model` decides on them, the
decisions are committed to the decision log (:mod:`server.writer`) before the response is
built (:mod:`server.responses`). Every handler wears :func:`server.errors.rpc`, so an invalid
request is answered with a status and a message naming the field, without storing anything;
metrics are counted for every call by :class:`server.interceptors.MetricsInterceptor`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import grpc
import numpy as np

from cvm_rl.logs.schema import LearningMode
from cvm_rl.logs.store import DecisionBatch, EventConflict, StoredDecision, UnknownEvents, now_us
from server.errors import RequestError, check_deadline, invalid, rpc, shown
from server.generated.cvm.v1 import decision_pb2 as pb
from server.generated.cvm.v1 import decision_pb2_grpc as pb_grpc
from server.model import ServingModel
from server.parsing import ParsedRows, confined_bundle, parse_batch, parse_decide, parse_outcomes
from server.responses import Served, model_ref, policy_info
from server.state import ServingState

log = logging.getLogger("cvm_rl.server")


class DecisionService(pb_grpc.DecisionServiceServicer):
    """``cvm.v1.DecisionService`` over a :class:`ServingState`."""

    def __init__(self, state: ServingState) -> None:
        self.state = state

    async def _decide(
        self, model: ServingModel, rows: ParsedRows, context: grpc.aio.ServicerContext
    ) -> tuple[Served, dict[str, StoredDecision]]:
        draws = model.decide(rows.event_ids, rows.features, rows.eligible)
        n = len(rows.event_ids)
        apprentice = model.exploration.learning_mode == LearningMode.APPRENTICE
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
            check_deadline(context)
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
                if modes.get(stored.activation) == LearningMode.APPRENTICE
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

    @rpc
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
        decision = served.message(0, model, request.return_probabilities)
        return pb.DecideResponse(model=ref, decision=decision)

    @rpc
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
        if self.state.writer is None:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this server runs without a decision log (--no-log); outcomes cannot be stored",
            )
        records = parse_outcomes(outcomes, field)
        try:
            recorded, duplicates = await self.state.writer.record_outcomes(records)
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

    @rpc
    async def ReportOutcome(
        self, request: pb.ReportOutcomeRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReportOutcomeResponse:
        if not request.HasField("outcome"):
            raise invalid("outcome: required")
        _, duplicates = await self._record([request.outcome], "outcome")
        return pb.ReportOutcomeResponse(duplicate=duplicates == 1)

    @rpc
    async def ReportOutcomes(
        self, request: pb.ReportOutcomesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReportOutcomesResponse:
        if not request.outcomes:
            raise invalid("outcomes: at least one outcome is required")
        recorded, duplicates = await self._record(list(request.outcomes), "outcomes")
        return pb.ReportOutcomesResponse(recorded=recorded, duplicates=duplicates)

    @rpc
    async def GetPolicyInfo(
        self, request: pb.GetPolicyInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPolicyInfoResponse:
        state = self.state
        return policy_info(state.current, state.history(), state.model_version)


class AdminService(pb_grpc.DecisionAdminServicer):
    """``cvm.v1.DecisionAdmin``: hot reload and rollback of the served bundle."""

    def __init__(self, state: ServingState) -> None:
        self.state = state

    @rpc
    async def LoadBundle(
        self, request: pb.LoadBundleRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoadBundleResponse:
        root = self.state.bundle_root
        if root is None:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION, "this server has no bundle root to load from"
            )
        resolved = confined_bundle(request.path, root)
        if not resolved.exists():
            raise RequestError(
                grpc.StatusCode.NOT_FOUND,
                f"path: {shown(request.path)} does not exist under the bundle root",
            )
        path = str(resolved)
        loop = asyncio.get_running_loop()
        async with self.state.reload_lock:
            try:
                model = await loop.run_in_executor(None, self.state.load, path, "load")
            except ValueError as exc:
                log.warning("model_refused", extra={"path": path, "error": str(exc)})
                raise invalid(
                    f"path: bundle refused, the active model keeps serving: {exc}"
                ) from None
        return pb.LoadBundleResponse(active_model=model_ref(model))

    @rpc
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
