"""Structured logging: JSON lines on stderr, one event per step.

Every log call in the project goes through structlog; callers bind `reader` and `tap_id`
so that one tap can be followed across threads. Personal data never reaches a log call:
card numbers are logged only as tokens or masked forms.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TextIO

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
}


class _Target:
    """Where log lines go and from which level: read at every call, so reconfiguring takes effect
    even for loggers structlog has already cached (their first use may come before
    `configure_logging`, or a process may reconfigure, as the tests do)."""

    level = logging.INFO
    stream: TextIO | None = None

    def write(self, text: str) -> int:
        out = self.stream if self.stream is not None else sys.stderr  # the current stderr, captured or not
        return out.write(text)

    def flush(self) -> None:
        (self.stream if self.stream is not None else sys.stderr).flush()


_TARGET = _Target()


def _below_level(_logger: object, method: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    if _LEVELS.get(method, logging.ERROR) < _TARGET.level:
        raise structlog.DropEvent
    return event


def configure_logging(level: str = "info", stream: TextIO | None = None) -> Callable[[], None]:
    """Send JSON lines at `level` and above to `stream` (the current stderr by default).

    Returns a function that puts back the configuration this call replaced: a test that
    captures logs for a while must not take the capture away from those around it.
    """
    saved = (_TARGET.level, _TARGET.stream, structlog.get_config())

    def restore() -> None:
        _TARGET.level, _TARGET.stream = saved[0], saved[1]
        structlog.configure(**saved[2])

    _TARGET.level = _LEVELS.get(level.lower(), logging.INFO)
    _TARGET.stream = stream
    structlog.configure(
        processors=[
            _below_level,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.WriteLoggerFactory(file=_TARGET),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    logging.getLogger("nfc").setLevel(max(_TARGET.level, logging.WARNING))
    return restore


def get_logger(**bound: object) -> structlog.typing.FilteringBoundLogger:
    """A logger with `bound` context (for example reader=..., tap_id=...).

    It is a lazy proxy, so module-level loggers follow `configure_logging` called later.
    """
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(**bound)
    return logger
