"""The serving state of one process: the active model, its activation history (for rollback
and for following reloads made by other workers), the log writer and the metrics.

The rollback history is a stack derived from the activations alone (the log's
``activations`` table with a log, this process's own list without), so every worker on one
log sees the same history: ``start`` and ``load`` push their bundle (a bundle equal to the
top replaces it), ``rollback`` pops the bundle it leaves. At most :data:`HISTORY_DEPTH`
bundles are kept; a rollback restores the one below the top."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from cvm_rl.bundle import BundleError, load_bundle
from cvm_rl.logs.schema import ExplorationMode, LearningMode
from cvm_rl.logs.store import Activation, DecisionLog
from server.config import DEFAULT_MAX_BATCH_ROWS, Exploration
from server.metrics import ServerMetrics
from server.model import ServingModel
from server.writer import LogWriter

log = logging.getLogger("cvm_rl.server")

HISTORY_DEPTH = 16
"""Bundles the rollback history keeps (the active one included): 15 successive rollbacks."""
ROLLBACK = "rollback"


def rollback_history(activations: list[Activation], depth: int = HISTORY_DEPTH) -> list[Activation]:
    """The rollback stack after ``activations`` (oldest first): its top is the active
    bundle's activation, the entry below it what a rollback restores."""
    stack: list[Activation] = []
    for act in activations:
        if act.reason == ROLLBACK and stack:
            stack.pop()
            if stack:
                stack[-1] = act  # the restored bundle, under its new activation
                continue
        if stack and stack[-1].model_id == act.model_id:
            stack[-1] = act
        else:
            stack.append(act)
        del stack[:-depth]
    return stack


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
        bundle_root: Path | None = None,
    ) -> None:
        if max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be >= 1, got {max_batch_rows}")
        self.log = decision_log
        # LoadBundle loads from under this resolved directory only (None: no admin loads).
        self.bundle_root = bundle_root
        self.metrics = metrics
        self.max_batch_rows = max_batch_rows
        self.log_probabilities = log_probabilities
        self.exploration = model.exploration
        self._local: list[Activation] = []  # activations of this process when there is no log
        self._versions: dict[str, str] = {}  # model id -> version, of the bundles loaded here
        self._refused = 0  # newest activation made elsewhere that this process could not load
        self.writer = None if decision_log is None else LogWriter(decision_log)
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
        self._versions[model.model_id] = model.version
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
        except (BundleError, ValueError, OSError) as exc:
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

    def history(self) -> list[Activation]:
        """The rollback stack (see the module's doc), the active bundle last."""
        return rollback_history(self.activations())

    def rollback_target(self) -> Activation:
        """What a rollback restores: the bundle active before the current one was loaded
        (LookupError when there is none)."""
        stack = self.history()
        if len(stack) < 2:
            raise LookupError("no earlier bundle to roll back to")
        return stack[-2]

    def model_version(self, model_id: str) -> str:
        """The version of a bundle this process or, through the log, another one activated."""
        version = self._versions.get(model_id)
        if version is None and self.log is not None:
            record = self.log.models().get(model_id)
            version = None if record is None else record.model_version
        return version or ""

    def follow(self) -> None:
        """Adopt the log's newest activation if another process made one."""
        if self.log is None:
            return
        latest = self.log.latest_activation()
        if latest <= max(self.current.activation, self._refused):
            return
        act = self.log.activations()[-1]
        try:
            # Settings the log holds but this version cannot serve are refused like a bundle
            # that does not load.
            exploration = Exploration(
                mode=ExplorationMode(act.exploration),
                param=act.exploration_param,
                learning_mode=LearningMode(act.learning_mode),
            )
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
        if self.writer is not None:
            self.writer.close()
        if self.log is not None:
            self.log.close()
