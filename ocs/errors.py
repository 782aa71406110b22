"""Typed errors of the charging core and the process.

Each layer raises its own error type; nothing raises a bare `Exception`.
Protocol layers map these to their wire answers (see the outcome tables in
`radius/` and `diameter/`), the API maps them to HTTP statuses.
"""

from dataclasses import dataclass


class OcsError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(OcsError):
    """The configuration is invalid. Carries the file, key and reason."""

    def __init__(self, reason: str, *, file: str | None = None, key: str | None = None):
        self.file = file
        self.key = key
        self.reason = reason
        where = ":".join(p for p in (file, key) if p)
        super().__init__(f"{where}: {reason}" if where else reason)


class ValidationError(OcsError):
    """A request or record is invalid (bad API body, bad CSV row...)."""


@dataclass(frozen=True, slots=True)
class LineError:
    """One problem in an uploaded file (CSV import, rate deck, CDRs): the 1-based
    `line` of the source (a header is line 1), the `column` (None for the whole
    row) and what is wrong."""

    line: int
    column: str | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" + (f", column {self.column}" if self.column else "")
        return f"{where}: {self.message}"

    def as_dict(self) -> dict:
        return {"line": self.line, "column": self.column, "message": self.message}


def csv_problem(exc: Exception) -> str:
    """What a `csv.Error` means to whoever wrote the file (Python's own wording
    speaks of file modes)."""
    text = str(exc)
    if "new-line character seen in unquoted field" in text:
        return ("a line break inside an unquoted field (quote the field, or save the file "
                "with one kind of line ending)")
    if "NUL" in text:
        return "a NUL character (is this a text file?)"
    return text


class NotFound(OcsError):
    """The named object does not exist."""


class Conflict(OcsError):
    """The object already exists or the change contradicts current state."""


class StoreError(OcsError):
    """Base of storage failures."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or did not commit: nothing was recorded.

    Protocol layers answer nothing (RADIUS) or DIAMETER_UNABLE_TO_DELIVER /
    TOO_BUSY so the network element retries or fails over; they never
    acknowledge what is not durable.
    """


class MigrationError(StoreError):
    """The schema cannot be brought to the version this code needs."""
