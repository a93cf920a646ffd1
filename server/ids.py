"""Event ids, shared by the server (ids it generates) and the client (ids it sends)."""

from __future__ import annotations

import os
import time


def new_event_ids(n: int) -> list[str]:
    """``n`` time-ordered 128-bit hex ids: 48 bits of Unix milliseconds, then 80 random bits
    (the layout of UUIDv7). Ids that grow with time keep the log's event-id index
    append-mostly; random ids would touch a different index page per row on every commit."""
    millis = f"{time.time_ns() // 1_000_000:012x}"
    noise = os.urandom(10 * n).hex()
    return [millis + noise[i : i + 20] for i in range(0, 20 * n, 20)]
