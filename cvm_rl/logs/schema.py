"""Names the decision log, the service and the exports share: the modes a decision was made
under and the log's durability settings, each spelled once as a ``StrEnum``.

A ``StrEnum`` member equals its string (``LearningMode.ONLINE == "online"``), so the values
stored in SQLite and Parquet, the CLI's choices and the wire names stay plain strings.
"""

from __future__ import annotations

from enum import StrEnum


class LearningMode(StrEnum):
    """Whose action is executed: the policy's draw, or the caller's baseline (apprentice)."""

    ONLINE = "online"
    APPRENTICE = "apprentice"


class ExplorationMode(StrEnum):
    """How the served distribution is made from a bundle."""

    POLICY = "policy"
    """The bundle's own distribution."""
    EPSILON = "epsilon"
    """The bundle's greedy action with probability 1 - epsilon, else uniform."""
    SOFTMAX = "softmax"
    """Softmax of the bundle's scores at a temperature."""


class Durability(StrEnum):
    """SQLite ``synchronous`` setting of the log."""

    NORMAL = "normal"
    """Committed rows survive a crash of the process."""
    FULL = "full"
    """Committed rows also survive a power loss (fsync on every commit)."""


def values(enum: type[StrEnum]) -> tuple[str, ...]:
    """The members' string values, in declaration order (for messages and SQL checks)."""
    return tuple(member.value for member in enum)
