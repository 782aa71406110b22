"""Logging of ocsd: named loggers, per-request context, two formats, no secrets.

* `setup(config.log)` configures the process (again on SIGHUP: formats and
  levels change live, the handler stays).
* Formats: ``text`` for humans (``2024-05-01 12:00:00.123 INFO    ocs.daemon:
  ready session=... nas=...``; when stderr is journald's stream the line starts
  with a ``<N>`` syslog priority instead of a timestamp, so journald records
  the level) and ``json``: one object per line with ``ts``, ``level``,
  ``logger``, ``msg``, then every context field and structured extra.
* `log_context(session=..., nas=..., account=...)` attaches fields to every
  line logged inside it (contextvars, so concurrent tasks keep their own).
* Secrets never reach the output: values of fields whose name says secret,
  password, token, ... are replaced, and every secret value the daemon knows
  (`register_secret`: NAS secrets, API tokens, passwords in store URLs) is
  scrubbed from messages, extras and tracebacks, whatever logger wrote them.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

REDACTED = "[redacted]"
#: Field names whose values are secrets whatever they hold.
SECRET_KEY = re.compile(r"secret|passw|token|credential|authori[sz]ation|api_?key|private",
                        re.IGNORECASE)
#: Shorter registered secrets are not scrubbed by value (they would garble
#: every line); `ocsd --check-config` already flags them as weak.
MIN_SCRUB_LENGTH = 4

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}
_RESERVED = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {
    "message", "asctime", "taskName", "ocs_context"}
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "ocs_log_context", default={})


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Attach fields (session, nas, account, ...) to every line logged inside.

    Nested contexts add to the outer one; None values are left out.
    """
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items()
                                               if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, Any]:
    return dict(_context.get())


class _Secrets:
    """The secret values to scrub, compiled into one pattern (longest first)."""

    def __init__(self):
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def add(self, value: str | None) -> None:
        if not value or len(value) < MIN_SCRUB_LENGTH or value in self._values:
            return
        with self._lock:
            self._values.add(value)
            ordered = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(v) for v in ordered))

    def scrub(self, text: str) -> str:
        pattern = self._pattern
        if pattern is None or not text:
            return text
        return pattern.sub(REDACTED, text)


_secrets = _Secrets()


def register_secret(value: str | None) -> None:
    """Never let this value appear in a log line (from now on, any logger)."""
    _secrets.add(value)


def _clean(key: str, value: Any) -> Any:
    if SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, str):
        return _secrets.scrub(value)
    if isinstance(value, Mapping):
        return {str(k): _clean(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(key, v) for v in value]
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return _secrets.scrub(str(value))


class ContextFilter(logging.Filter):
    """Copies the current `log_context` onto each record (as `ocs_context`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.ocs_context = dict(_context.get())
        return True


class RedactFilter(logging.Filter):
    """Renders and scrubs each record before any formatter sees it.

    The message is rendered here (so arguments holding a secret are scrubbed
    too), tracebacks are rendered and scrubbed, and fields named like secrets
    are replaced, both in the context and in `extra=`.
    """

    _tb = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError) as exc:  # a bad format string must not lose the line
            message = f"{record.msg!r} (log formatting failed: {exc})"
        record.msg, record.args = _secrets.scrub(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._tb.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = _secrets.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = _secrets.scrub(record.stack_info)
        ctx = getattr(record, "ocs_context", None) or {}
        record.ocs_context = {k: _clean(k, v) for k, v in ctx.items()}
        for key in [k for k in vars(record) if k not in _RESERVED]:
            setattr(record, key, _clean(key, getattr(record, key)))
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """Context fields, then structured extras (already cleaned)."""
    out = dict(getattr(record, "ocs_context", None) or {})
    for key, value in vars(record).items():
        if key not in _RESERVED:
            out[key] = value
    return out


def _timestamp(record: logging.LogRecord) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(record.created, tz=_dt.timezone.utc)


class TextFormatter(logging.Formatter):
    """``TS LEVEL logger: message key=value ...`` (or ``<N>logger: ...`` for journald)."""

    # sd-daemon(3) priorities, so journald keeps the level of a text line.
    _PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                 logging.CRITICAL: 2}

    def __init__(self, *, journal: bool = False):
        super().__init__()
        self.journal = journal
        self._last_second: tuple[int, str] = (-1, "")

    def _second(self, record: logging.LogRecord) -> str:
        """The local date and time to the second; formatted once per second (a busy
        access log writes thousands of lines in each)."""
        second = int(record.created)
        if self._last_second[0] != second:
            text = _timestamp(record).astimezone().strftime("%Y-%m-%d %H:%M:%S")
            self._last_second = (second, text)
        return self._last_second[1]

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={_text_value(v)}" for k, v in _fields(record).items())
        body = f"{record.name}: {record.getMessage()}" + (f" {extras}" if extras else "")
        if self.journal:
            prio = self._PRIORITY.get(record.levelno, 6)
            line = f"<{prio}>{body}"
        else:
            line = f"{self._second(record)}.{int(record.msecs):03d} {record.levelname:<7} {body}"
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + record.stack_info
        return line


_NEEDS_QUOTES = re.compile(r'[\s"=]')


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(text) if (not text or _NEEDS_QUOTES.search(text)) else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, context and extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": _timestamp(record).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _fields(record).items():
            obj.setdefault(key, value)
        if record.exc_text:
            obj["exc"] = record.exc_text
        if record.stack_info:
            obj["stack"] = record.stack_info
        return json.dumps(obj, default=str, ensure_ascii=False)


def _stream_is_journal(stream: TextIO) -> bool:
    """True when `stream` is the journald stream systemd connected (JOURNAL_STREAM)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


_handler: logging.StreamHandler | None = None
_configured_levels: set[str] = set()


_LOOKUP_DEFAULTS = (logging._srcfile, logging.logThreads, logging.logProcesses,
                    logging.logMultiprocessing)


def _record_lookups(on: bool) -> None:
    """No format of ours prints the caller's file and line, the thread or the
    process: `setup` stops the logging module looking them up for every record,
    `teardown` gives back its defaults."""
    (logging._srcfile, logging.logThreads, logging.logProcesses,
     logging.logMultiprocessing) = _LOOKUP_DEFAULTS if on else (None, False, False, False)


def setup(config: Any, *, stream: TextIO | None = None) -> logging.Handler:
    """Configure logging from a `[log]` section (format, level, levels).

    Called again on reload: the same handler gets the new formatter, the root
    level changes, and per-logger levels that were dropped from the config
    are reset to inherit.
    """
    global _handler
    _record_lookups(False)
    root = logging.getLogger()
    if _handler is None or (stream is not None and _handler.stream is not stream):
        if _handler is not None:
            root.removeHandler(_handler)
        _handler = logging.StreamHandler(stream or sys.stderr)
        _handler.addFilter(ContextFilter())
        _handler.addFilter(RedactFilter())
        root.addHandler(_handler)
    if config.format == "json":
        _handler.setFormatter(JsonFormatter())
    else:
        _handler.setFormatter(TextFormatter(journal=_stream_is_journal(_handler.stream)))
    root.setLevel(_LEVELS[config.level])
    for name in _configured_levels - set(config.levels):
        logging.getLogger(name).setLevel(logging.NOTSET)
    for name, level in config.levels.items():
        logging.getLogger(name).setLevel(_LEVELS[level])
    _configured_levels.clear()
    _configured_levels.update(config.levels)
    return _handler


def teardown() -> None:
    """Remove what `setup` installed (for embedding ocsd's modules, and tests)."""
    global _handler
    _record_lookups(True)
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
        _handler = None
    for name in _configured_levels:
        logging.getLogger(name).setLevel(logging.NOTSET)
    _configured_levels.clear()
    root.setLevel(logging.WARNING)


class Throttled:
    """Warnings about one thing (a key: what went wrong, and where) at most once
    every `every` seconds, each with how many were left out since the last one:
    the log says what to fix without being flooded by a NAS that retries or an
    outage that fails every request."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter, every: float = 60.0,
                 keys: int = 10_000):
        self.logger, self.every, self.keys = logger, every, keys
        self._last: dict[Any, list] = {}  # key -> [monotonic time logged, left out since]

    def warning(self, key: Any, message: str, *args: Any, **kwargs: Any) -> bool:
        """Log unless `key` was logged less than `every` seconds ago; True if logged."""
        now = time.monotonic()
        entry = self._last.get(key)
        if entry is not None and now - entry[0] < self.every:
            entry[1] += 1
            return False
        if len(self._last) >= self.keys:  # many sources (a scan): start afresh
            self._last.clear()
        since = f" ({entry[1]} more since the last warning)" if entry and entry[1] else ""
        self._last[key] = [now, 0]
        self.logger.warning(message + since, *args, **kwargs)
        return True
