"""The serving state of one process: the active model, its activation history (for rollback
and for following reloads made by other workers), the log writer and the metrics."""

from __future__ import annotations

import asyncio
import logging

from cvm_rl.bundle import BundleError, load_bundle
from cvm_rl.logs.schema import ExplorationMode, LearningMode
from cvm_rl.logs.store import Activation, DecisionLog
from server.config import DEFAULT_MAX_BATCH_ROWS, Exploration
from server.metrics import ServerMetrics
from server.model import ServingModel
from server.writer import LogWriter

log = logging.getLogger("cvm_rl.server")


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
