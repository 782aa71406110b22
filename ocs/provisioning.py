"""Bulk provisioning of accounts and subscribers from CSV: all or nothing.

`import_csv(store, text)` validates the whole file first and reports *every*
problem with its line number (the header is line 1), so an operator fixes a
file in one round trip instead of one error at a time. Only a file without a
single error is applied, in one call to `Store.import_subscribers`, which is
one transaction: nothing is ever half-imported.

Columns (a header row is required, order is free, names are case-insensitive,
unknown columns are rejected):

=================  ==========================================================
account            required: account name; rows naming the same account, or
                   an account that already exists, attach to it
currency           ISO 4217 code (3 letters); required for a new account
billing            ``prepaid`` (default) or ``postpaid``
credit_limit       decimal money, postpaid accounts only (e.g. ``100.00``)
plan               plan name; the plan must exist
username           PPPoE/IPoE user name
msisdn             E.164 number without ``+``, 6-15 digits
imsi               14-15 digits
sip_user           SIP user (softswitch accounting)
password           cleartext, or a hash (``ssha256$...``, ``pbkdf2-sha256$...``)
framed_ip          static IPv4 or IPv6 address
max_sessions       integer >= 1 (default 1)
opening_balance    decimal money >= 0, only for a new account
=================  ==========================================================

Every row needs at least one identity (username, msisdn, imsi, sip_user).
Account columns may be left empty on the second and later rows of an
account; when given they must agree with the first row (and with the account
in the store, for an existing one). Empty cells mean "not given".

Checks that need the store (identities already taken, accounts that exist,
plans) are a handful of bulk queries, not one per row, so 100,000 rows
validate in seconds.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from . import passwords
from .errors import LineError, ValidationError, csv_problem
from .money import format_money, parse_money
from .store.sql import fetch

log = logging.getLogger("ocs.provisioning")

#: Identity columns; each must be unique across all subscribers.
IDENTITY_COLUMNS = ("username", "msisdn", "imsi", "sip_user")
ACCOUNT_COLUMNS = ("account", "currency", "billing", "credit_limit", "opening_balance")
COLUMNS = ("account", "currency", "billing", "credit_limit", "plan", "username", "msisdn",
           "imsi", "sip_user", "password", "framed_ip", "max_sessions", "opening_balance")

#: At most this many errors are listed; the rest are only counted.
MAX_ERRORS = 1000

_DIGITS = re.compile(r"[0-9]+")
_CURRENCY = re.compile(r"[A-Z]{3}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_NAME = 253  # RADIUS attributes carry at most 253 octets (RFC 2865 §5)
_MAX_PASSWORD = 128  # RFC 2865 §5.2: User-Password is at most 128 octets


#: One problem in the file (`line` is 1-based, the header is line 1).
RowError = LineError


@dataclass(frozen=True, slots=True)
class ImportReport:
    imported: int          # subscribers created
    accounts_created: int  # new accounts (existing ones were attached to)


class ImportRejected(ValidationError):
    """The file has errors; nothing was imported.

    `errors` lists at most `MAX_ERRORS` problems in line order; `more` counts
    the ones left out; `total` is all of them.
    """

    def __init__(self, errors: list[RowError], more: int = 0):
        self.errors = errors
        self.more = more
        self.total = len(errors) + more
        first = errors[0] if errors else None
        summary = f"CSV rejected, nothing imported: {self.total} error" + \
                  ("s" if self.total != 1 else "")
        if first is not None:
            summary += f" (first: {first})"
        if more:
            summary += f"; {len(errors)} listed, {more} more not shown"
        super().__init__(summary)


class _Errors:
    """Collects every error; the rejection lists the first MAX_ERRORS in line order."""

    def __init__(self) -> None:
        self.items: list[RowError] = []

    def add(self, line: int, column: str | None, message: str) -> None:
        self.items.append(RowError(line, column, message))

    def __bool__(self) -> bool:
        return bool(self.items)

    def reject(self) -> ImportRejected:
        self.items.sort(key=lambda e: (e.line, COLUMNS.index(e.column)
                                       if e.column in COLUMNS else -1))
        return ImportRejected(self.items[:MAX_ERRORS], max(0, len(self.items) - MAX_ERRORS))


@dataclass(slots=True)
class _AccountSpec:
    """What the file says about one account, and the line that said it first."""

    name: str
    first_line: int
    values: dict[str, Any] = field(default_factory=dict)
    said_on: dict[str, int] = field(default_factory=dict)
    existing: dict[str, Any] | None = None


# ----------------------------------------------------------------------------- parsing

def _parse_header(fields: list[str], errors: _Errors) -> list[str] | None:
    names = [f.strip().lower().lstrip("\ufeff") for f in fields]
    seen: set[str] = set()
    for name in names:
        if not name:
            errors.add(1, None, "empty column name in header")
        elif name not in COLUMNS:
            errors.add(1, name, f"unknown column {name!r} (known: {', '.join(COLUMNS)})")
        elif name in seen:
            errors.add(1, name, f"column {name!r} appears twice")
        seen.add(name)
    if "account" not in seen:
        errors.add(1, "account", "the header has no 'account' column (it is required)")
    if not seen.intersection(IDENTITY_COLUMNS):
        errors.add(1, None, "the header has no identity column (one of "
                   f"{', '.join(IDENTITY_COLUMNS)})")
    return None if errors else names


def _text(value: str, column: str, limit: int = _MAX_NAME) -> str:
    if _CONTROL.search(value):
        raise ValueError(f"{column} contains control characters")
    if len(value.encode()) > limit:
        raise ValueError(f"{column} is longer than {limit} bytes")
    return value


def _digits(value: str, column: str, low: int, high: int) -> str:
    if not _DIGITS.fullmatch(value) or not low <= len(value) <= high:
        what = f"{low}-{high}" if low != high else str(low)
        hint = " (E.164 without '+')" if column == "msisdn" else ""
        raise ValueError(f"{column} must be {what} digits{hint}, got {value!r}")
    return value


def _money(value: str, column: str) -> int:
    try:
        amount = parse_money(value)
    except ValidationError:
        raise ValueError(f"{column} {value!r} is not a decimal amount like 10.00") from None
    if amount < 0:
        raise ValueError(f"{column} must not be negative, got {value}")
    return amount


def _convert(column: str, value: str) -> Any:
    """One cell as the value the store expects; ValueError explains a bad cell."""
    if column in ("account", "plan", "username"):
        return _text(value, column)
    if column == "sip_user":
        if any(c.isspace() for c in value):
            raise ValueError("sip_user must not contain spaces")
        return _text(value, column)
    if column == "currency":
        code = value.upper()
        if not _CURRENCY.fullmatch(code):
            raise ValueError(f"currency must be an ISO 4217 code of 3 letters, got {value!r}")
        return code
    if column == "billing":
        billing = value.lower()
        if billing not in ("prepaid", "postpaid"):
            raise ValueError(f"billing must be prepaid or postpaid, got {value!r}")
        return billing
    if column in ("credit_limit", "opening_balance"):
        return _money(value, column)
    if column == "msisdn":
        return _digits(value, column, 6, 15)
    if column == "imsi":
        return _digits(value, column, 14, 15)
    if column == "password":
        if passwords.is_hash(value):
            return value
        return _text(value, column, _MAX_PASSWORD)
    if column == "framed_ip":
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"framed_ip {value!r} is not an IPv4 or IPv6 address") from None
    if column == "max_sessions":
        if not _DIGITS.fullmatch(value) or int(value) < 1:
            raise ValueError(f"max_sessions must be a whole number >= 1, got {value!r}")
        return int(value)
    raise AssertionError(column)


def _parse(text: str, errors: _Errors) -> list[dict[str, Any]]:
    """The file's rows as typed dicts (with their `line`); bad cells go to `errors`."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[dict[str, Any]] = []
    header: list[str] | None = None
    line = 1  # where the next record starts
    try:
        for record in reader:
            start, line = line, reader.line_num + 1  # a quoted cell may span lines
            if header is None:
                header = _parse_header(record, errors)
                if header is None:
                    return []
                continue
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # blank line
            if len(record) != len(header):
                errors.add(start, None, f"expected {len(header)} fields as in the header, "
                                        f"found {len(record)}")
                continue
            row: dict[str, Any] = {"line": start}
            bad: set[str] = set()
            for column, raw in zip(header, record):
                value = raw.strip()
                if not value:
                    continue
                try:
                    row[column] = _convert(column, value)
                except ValueError as exc:
                    errors.add(start, column, str(exc))
                    bad.add(column)
            if "account" not in row and "account" not in bad:
                errors.add(start, "account", "account is required")
            if not bad.intersection(IDENTITY_COLUMNS) and \
                    not any(k in row for k in IDENTITY_COLUMNS):
                errors.add(start, None, "a subscriber needs at least one identity: "
                                        + ", ".join(IDENTITY_COLUMNS))
            rows.append(row)
    except csv.Error as exc:
        errors.add(max(reader.line_num, 1), None,
                   f"malformed CSV: {csv_problem(exc)} (nothing after this line was read)")
    if header is None and not errors:
        errors.add(1, None, "the file is empty: a header row is required")
    elif not rows and not errors:
        errors.add(2, None, "the file has a header but no rows")
    return rows


# ----------------------------------------------------------------------------- checks

def _existing_program(columns: dict[str, list[str]], accounts: list[str]):
    """Program (read-only): what of the file's identities and accounts the store holds."""
    taken: dict[str, set[str]] = {}
    for column, values in columns.items():
        taken[column] = set()
        if values:
            found = yield fetch(f"SELECT {column} AS v FROM subscribers "
                                f"WHERE {column} = ANY($1)", values)
            taken[column] = {r["v"] for r in found}
    existing = yield fetch("SELECT name, currency, billing, credit_limit FROM accounts "
                           "WHERE name = ANY($1)", accounts)
    plans = yield fetch("SELECT name, currency FROM plans")
    return (taken, {r["name"]: dict(r) for r in existing},
            {r["name"]: r["currency"] for r in plans})


def _check_duplicates(rows: list[dict], errors: _Errors) -> None:
    for column in IDENTITY_COLUMNS + ("framed_ip",):
        first: dict[str, int] = {}
        for row in rows:
            value = row.get(column)
            if value is None:
                continue
            if value in first:
                errors.add(row["line"], column,
                           f"{column} {value} is also on line {first[value]}")
            else:
                first[value] = row["line"]


def _collect_accounts(rows: list[dict], errors: _Errors) -> dict[str, _AccountSpec]:
    """Merge each account's columns over its rows; conflicting values are errors."""
    specs: dict[str, _AccountSpec] = {}
    for row in rows:
        name = row.get("account")
        if name is None:
            continue
        spec = specs.get(name)
        if spec is None:
            spec = specs[name] = _AccountSpec(name, row["line"])
        for column in ("currency", "billing", "credit_limit", "opening_balance"):
            if column not in row:
                continue
            value = row[column]
            if column not in spec.values:
                spec.values[column] = value
                spec.said_on[column] = row["line"]
            elif spec.values[column] != value:
                errors.add(row["line"], column,
                           f"account {name!r}: {column} {_show(column, value)} conflicts with "
                           f"{_show(column, spec.values[column])} on line "
                           f"{spec.said_on[column]}")
    return specs


def _show(column: str, value: Any) -> str:
    return format_money(value) if column in ("credit_limit", "opening_balance") else str(value)


def _check_accounts(specs: dict[str, _AccountSpec], existing: dict[str, dict],
                    errors: _Errors) -> None:
    for name, spec in specs.items():
        found = existing.get(name)
        v, on = spec.values, spec.said_on
        if found is not None:
            spec.existing = found
            if "currency" in v and v["currency"] != found["currency"]:
                errors.add(on["currency"], "currency",
                           f"account {name!r} exists with currency {found['currency']}, "
                           f"not {v['currency']}")
            if "billing" in v and v["billing"] != found["billing"]:
                errors.add(on["billing"], "billing",
                           f"account {name!r} exists as {found['billing']}, not {v['billing']}")
            if "credit_limit" in v and v["credit_limit"] != found["credit_limit"]:
                errors.add(on["credit_limit"], "credit_limit",
                           f"account {name!r} exists with credit limit "
                           f"{format_money(found['credit_limit'])}; change it with the API")
            if v.get("opening_balance"):
                errors.add(on["opening_balance"], "opening_balance",
                           f"account {name!r} already exists: an opening balance applies only "
                           "to a new account (use a top-up)")
            continue
        if "currency" not in v:
            errors.add(spec.first_line, "currency",
                       f"account {name!r} is new: currency is required")
        if v.get("credit_limit") and v.get("billing", "prepaid") != "postpaid":
            errors.add(on["credit_limit"], "credit_limit",
                       f"account {name!r}: a credit limit applies only to postpaid accounts")


def _check_store(rows: list[dict], specs: dict[str, _AccountSpec],
                 taken: dict[str, set[str]], plans: dict[str, str], errors: _Errors) -> None:
    for row in rows:
        for column in IDENTITY_COLUMNS:
            value = row.get(column)
            if value is not None and value in taken.get(column, ()):
                errors.add(row["line"], column,
                           f"{column} {value} already belongs to a subscriber")
        plan = row.get("plan")
        if plan is None:
            continue
        if plan not in plans:
            errors.add(row["line"], "plan", f"plan {plan!r} does not exist")
            continue
        spec = specs.get(row.get("account"))
        if spec is None:
            continue
        currency = (spec.existing or spec.values).get("currency")
        if currency and plans[plan] != currency:
            errors.add(row["line"], "plan", f"plan {plan!r} is priced in {plans[plan]}, "
                                            f"account {spec.name!r} in {currency}")


def _store_rows(rows: list[dict], specs: dict[str, _AccountSpec]) -> list[dict[str, Any]]:
    """Rows in the shape `Store.import_subscribers` takes, account values merged in."""
    out = []
    for row in rows:
        spec = specs[row["account"]]
        account = spec.existing or spec.values
        out.append({
            "line": row["line"],
            "account": spec.name,
            "currency": account.get("currency"),
            "billing": account.get("billing", "prepaid"),
            "credit_limit": account.get("credit_limit", 0),
            "opening_balance": 0 if spec.existing else spec.values.get("opening_balance", 0),
            "plan": row.get("plan"),
            "username": row.get("username"),
            "msisdn": row.get("msisdn"),
            "imsi": row.get("imsi"),
            "sip_user": row.get("sip_user"),
            "password": row.get("password"),
            "framed_ip": row.get("framed_ip"),
            "max_sessions": row.get("max_sessions", 1),
        })
    return out


def _distinct(rows: Iterable[dict], column: str) -> list[str]:
    return list({row[column] for row in rows if row.get(column) is not None})


# ----------------------------------------------------------------------------- entry point

async def validate_csv(store, text: str) -> tuple[list[dict[str, Any]], int]:
    """Validate `text`; return (rows for the store, number of new accounts).

    Raises `ImportRejected` listing every problem found.
    """
    errors = _Errors()
    rows = _parse(text, errors)
    if not rows and errors:
        raise errors.reject()
    _check_duplicates(rows, errors)
    specs = _collect_accounts(rows, errors)
    taken, existing, plans = await store.driver.run(
        _existing_program, {c: _distinct(rows, c) for c in IDENTITY_COLUMNS},
        list(specs), write=False)
    _check_accounts(specs, existing, errors)
    _check_store(rows, specs, taken, plans, errors)
    if errors:
        raise errors.reject()
    return _store_rows(rows, specs), sum(1 for s in specs.values() if s.existing is None)


async def import_csv(store, text: str, *, actor: str | None = None) -> ImportReport:
    """Validate the CSV `text` completely, then import it in one transaction.

    Raises `ImportRejected` (a `ValidationError`) with every problem and
    imports nothing when any row is bad. A subscriber created concurrently
    with the same identity between validation and commit makes the store
    raise `Conflict`; then too nothing is imported.
    """
    rows, new_accounts = await validate_csv(store, text)
    imported = await store.import_subscribers(rows, actor=actor)
    log.info("imported %d subscribers (%d new accounts) by %s", imported, new_accounts,
             actor or "-")
    return ImportReport(imported=imported, accounts_created=new_accounts)


__all__ = ["import_csv", "validate_csv", "ImportReport", "ImportRejected", "RowError",
           "COLUMNS", "IDENTITY_COLUMNS", "MAX_ERRORS"]
