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
ECHO_CHARS = 200
"""At most this many characters of a client's value are echoed in an error message."""
MESSAGE_CHARS = 2000
"""Every error message is cut to this many characters (gRPC puts it in a trailer, whose size
is limited: a longer one would reach the client as RESOURCE_EXHAUSTED instead)."""
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[_T]]


class RequestError(Exception):
    """A request the server refuses: a status code and a message naming the field."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def clip(text: str, limit: int = ECHO_CHARS) -> str:
    """``text`` cut to ``limit`` characters, the cut marked with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def shown(value: object) -> str:
    """A client's value as echoed in a message: its repr, clipped."""
    return clip(repr(value))


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
            await context.abort(exc.code, clip(exc.message, MESSAGE_CHARS))
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("internal_error", extra={"method": method})
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log"
            )
        raise AssertionError("unreachable: abort raises")

    return handler
