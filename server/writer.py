"""Writes to the decision log from the event loop without ever blocking it.

A request queues what it stores and awaits. The first one (the leader) lets one turn of the
event loop pass when other callbacks are ready to run, by which time concurrent requests
have queued theirs, then writes them all itself; the others wait for it. Alone, it writes at
once. The flush runs on the loop thread (a SQLite commit of a few hundred rows takes well
under a millisecond; a thread hop would cost more in GIL hand-offs than it saves), and every
request is answered only after the transaction holding its rows has committed. (The leader
writing, instead of a callback scheduled for the next turn, saves the lone request of a quiet
server one more turn of the loop to be woken up.)

When another process (another worker on the same log) holds the write lock, the flush does
not sleep in SQLite's busy handler, which would stall every call of this process: it leaves
the writes queued and tries again shortly, and the loop keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, TypeVar

from cvm_rl.logs.store import (
    DecisionBatch,
    DecisionLog,
    EventConflict,
    LogBusy,
    OutcomeRecord,
    PreparedBatch,
    StoredDecision,
)

BUSY_RETRY_S = 0.0002  # a group commit takes about a millisecond; poll well inside that

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")
_Queue = deque[tuple[_Item, asyncio.Future[_Result]]]


class LogWriter:
    """Decisions and outcome reports of one process, written from its event loop.

    Decisions of concurrent requests are group-committed: one transaction for all queued
    batches. Outcome reports are written one call per transaction, so that each call stays
    atomic: an unknown event id or a conflicting report refuses that call only.
    """

    def __init__(self, decision_log: DecisionLog) -> None:
        self.log = decision_log
        self._decisions: _Queue[PreparedBatch, dict[str, StoredDecision]] = deque()
        self._outcomes: _Queue[list[OutcomeRecord], tuple[int, int]] = deque()
        self._flush_handle: asyncio.Handle | None = None
        self._leading = False  # a request is letting the loop turn before it writes

    async def insert(self, batch: DecisionBatch) -> dict[str, StoredDecision]:
        """Store ``batch``; returns the stored decisions of replayed ids (see
        :meth:`DecisionLog.insert_decisions`), or raises its :class:`EventConflict` (or the
        ValueError of a batch that fails its check, before anything is queued).

        The rows are built here, once: a write the log makes wait (another process holds
        its lock) tries again with them as they are."""
        return await self._queue(self._decisions, PreparedBatch.of(batch))

    async def record_outcomes(self, outcomes: list[OutcomeRecord]) -> tuple[int, int]:
        """Store ``outcomes`` atomically; ``(recorded, duplicates)`` as
        :meth:`DecisionLog.record_outcomes` returns them, or raises what it raises."""
        return await self._queue(self._outcomes, outcomes)

    async def _queue(self, queue: _Queue[_Item, _Result], item: _Item) -> _Result:
        future: asyncio.Future[_Result] = asyncio.get_running_loop().create_future()
        queue.append((item, future))
        if self._flush_handle is None and not self._leading:
            # Lead: one turn of the loop for ready requests to queue, then write all.
            self._leading = True
            try:
                if _others_ready():
                    await asyncio.sleep(0)
            finally:
                # Cancelled or not: the others wait for this write (and a cancelled caller's
                # rows are stored all the same, as they would be by a scheduled flush).
                self._leading = False
                self._flush()
        return await future  # settled by now unless the log was busy (a retry is scheduled)

    def _flush(self) -> None:
        self._flush_handle = None
        decisions_busy = self._write_decisions()
        outcomes_busy = self._write_outcomes()
        if decisions_busy or outcomes_busy:
            # Retry with whatever else queues meanwhile.
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(BUSY_RETRY_S, self._flush)

    def _write_decisions(self) -> bool:
        """Commit every queued batch; True when the log was busy (they stay queued)."""
        if not self._decisions:
            return False
        pending = list(self._decisions)
        try:
            results = self.log.insert_decision_batches([batch for batch, _ in pending], wait=False)
        except LogBusy:
            return True
        except Exception as exc:  # e.g. the disk is full: every waiting request fails
            self._decisions.clear()
            for _, future in pending:
                _settle(future, exception=exc)
            return False
        self._decisions.clear()
        for (_, future), result in zip(pending, results, strict=True):
            if isinstance(result, EventConflict):
                _settle(future, exception=result)
            else:
                _settle(future, result=result)
        return False

    def _write_outcomes(self) -> bool:
        """Commit the queued reports in order, one transaction each; True when the log was
        busy (the rest stay queued, in order)."""
        while self._outcomes:
            outcomes, future = self._outcomes[0]
            try:
                result = self.log.record_outcomes(outcomes, wait=False)
            except LogBusy:
                return True
            except Exception as exc:  # UnknownEvents, EventConflict, or the disk
                self._outcomes.popleft()
                _settle(future, exception=exc)
                continue
            self._outcomes.popleft()
            _settle(future, result=result)
        return False

    def close(self) -> None:
        """Stop retrying; writes still queued fail (called once the server has stopped)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        closed = RuntimeError("the decision log was closed before this write")
        for queue in (self._decisions, self._outcomes):
            for _, future in queue:
                _settle(future, exception=closed)
            queue.clear()


def _others_ready() -> bool:
    """Whether the loop has callbacks ready to run (concurrent requests among them) before it
    next polls: only then can letting one turn pass add rows to this commit. A new request
    arriving meanwhile is polled for after that turn, too late to join it. The standard loop
    keeps its ready queue in ``_ready``; another loop is assumed to have some."""
    ready = getattr(asyncio.get_running_loop(), "_ready", None)
    return ready is None or len(ready) > 0


def _settle(
    future: asyncio.Future[Any], *, result: Any = None, exception: BaseException | None = None
) -> None:
    """Resolve ``future`` unless its caller was cancelled (its rows are stored all the same)."""
    if future.done():
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)
