"""The server's log lines: one JSON object per line on stderr, ready for a log shipper."""

from __future__ import annotations

import json
import logging
import sys
from typing import ClassVar


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, event, pid and the record's extra fields."""

    _standard: ClassVar[set[str]] = set(vars(logging.makeLogRecord({})))

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "pid": record.process,
        }
        entry.update({k: v for k, v in vars(record).items() if k not in self._standard})
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("cvm_rl.server")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
