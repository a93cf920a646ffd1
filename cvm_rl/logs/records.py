"""What the decision log stores and returns, as Python records, and the log's errors.

:class:`ModelRecord` (a row of ``models``), :class:`Activation` (of ``activations``),
:class:`DecisionBatch` (the decisions of one request, as columns: what a writer stores),
:class:`PreparedBatch` (a checked batch with its rows built),
:class:`StoredDecision` (one stored decision with its features, eligibility and probabilities
already sliced out of its request) and :class:`OutcomeRecord` (a row of ``outcomes``). The
tables and columns are documented in :mod:`cvm_rl.logs.schema`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cvm_rl.logs.schema import DECISION_COLUMNS

if TYPE_CHECKING:
    from cvm_rl.bundle import Bundle


class DecisionLogError(ValueError):
    """A log that cannot be opened or used (not SQLite, wrong schema version...)."""


class EventConflict(ValueError):
    """Event ids already used with different content; nothing of the call was written."""

    def __init__(self, message: str, event_ids: Sequence[str]) -> None:
        super().__init__(message)
        self.event_ids = list(event_ids)


class LogBusy(RuntimeError):
    """Another connection holds the log's write lock (see ``wait=False``); nothing written."""


class UnknownEvents(KeyError):
    """Outcomes for event ids that were never decided; nothing of the call was written."""

    def __init__(self, event_ids: Sequence[str]) -> None:
        super().__init__(event_ids)
        self.event_ids = list(event_ids)

    def __str__(self) -> str:
        return f"unknown event_id {mention(self.event_ids)}: no decision was logged under it"


def mention(event_ids: Sequence[str]) -> str:
    """``'a'`` or ``'a' (and 3 more)``: a bounded mention of many ids in a message."""
    more = f" (and {len(event_ids) - 1} more)" if len(event_ids) > 1 else ""
    return f"{event_ids[0]!r}{more}"


@dataclass(frozen=True)
class ModelRecord:
    """A bundle as the log knows it."""

    model_id: str
    model_version: str
    kind: str
    path: str
    feature_names: list[str]
    action_names: list[str]

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> ModelRecord:
        return cls(
            model_id=bundle.model_id,
            model_version=bundle.version,
            kind=bundle.kind,
            path=str(bundle.path.resolve()),
            feature_names=bundle.feature_names,
            action_names=bundle.action_names,
        )


@dataclass(frozen=True)
class Activation:
    """One row of ``activations``: a bundle serving with given settings."""

    seq: int
    model_id: str
    path: str
    learning_mode: str
    exploration: str
    exploration_param: float
    reason: str


@dataclass
class DecisionBatch:
    """Decisions of one activation as columns: length-N arrays and (N, F) / (N, A) matrices.

    ``baseline_action_index`` is -1 where no baseline was given (NULL in the table);
    ``probabilities`` may be None to leave the column NULL.
    """

    event_ids: list[str]
    customer_ids: list[str]
    decided_at_us: np.ndarray
    activation: int
    action_index: np.ndarray
    propensity: np.ndarray
    policy_action_index: np.ndarray
    policy_propensity: np.ndarray
    baseline_action_index: np.ndarray
    explored: np.ndarray
    features: np.ndarray
    eligible: np.ndarray
    probabilities: np.ndarray | None

    def __len__(self) -> int:
        return len(self.event_ids)

    def check(self) -> None:
        """Shapes and value domains; a ValueError names the field.

        Once per stored batch, so it is written for small batches too: one reduction per
        bound, or Python comparisons for a few rows (a NaN fails the comparisons either
        way, as it fails the elementwise ones)."""
        n = len(self.event_ids)
        if len(set(self.event_ids)) != n:
            raise ValueError("event_ids must be distinct within a batch")
        if len(self.customer_ids) != n:
            raise ValueError(f"customer_ids must have {n} entries, got {len(self.customer_ids)}")
        for name in _COLUMNS:
            value = getattr(self, name)
            if not isinstance(value, np.ndarray):
                value = np.asarray(value)
                setattr(self, name, value)
            if value.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {value.shape}")
        if self.features.ndim != 2 or self.features.shape[0] != n:
            raise ValueError(f"features must have shape ({n}, F), got {self.features.shape}")
        if self.eligible.ndim != 2 or self.eligible.shape[0] != n:
            raise ValueError(f"eligible must have shape ({n}, A), got {self.eligible.shape}")
        n_actions = self.eligible.shape[1]
        if self.probabilities is not None and self.probabilities.shape != (n, n_actions):
            raise ValueError(
                f"probabilities must have shape ({n}, {n_actions}), got {self.probabilities.shape}"
            )
        if n == 0:
            return
        few = n <= _FEW_ROWS
        for name in ("propensity", "policy_propensity"):
            p = getattr(self, name)
            if not (all(0 < v <= 1 for v in p.tolist()) if few else p.min() > 0 and p.max() <= 1):
                raise ValueError(f"{name} must be in (0, 1]")
        for name in ("action_index", "policy_action_index"):
            a = getattr(self, name)
            if not (
                all(0 <= v < n_actions for v in a.tolist())
                if few
                else a.min() >= 0 and a.max() < n_actions
            ):
                raise ValueError(f"{name} must be in [0, {n_actions})")

    def replay_conflicts(self, stored: dict[str, StoredDecision]) -> list[str]:
        """The event ids of this batch that ``stored`` holds with other inputs (customer,
        features, eligibility or baseline), in batch order: compared as whole matrices, so a
        replay of N rows costs about what deciding them did."""
        rows = [i for i, event_id in enumerate(self.event_ids) if event_id in stored]
        if not rows:
            return []
        event_ids = [self.event_ids[i] for i in rows]
        first = [stored[e] for e in event_ids]
        same = np.array(
            [d.customer_id == self.customer_ids[i] for d, i in zip(first, rows, strict=True)]
        )
        baseline = [
            -1 if d.baseline_action_index is None else d.baseline_action_index for d in first
        ]
        same &= np.asarray(baseline) == np.asarray(self.baseline_action_index)[rows]
        same &= _rows_equal([d.features for d in first], np.asarray(self.features, "<f4")[rows])
        same &= _rows_equal([d.eligible for d in first], np.asarray(self.eligible, bool)[rows])
        return [e for e, ok in zip(event_ids, same.tolist(), strict=True) if not ok]

    def request_row(self) -> tuple[Any, ...]:
        """The ``requests`` row of this batch, in ``REQUEST_COLUMNS`` order."""
        n, n_actions = self.eligible.shape
        return (
            self.activation,
            n,
            self.features.shape[1],
            n_actions,
            np.ascontiguousarray(self.features, dtype="<f4").tobytes(),
            np.ascontiguousarray(self.eligible, dtype=np.uint8).tobytes(),
            None
            if self.probabilities is None
            else np.ascontiguousarray(self.probabilities, dtype="<f8").tobytes(),
        )

    def flat_rows(self, request: int, indices: Sequence[int] | None = None) -> list[Any]:
        """The ``decisions`` rows pointing at ``request`` (all, or the given ``indices``),
        concatenated into one flat list in ``DECISION_COLUMNS`` order (the parameters of a
        multi-row INSERT): filled column by column with slice assignments, without an object
        per row."""
        n = len(self.event_ids)
        width = len(DECISION_COLUMNS)
        flat: list[Any] = [None] * (n * width)
        flat[0::width] = self.event_ids
        flat[1::width] = self.customer_ids
        flat[2::width] = self.decided_at_us.tolist()
        flat[3::width] = [request] * n
        flat[4::width] = range(n)
        flat[5::width] = self.action_index.tolist()
        flat[6::width] = self.propensity.tolist()
        flat[7::width] = self.policy_action_index.tolist()
        flat[8::width] = self.policy_propensity.tolist()
        baseline = self.baseline_action_index
        if n and baseline.max() >= 0:  # else every row keeps its None (NULL)
            flat[9::width] = [None if b < 0 else b for b in baseline.tolist()]
        flat[10::width] = self.explored.astype(int).tolist()
        if indices is None:
            return flat
        return [value for i in indices for value in flat[i * width : (i + 1) * width]]


@dataclass(frozen=True)
class PreparedBatch:
    """A checked :class:`DecisionBatch` with its ``requests`` row and its flat ``decisions``
    rows built (:meth:`DecisionBatch.request_row`, :meth:`DecisionBatch.flat_rows`, whose
    ``request`` column the store fills in): built once when a serving process queues the
    batch, however often a busy log makes its write try again."""

    batch: DecisionBatch
    request_row: tuple[Any, ...]
    flat: list[Any]

    @classmethod
    def of(cls, batch: DecisionBatch) -> PreparedBatch:
        """Check ``batch`` (a ValueError names the field) and build its rows."""
        batch.check()
        return cls(batch, batch.request_row(), batch.flat_rows(0))


_FEW_ROWS = 8
"""Up to this many rows, :meth:`DecisionBatch.check` compares Python numbers: four numpy
reductions cost more than a whole unary request's other checks."""

_COLUMNS = (
    "decided_at_us",
    "action_index",
    "propensity",
    "policy_action_index",
    "policy_propensity",
    "baseline_action_index",
    "explored",
)
"""The per-row arrays of a :class:`DecisionBatch` (length N)."""


@dataclass(frozen=True)
class StoredDecision:
    """One decision as stored: what a replayed event id gets back (built by
    :mod:`cvm_rl.logs.reader`)."""

    event_id: str
    customer_id: str
    decided_at_us: int
    activation: int
    action_index: int
    propensity: float
    policy_action_index: int
    policy_propensity: float
    baseline_action_index: int | None
    explored: bool
    features: np.ndarray
    eligible: np.ndarray
    probabilities: np.ndarray | None


@dataclass(frozen=True)
class OutcomeRecord:
    """One outcome report; ``None`` fields are unknown (``reported_at_us``: when received).

    ``executed_action_index``: the action the environment executed when it was not the
    served one (None: the served action was executed, or it is not known)."""

    event_id: str
    reward: float
    purchase: bool | None = None
    spend: float | None = None
    opt_out: bool | None = None
    reported_at_us: int | None = None
    executed_action_index: int | None = None

    def check(self) -> None:
        """Value domains; a ValueError names the field (the catalog bound of
        ``executed_action_index`` is checked against the decision by the store)."""
        if not self.event_id:
            raise ValueError("outcome.event_id is required")
        if not np.isfinite(self.reward):
            raise ValueError(f"outcome.reward must be finite, got {self.reward!r}")
        if self.spend is not None and not (np.isfinite(self.spend) and self.spend >= 0):
            raise ValueError(f"outcome.spend must be finite and >= 0, got {self.spend!r}")
        executed = self.executed_action_index
        if executed is not None and (
            isinstance(executed, bool) or not isinstance(executed, int | np.integer) or executed < 0
        ):
            raise ValueError(
                f"outcome.executed_action_index must be an int >= 0 or None, got {executed!r}"
            )

    def same_as(self, stored: OutcomeRecord) -> bool:
        """Whether this report repeats ``stored``; an unset ``reported_at_us`` matches any."""
        return (
            stored.reward == self.reward
            and stored.purchase == self.purchase
            and stored.spend == self.spend
            and stored.opt_out == self.opt_out
            and stored.executed_action_index == self.executed_action_index
            and (self.reported_at_us is None or self.reported_at_us == stored.reported_at_us)
        )

    def row(self, received_at_us: int) -> tuple[Any, ...]:
        """The ``outcomes`` row of this report, in ``OUTCOME_COLUMNS`` order."""
        return (
            self.event_id,
            float(self.reward),
            _optional_int(self.purchase),
            None if self.spend is None else float(self.spend),
            _optional_int(self.opt_out),
            received_at_us if self.reported_at_us is None else int(self.reported_at_us),
            received_at_us,
            _optional_int(self.executed_action_index),
        )


def _rows_equal(stored: list[np.ndarray], new: np.ndarray) -> np.ndarray:
    """Per row, whether ``stored[i]`` equals ``new[i]`` (a row of another width never does)."""
    width = new.shape[1]
    fits = np.array([len(row) == width for row in stored])
    equal = np.zeros(len(stored), dtype=bool)
    if fits.any():
        same_width = np.stack([row for row, ok in zip(stored, fits, strict=True) if ok])
        equal[fits] = (same_width == new[fits]).all(axis=1)
    return equal


def _optional_int(value: int | None) -> int | None:
    return None if value is None else int(value)
