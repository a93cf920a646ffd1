"""Promote one bundle on every replica of the decision service, or on none.

Replicas are ``cvm serve`` processes (each possibly ``--workers K``) behind a load balancer,
each with its own decision log and the same ``--bundle-root`` (a shared bundle store), so one
bundle path means the same bundle on all of them. :func:`promote` walks the replicas in
order: on each it reads the serving model (``GetPolicyInfo``), loads the bundle
(``DecisionAdmin.LoadBundle``) and confirms with ``GetPolicyInfo`` that it serves the expected
model id (``model_id``, or the one the first replica activated). At the first replica that
fails (unreachable, bundle refused, another model id), the replicas already switched are
rolled back (``DecisionAdmin.RollbackBundle``) and the rest are not touched: every replica
ends on the bundle, or all on what they served before, never split between the two (unless a
rollback itself fails, which the result shows). The result says, per replica, what happened
and why.

    results = promote(["10.0.0.1:50051", "10.0.0.2:50051"], "/bundles/p4-clv_planner")
    if not all(r.ok for r in results):
        raise SystemExit("\\n".join(r.line() for r in results))

With ``--workers K`` a reload or rollback reaches one worker of the replica and the others
follow it through the replica's log within ``server.app.FOLLOW_INTERVAL_S`` (0.5 s).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from server.client import DecisionClient

PromotionStatus = Literal["promoted", "unchanged", "rolled_back", "failed", "not_attempted"]
"""``promoted``: serves the bundle now; ``unchanged``: served it already; ``rolled_back``:
switched, then rolled back because another replica failed; ``failed``: this replica failed
(and was rolled back if it had switched; see ``active``); ``not_attempted``: left alone after
an earlier replica failed."""

DEFAULT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class PromotionResult:
    """What :func:`promote` did on one replica: the model it served before and serves at the
    end (``None``: not known, e.g. unreachable), and why it did not end on the bundle."""

    address: str
    status: PromotionStatus
    before: str | None
    active: str | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """The replica serves the promoted bundle."""
        return self.status in ("promoted", "unchanged")

    @property
    def consistent(self) -> bool:
        """The replica serves what it served before the promotion or the promoted bundle: not
        left on a model the rest of the fleet does not serve (false when a rollback failed or
        the replica's state is not known, e.g. unreachable)."""
        if self.ok or self.status == "not_attempted":
            return True
        return self.active is not None and self.active == self.before

    def line(self) -> str:
        line = f"{self.address}: {self.status} ({self.before or '?'} -> {self.active or '?'})"
        return line if self.error is None else f"{line}: {self.error}"


class _Failed(Exception):
    def __init__(self, reason: str, switched: bool, active: str | None) -> None:
        super().__init__(reason)
        self.reason, self.switched, self.active = reason, switched, active


def _why(step: str, exc: Exception) -> str:
    import grpc

    if isinstance(exc, grpc.RpcError):
        code = exc.code()
        return f"{step}: {code.name if code else 'UNKNOWN'}: {exc.details()}"
    return f"{step}: {type(exc).__name__}: {exc}"


def _switch(
    client: DecisionClient, path: str, before: str, expected: str | None, timeout_s: float
) -> str:
    """Load ``path`` and confirm it serves; the active model id (:class:`_Failed` if not)."""
    try:
        active = client.load_bundle(path, timeout_s=timeout_s)
    except Exception as exc:
        # The call may have failed after the load (a deadline): look before rolling back.
        try:
            now: str | None = client.policy_info(timeout_s=timeout_s).model_id
        except Exception:
            now = None
        switched = now is not None and now != before and (expected is None or now == expected)
        raise _Failed(_why("LoadBundle", exc), switched, now) from None
    if expected is not None and active != expected:
        reason = f"LoadBundle activated {active}, not {expected} (another bundle store?)"
        raise _Failed(reason, active != before, active)
    try:
        confirmed = client.policy_info(timeout_s=timeout_s).model_id
    except Exception as exc:
        raise _Failed(_why("GetPolicyInfo after LoadBundle", exc), active != before, None) from None
    if confirmed != active:
        reason = f"GetPolicyInfo reports {confirmed} after LoadBundle activated {active}"
        raise _Failed(reason, active != before, confirmed)
    return active


def _roll_back(client: DecisionClient, before: str, timeout_s: float) -> tuple[str | None, str]:
    """Roll ``client``'s replica back to ``before``: (active model id, problem or "")."""
    try:
        active = client.rollback(timeout_s=timeout_s)
    except Exception as exc:
        return None, _why("RollbackBundle", exc)
    if active != before:
        return active, f"RollbackBundle restored {active}, not {before}"
    return active, ""


def promote(
    addresses: Sequence[str],
    bundle_path: str | Path,
    *,
    token: str | None = None,
    model_id: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> list[PromotionResult]:
    """Load ``bundle_path`` (a path in the replicas' shared bundle store) on every replica at
    ``addresses``, in order, or on none (see the module docstring); one result per address.

    ``model_id``: the model every replica must activate (default: the one the first replica
    activates). ``token``: the admin bearer token. ``timeout``: seconds per call."""
    from server.client import DecisionClient

    if not addresses:
        raise ValueError("addresses: at least one replica is required")
    if len(set(addresses)) < len(addresses):
        raise ValueError(f"addresses: each replica once, got {list(addresses)}")
    path = str(bundle_path)
    expected = model_id
    results: list[PromotionResult] = []
    clients: list[DecisionClient] = []
    try:
        failure: str | None = None
        for address in addresses:
            client = DecisionClient(address, token=token, timeout_s=timeout)
            clients.append(client)
            try:
                before = client.policy_info(timeout_s=timeout).model_id
            except Exception as exc:
                failure = _why("GetPolicyInfo", exc)
                results.append(PromotionResult(address, "failed", None, None, failure))
                break
            try:
                active = _switch(client, path, before, expected, timeout)
            except _Failed as failed:
                failure = failed.reason
                now, error = failed.active, failed.reason
                if failed.switched:
                    now, problem = _roll_back(client, before, timeout)
                    error += f"; rolled back to {now}" if not problem else f"; {problem}"
                results.append(PromotionResult(address, "failed", before, now, error))
                break
            expected = active
            status: PromotionStatus = "unchanged" if active == before else "promoted"
            results.append(PromotionResult(address, status, before, active))
        if failure is not None:
            culprit = results[-1].address
            for i in reversed(range(len(results) - 1)):  # the switched ones, newest first
                done = results[i]
                if done.status != "promoted":
                    continue
                assert done.before is not None
                now, problem = _roll_back(clients[i], done.before, timeout)
                why = f"{culprit} failed: {failure}" + (f"; {problem}" if problem else "")
                status = "failed" if problem else "rolled_back"
                results[i] = PromotionResult(done.address, status, done.before, now, why)
            skipped = f"not attempted: {culprit} failed first"
            results += [
                PromotionResult(a, "not_attempted", None, None, skipped)
                for a in addresses[len(results) :]
            ]
    finally:
        for client in clients:
            client.close()
    return results
