"""How a handler fails: :class:`RequestError` (a status and a message naming the field) and
the :func:`rpc` decorator every servicer method wears, the one place where errors become
statuses."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

log = logging.getLogger("cvm_rl.server")

_T = TypeVar("_T")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[_T]]


class RequestError(Exception):
    """A request the server refuses: a status code and a message naming the field."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def check_deadline(context: grpc.aio.ServicerContext) -> None:
    """DEADLINE_EXCEEDED when the caller has stopped waiting (nothing is stored then)."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise RequestError(
            grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the decision"
        )


def rpc(fn: Handler[_T]) -> Handler[_T]:
    """Deadline check and error mapping around a servicer method: a RequestError becomes its
    status; anything else is logged and answered INTERNAL, and the server keeps serving."""
    method = fn.__name__

    @functools.wraps(fn)
    async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> _T:
        try:
            check_deadline(context)
            return await fn(self, request, context)
        except RequestError as exc:
            await context.abort(exc.code, exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("internal_error", extra={"method": method})
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log"
            )
        raise AssertionError("unreachable: abort raises")

    return handler
