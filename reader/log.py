"""Structured logging: JSON lines on stderr, one event per step.

Every log call in the project goes through structlog; callers bind `reader` and `tap_id`
so that one tap can be followed across threads. Personal data never reaches a log call:
card numbers are logged only as tokens or masked forms.
"""

from __future__ import annotations

import logging
import sys

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time (a redirected or captured stream included)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str = "info", stream: object = None) -> None:
    """Send JSON lines at `level` and above to `stream` (the current stderr by default)."""
    numeric = _LEVELS.get(level.lower(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=stream or _CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    logging.getLogger("nfc").setLevel(max(numeric, logging.WARNING))


def get_logger(**bound: object) -> structlog.typing.FilteringBoundLogger:
    """A logger with `bound` context (for example reader=..., tap_id=...).

    It is a lazy proxy, so module-level loggers follow `configure_logging` called later.
    """
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(**bound)
    return logger
