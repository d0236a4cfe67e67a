"""The node's log lines: plain text for people, or one JSON object per line for log pipelines.

A JSON line has ``time`` (UTC, ISO 8601, milliseconds), ``level``, ``logger`` and ``message``,
and where they apply ``node``, ``room`` and ``session`` (and ``exception``, a traceback). The
room and session come from the record (``log.info(..., extra={"room": ...})``) or else from
the context of the task that logged: the WebSocket handler sets `ROOM` for its connection and
the join sets `SESSION`, so every line logged while handling that client carries them. The node
is one per process: `set_node` names it once the node exists.
"""

from __future__ import annotations

import logging
import sys
import threading
from contextvars import ContextVar
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import orjson

__all__ = ["FORMATS", "ROOM", "SESSION", "JsonFormatter", "configure", "json_line", "set_node"]

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

ROOM: ContextVar[str | None] = ContextVar("roomstate_log_room", default=None)
SESSION: ContextVar[str | None] = ContextVar("roomstate_log_session", default=None)
_node: str | None = None  # this process's node (set_node)


def set_node(node_id: str) -> None:
    """Name the process's node in every later JSON line."""
    global _node
    _node = node_id


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        node = getattr(record, "node", None) or _node
        room = getattr(record, "room", None) or ROOM.get()
        session = getattr(record, "session", None) or SESSION.get()
        if node is not None:
            entry["node"] = str(node)
        if room is not None:
            entry["room"] = str(room)
        if session is not None:
            entry["session"] = str(session)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


def configure(level: str, log_format: str) -> None:
    """Log to stderr at `level` in `log_format` ("text" or "json"). In JSON, Python's warnings
    and uncaught exceptions (of the main thread and of others) are logged too, so that the
    process writes nothing but JSON lines."""
    if log_format not in FORMATS:
        raise ValueError(f"ROOMSTATE_LOG_FORMAT={log_format!r} is not one of {', '.join(FORMATS)}")
    if log_format == "text":
        logging.basicConfig(level=level, format=TEXT_FORMAT)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.captureWarnings(True)
    crash = logging.getLogger("roomstate")

    def uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        crash.critical("uncaught exception", exc_info=(kind, exc, tb))

    def uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
            crash.critical("uncaught exception in a thread", exc_info=exc_info)

    sys.excepthook = uncaught
    threading.excepthook = uncaught_in_thread


def json_line(message: str, logger: str = "roomstate") -> str:
    """The JSON line of a record of `message` at INFO: for what the process prints on stdout
    (its address) whatever the log level."""
    record = logging.makeLogRecord(
        {"name": logger, "levelno": logging.INFO, "levelname": "INFO", "msg": message}
    )
    return JsonFormatter().format(record)
