"""The `Store`: every read and write of the charging server, on either backend.

One class serves SQLite and PostgreSQL: each method is a *program* (see
`ocs.store.sql`) run by the backend's driver. Balance operations go through
the group committer (`ocs.store.batch`); everything else is a short
transaction of its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from dataclasses import dataclass
from typing import Any, Iterable

from .. import passwords
from ..balance import Adjust, Commit, Credit, Operation, Release, Reserve, Result
from ..errors import MigrationError, NotFound, StoreUnavailable, ValidationError
from ..model import (Account, AccountStatus, ApiToken, AuditEntry, Billing, Bucket, Kind,
                     LedgerEntry, Nas, Plan, RatedCdr, Reservation, Role, Session, Subscriber,
                     UnmatchedAccounting, now_us)
from . import migrate
from .cache import BalanceCache
from .batch import (UPSERT_SESSION, GroupCommitter, balance_program, bump_accounts_program,
                    purge_operations_program,
                    session_args)
from .sql import execute, executemany, fetch, fetchrow, fetchval

log = logging.getLogger("ocs.store")

IDENTITIES = ("username", "msisdn", "imsi", "sip_user")

_ACCOUNT_FIELDS = ("name", "currency", "billing", "credit_limit", "status", "parent_id",
                   "language", "tax_profile", "low_balance_threshold")
_PLAN_FIELDS = ("name", "currency", "recurring_fee", "period", "allowances", "tariff",
                "speed_profile", "fair_usage", "description", "final_unit", "policy")
_SUBSCRIBER_FIELDS = ("account_id", "plan_id", "username", "msisdn", "imsi", "sip_user",
                      "password_hash", "nt_hash", "cleartext", "framed_ip", "max_sessions")
_NAS_FIELDS = ("name", "kind", "address", "secret", "vendor", "coa_port",
               "require_message_authenticator", "control")
_JSON_FIELDS = {"allowances", "speed_profile", "fair_usage", "control", "attrs", "details",
                "final_unit", "policy"}


def _json(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), default=_enum_value)


def _enum_value(value: Any) -> Any:
    if hasattr(value, "value"):
        return value.value
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _col(name: str, value: Any) -> Any:
    if name in _JSON_FIELDS:
        return _json(value)
    if hasattr(value, "value"):  # enums
        return value.value
    if isinstance(value, bool):
        return int(value)
    return value


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class PasswordPolicy:
    """How subscriber passwords are stored (config `[auth]`)."""

    scheme: str = "ssha256"
    store_cleartext: bool = True   # CHAP needs it
    store_nt_hash: bool = True     # MS-CHAPv2 needs it

    def material(self, password: str | None) -> dict[str, str | None]:
        if password is None:
            return {}
        if passwords.is_hash(password):  # pre-hashed (migration from another system)
            return {"password_hash": password, "nt_hash": None, "cleartext": None}
        return {
            "password_hash": passwords.hash_password(password, scheme=self.scheme),
            "nt_hash": passwords.nt_hash(password) if self.store_nt_hash else None,
            "cleartext": password if self.store_cleartext else None,
        }


class Store:
    """Accounts, subscribers, plans, buckets, balances, sessions, CDRs, NAS, audit."""

    def __init__(self, driver, *, group_commit_window: float = 0.0, max_batch: int = 512,
                 password_policy: PasswordPolicy | None = None, observe_batch=None):
        self.driver = driver
        self.dialect: str = driver.dialect
        self.passwords = password_policy or PasswordPolicy()
        self._committer = GroupCommitter(self._run_balance_batch, window=group_commit_window,
                                         max_batch=max_batch, observe=observe_batch)
        # Unmatched accounting is committed in batches of its own: a NAS reporting
        # for many unknown users costs one transaction per batch, not one per report.
        self._unmatched = GroupCommitter(self._write_unmatched, max_batch=max_batch,
                                         what="unmatched accounting")
        self.balance_cache = BalanceCache()

    # ------------------------------------------------------------------ lifecycle
    def describe(self) -> str:
        return self.driver.describe()

    async def open(self, *, migrate_schema: bool = False) -> None:
        """Connect; migrate if asked, else insist that the schema is current."""
        await self.driver.open()
        try:
            if migrate_schema:
                await self.migrate()
            else:
                version = await self.schema_version()
                if version != migrate.LATEST:
                    raise MigrationError(
                        f"database schema is at version {version}, this ocsd needs "
                        f"{migrate.LATEST}: run 'ocsctl db migrate' (or set "
                        f"store.auto_migrate = true)")
        except BaseException:
            await self.driver.close()
            raise
        self._committer.start()
        self._unmatched.start()

    async def close(self, timeout: float | None = None) -> None:
        """Commit and answer every queued balance operation, then disconnect."""
        await self._committer.stop(timeout)
        await self._unmatched.stop(timeout)
        await self.driver.close()

    async def migrate(self) -> list[int]:
        applied = await self.driver.run(migrate.migrate_program, self.dialect)
        if applied:
            log.info("schema migrated to version %d (applied %s)", migrate.LATEST, applied)
        return applied

    async def schema_version(self) -> int:
        return await self.driver.run(migrate.version_program, self.dialect, write=False)

    async def provisioning_version(self) -> int:
        """A number that moves whenever accounts, subscribers or plans change through
        any store on this database (another node, ocsctl): cached lookups are stale."""
        row = await self._one("SELECT version FROM provisioning WHERE id = 1")
        return row["version"]

    async def ping(self) -> bool:
        def program():
            return (yield fetchval("SELECT 1")) == 1
        return await self.driver.run(program, write=False)

    @property
    def pending_operations(self) -> int:
        return self._committer.pending

    # ------------------------------------------------------------------ balance operations
    async def _run_balance_batch(self, ops: list[Operation]) -> list[Result]:
        try:
            results = await self.driver.run(balance_program, ops, now_us(), self.balance_cache,
                                          quick=True)
        except BaseException:
            self.balance_cache.abort()
            raise
        self.balance_cache.publish()
        return results

    async def apply(self, op: Operation) -> Result:
        """Apply one balance operation durably (group-committed with its neighbours)."""
        return await self._committer.submit(op)

    async def reserve(self, account_id: int, session: str, units: int, **kw) -> Result:
        return await self.apply(Reserve(account_id, session, units, **kw))

    async def commit(self, account_id: int, session: str, used: int, **kw) -> Result:
        return await self.apply(Commit(account_id, session, used, **kw))

    async def release(self, account_id: int, session: str, **kw) -> Result:
        return await self.apply(Release(account_id, session, **kw))

    async def credit(self, account_id: int, amount: int, **kw) -> Result:
        return await self.apply(Credit(account_id, amount, **kw))

    async def adjust(self, account_id: int, amount: int, **kw) -> Result:
        return await self.apply(Adjust(account_id, amount, **kw))

    async def release_expired(self, *, limit: int = 1000) -> int:
        """Supervision: release reservations whose validity passed. Returns units released."""
        now = now_us()

        def program():
            return (yield fetch("SELECT session, service, account_id FROM reservations "
                                "WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2",
                                now, limit))
        rows = await self.driver.run(program, write=False)
        released = 0
        for r in rows:
            result = await self.apply(Release(r["account_id"], r["session"], r["service"],
                                              reason="expired", expired_only=True))
            released += result.released
        return released

    async def purge_operations(self, older_than_s: int) -> int:
        n = await self.driver.run(purge_operations_program, now_us() - older_than_s * 1_000_000)
        self.balance_cache.clear()  # closed charging records it may remember are gone
        return n

    # ------------------------------------------------------------------ accounts
    async def create_account(self, *, name: str, currency: str, billing: Billing | str,
                             credit_limit: int = 0, status: AccountStatus | str = "active",
                             parent_id: int | None = None, language: str = "en",
                             tax_profile: str | None = None,
                             low_balance_threshold: int | None = None,
                             opening_balance: int = 0, actor: str | None = None) -> Account:
        values = dict(name=name, currency=currency.upper(), billing=Billing(billing),
                      credit_limit=credit_limit, status=AccountStatus(status),
                      parent_id=parent_id, language=language, tax_profile=tax_profile,
                      low_balance_threshold=low_balance_threshold)
        if opening_balance < 0:
            raise ValidationError("opening_balance must not be negative")
        (account,) = await self.driver.run(_create_accounts_program, [values],
                                           [opening_balance], actor, now_us())
        return account

    async def get_account(self, account_id: int) -> Account:
        row = await self._one("SELECT * FROM accounts WHERE id = $1", account_id)
        if row is None:
            raise NotFound(f"account {account_id} not found")
        return Account.from_row(row)

    async def find_account(self, name: str) -> Account:
        row = await self._one("SELECT * FROM accounts WHERE name = $1", name)
        if row is None:
            raise NotFound(f"account {name!r} not found")
        return Account.from_row(row)

    async def list_accounts(self, *, status: str | None = None, limit: int = 100,
                            offset: int = 0) -> list[Account]:
        if status:
            rows = await self._all("SELECT * FROM accounts WHERE status = $1 ORDER BY id "
                                   "LIMIT $2 OFFSET $3", status, limit, offset)
        else:
            rows = await self._all("SELECT * FROM accounts ORDER BY id LIMIT $1 OFFSET $2",
                                   limit, offset)
        return [Account.from_row(r) for r in rows]

    async def update_account(self, account_id: int, **changes) -> Account:
        row = await self.driver.run(_update_program, "accounts", account_id,
                                    _only(changes, _ACCOUNT_FIELDS))
        if row is None:
            raise NotFound(f"account {account_id} not found")
        return Account.from_row(row)

    async def set_account_status(self, account_id: int, status: AccountStatus | str, *,
                                 reason: str | None = None, actor: str | None = None
                                 ) -> Account:
        """Suspend, resume or close an account; the change is an event in the outbox
        (same transaction), so enforcement follows it."""
        status = AccountStatus(status)

        def program():
            before = yield fetchval("SELECT status FROM accounts WHERE id = $1 FOR UPDATE",
                                    account_id)
            if before is None:
                return None
            row = yield from _update_program("accounts", account_id, {"status": status})
            if before != status.value:
                now = now_us()
                etype = {"active": "account_restored", "suspended": "account_suspended",
                         "closed": "account_closed"}[status.value]
                event = {"id": f"status|{account_id}|{now}:{etype}", "type": etype,
                         "account_id": account_id, "session": None, "service": None, "at": now,
                         "previous": before, "reason": reason, "actor": actor}
                yield execute("INSERT INTO outbox (event_id, account_id, type, payload, "
                              "created_at) VALUES ($1, $2, $3, $4, $5)", event["id"],
                              account_id, etype, _json(event), now)
            return row
        row = await self.driver.run(program)
        if row is None:
            raise NotFound(f"account {account_id} not found")
        return Account.from_row(row)

    async def unpublished_events(self, limit: int = 500, after: int = 0
                                 ) -> list[tuple[int, dict[str, Any]]]:
        """Outbox rows not yet marked published (with a row id above `after`), oldest
        first."""
        rows = await self._all("SELECT id, payload FROM outbox WHERE published_at IS NULL "
                               "AND id > $1 ORDER BY id LIMIT $2", after, limit)
        return [(r["id"], json.loads(r["payload"])) for r in rows]

    async def mark_published(self, ids: list[int]) -> None:
        def program():
            yield execute("UPDATE outbox SET published_at = $1 WHERE id = ANY($2)",
                          now_us(), ids)
        if ids:
            await self.driver.run(program)

    async def events(self, *, account_id: int | None = None, limit: int = 100
                     ) -> list[dict[str, Any]]:
        """Recent events, newest first (published or not)."""
        if account_id is None:
            rows = await self._all("SELECT payload FROM outbox ORDER BY id DESC LIMIT $1", limit)
        else:
            rows = await self._all("SELECT payload FROM outbox WHERE account_id = $1 "
                                   "ORDER BY id DESC LIMIT $2", account_id, limit)
        return [json.loads(r["payload"]) for r in rows]

    async def buckets(self, account_id: int, *, include_empty: bool = False) -> list[Bucket]:
        sql = "SELECT * FROM buckets WHERE account_id = $1"
        if not include_empty:
            sql += " AND (main = 1 OR balance <> 0 OR reserved <> 0)"
        rows = await self._all(sql + " ORDER BY main, priority, id", account_id, quick=True)
        return [Bucket.from_row(r) for r in rows]

    async def balance(self, account_id: int, *, account: Account | None = None,
                      sessions_of: tuple[int, int] | None = None) -> dict[str, Any]:
        """The money position of an account and its unit buckets, as customers see it.
        (`account`: its record when the caller has it already, one read fewer;
        `sessions_of=(subscriber id, limit)`: also "active_sessions", counted as
        `active_sessions` does, in the same read.)"""
        if account is None or account.id != account_id:
            account = await self.get_account(account_id)
        active = None
        if sessions_of is None:
            buckets = await self.buckets(account_id)
        else:  # the count rides on every bucket row (every account has a main bucket)
            rows = await self._all(_BUCKETS_AND_SESSIONS, account_id, *sessions_of, quick=True)
            buckets = [Bucket.from_row(r) for r in rows]
            if rows:
                active = rows[0]["active_sessions"]
            else:
                active = await self.active_sessions(sessions_of[0], limit=sessions_of[1])
        now = now_us()
        money = [b for b in buckets if b.kind is Kind.MONEY
                 and (b.main or b.valid_to is None or b.valid_to > now)]
        balance = sum(b.balance for b in money)
        reserved = sum(b.reserved for b in money)
        position = {
            "account_id": account_id,
            "currency": account.currency,
            "balance": balance,
            "reserved": reserved,
            "available": balance - reserved - account.floor,
            "floor": account.floor,
            "buckets": buckets,
        }
        if sessions_of is not None:
            position["active_sessions"] = active
        return position

    async def ledger_sums(self, account_id: int) -> dict[int, int]:
        """Sum of ledger amounts per bucket (invariant 3: equals each bucket's balance)."""
        rows = await self._all("SELECT bucket_id, sum(amount) AS total FROM ledger "
                               "WHERE account_id = $1 GROUP BY bucket_id", account_id)
        return {r["bucket_id"]: int(r["total"]) for r in rows}

    async def ledger(self, account_id: int | None = None, *, session: str | None = None,
                     limit: int = 100, before_id: int | None = None) -> list[LedgerEntry]:
        sql, args = ledger_query(account_id, session=session, limit=limit, before_id=before_id)
        return [LedgerEntry.from_row(r) for r in await self._all(sql, *args)]

    async def reservations(self, *, account_id: int | None = None,
                           session: str | None = None) -> list[Reservation]:
        if session is not None:
            rows = await self._all("SELECT * FROM reservations WHERE session = $1", session)
        elif account_id is not None:
            rows = await self._all("SELECT * FROM reservations WHERE account_id = $1",
                                   account_id)
        else:
            rows = await self._all("SELECT * FROM reservations")
        return [Reservation.from_row(r) for r in rows]

    async def session_charges(self, session: str) -> dict[str, dict[str, Any]]:
        """What each service of `session` has been charged so far."""
        rows = await self._all("SELECT * FROM session_charges WHERE session = $1", session)
        return {r["service"]: {"units": r["units"], "cost": r["cost"], "kind": r["kind"],
                               "seq": r["seq"], "closed": bool(r["closed"]),
                               "unpaid": r["unpaid"]} for r in rows}

    async def usage_counter(self, key: str) -> int:
        row = await self._one("SELECT units FROM usage_counters WHERE key = $1", key)
        return row["units"] if row else 0

    # ------------------------------------------------------------------ plans
    async def create_plan(self, *, name: str, currency: str, recurring_fee: int = 0,
                          period: str = "month", allowances: Iterable[dict] = (),
                          tariff: str | None = None, speed_profile: dict | None = None,
                          fair_usage: dict | None = None, description: str = "",
                          final_unit: dict | None = None, policy: dict | None = None) -> Plan:
        values = dict(name=name, currency=currency.upper(), recurring_fee=recurring_fee,
                      period=period, allowances=list(allowances), tariff=tariff,
                      speed_profile=speed_profile, fair_usage=fair_usage,
                      description=description, final_unit=final_unit, policy=policy)
        row = await self.driver.run(_insert_program, "plans", values, now_us())
        return Plan.from_row(row)

    async def get_plan(self, plan_id: int) -> Plan:
        row = await self._one("SELECT * FROM plans WHERE id = $1", plan_id)
        if row is None:
            raise NotFound(f"plan {plan_id} not found")
        return Plan.from_row(row)

    async def find_plan(self, name: str) -> Plan:
        row = await self._one("SELECT * FROM plans WHERE name = $1", name)
        if row is None:
            raise NotFound(f"plan {name!r} not found")
        return Plan.from_row(row)

    async def list_plans(self) -> list[Plan]:
        return [Plan.from_row(r) for r in await self._all("SELECT * FROM plans ORDER BY id")]

    async def update_plan(self, plan_id: int, **changes) -> Plan:
        row = await self.driver.run(_update_program, "plans", plan_id,
                                    _only(changes, _PLAN_FIELDS))
        if row is None:
            raise NotFound(f"plan {plan_id} not found")
        return Plan.from_row(row)

    # ------------------------------------------------------------------ subscribers
    async def create_subscriber(self, *, account_id: int, plan_id: int | None = None,
                                username: str | None = None, msisdn: str | None = None,
                                imsi: str | None = None, sip_user: str | None = None,
                                password: str | None = None, framed_ip: str | None = None,
                                max_sessions: int = 1, actor: str | None = None) -> Subscriber:
        values = dict(account_id=account_id, plan_id=plan_id, username=username, msisdn=msisdn,
                      imsi=imsi, sip_user=sip_user, framed_ip=framed_ip,
                      max_sessions=max_sessions, **self.passwords.material(password))
        if not any(values.get(k) for k in IDENTITIES):
            raise ValidationError("a subscriber needs at least one of "
                                  "username, msisdn, imsi, sip_user")
        (sub,) = await self.driver.run(_create_subscribers_program, [values], actor, now_us())
        return sub

    async def get_subscriber(self, subscriber_id: int) -> Subscriber:
        row = await self._one("SELECT * FROM subscribers WHERE id = $1", subscriber_id)
        if row is None:
            raise NotFound(f"subscriber {subscriber_id} not found")
        return Subscriber.from_row(row)

    async def find_subscriber(self, *, username: str | None = None, msisdn: str | None = None,
                              imsi: str | None = None, sip_user: str | None = None,
                              framed_ip: str | None = None,
                              session: str | None = None) -> Subscriber:
        """The subscriber with that identity, static or current framed IP, or session."""
        given = {k: v for k, v in dict(username=username, msisdn=msisdn, imsi=imsi,
                                       sip_user=sip_user).items() if v is not None}
        row = None
        if given:
            key, value = next(iter(given.items()))
            row = await self._one(f"SELECT * FROM subscribers WHERE {key} = $1", value)
        elif framed_ip is not None:
            row = await self._one(
                "SELECT s.* FROM subscribers s JOIN sessions x ON x.subscriber_id = s.id "
                "WHERE x.framed_ip = $1 AND x.status = 'active' "
                "ORDER BY x.started_at DESC LIMIT 1", framed_ip)
            if row is None:
                row = await self._one("SELECT * FROM subscribers WHERE framed_ip = $1",
                                      framed_ip)
        elif session is not None:
            row = await self._one(
                "SELECT s.* FROM subscribers s JOIN sessions x ON x.subscriber_id = s.id "
                "WHERE x.id = $1 OR x.nas_session_id = $1 LIMIT 1", session)
        else:
            raise ValidationError("find needs one of username, msisdn, imsi, sip_user, "
                                  "framed_ip, session")
        if row is None:
            what = ", ".join(f"{k}={v}" for k, v in dict(
                given, framed_ip=framed_ip, session=session).items() if v is not None)
            raise NotFound(f"no subscriber with {what}")
        return Subscriber.from_row(row)

    async def list_subscribers(self, *, account_id: int | None = None, limit: int = 100,
                               offset: int = 0) -> list[Subscriber]:
        if account_id is not None:
            rows = await self._all("SELECT * FROM subscribers WHERE account_id = $1 "
                                   "ORDER BY id LIMIT $2 OFFSET $3", account_id, limit, offset)
        else:
            rows = await self._all("SELECT * FROM subscribers ORDER BY id LIMIT $1 OFFSET $2",
                                   limit, offset)
        return [Subscriber.from_row(r) for r in rows]

    async def update_subscriber(self, subscriber_id: int, *, password: str | None = None,
                                **changes) -> Subscriber:
        """Change a subscriber. A new plan is a `plan_changed` event in the outbox
        (same transaction), so enforcement pushes the new plan's speed."""
        changes = _only(changes, _SUBSCRIBER_FIELDS)
        changes.update(self.passwords.material(password))

        def program():
            before = yield fetchrow("SELECT account_id, plan_id FROM subscribers "
                                    "WHERE id = $1", subscriber_id)
            if before is None:
                return None
            row = yield from _update_program("subscribers", subscriber_id, changes)
            if row["account_id"] != before["account_id"]:  # its sessions and counters move
                yield from bump_accounts_program([before["account_id"], row["account_id"]])
            if "plan_id" in changes and changes["plan_id"] != before["plan_id"]:
                now = now_us()
                event = {"id": f"plan|{subscriber_id}|{now}:plan_changed",
                         "type": "plan_changed", "subscriber_id": subscriber_id,
                         "account_id": before["account_id"], "session": None,
                         "service": None, "at": now, "previous_plan_id": before["plan_id"],
                         "plan_id": changes["plan_id"]}
                yield execute("INSERT INTO outbox (event_id, account_id, type, payload, "
                              "created_at) VALUES ($1, $2, $3, $4, $5)", event["id"],
                              before["account_id"], "plan_changed", _json(event), now)
            return row
        row = await self.driver.run(program)
        if row is None:
            raise NotFound(f"subscriber {subscriber_id} not found")
        return Subscriber.from_row(row)

    async def delete_subscriber(self, subscriber_id: int) -> None:
        def program():
            active = yield fetchval("SELECT count(*) FROM sessions WHERE subscriber_id = $1 "
                                    "AND status = 'active'", subscriber_id)
            if active:
                raise ValidationError(f"subscriber {subscriber_id} has {active} active "
                                      "session(s); end them first")
            account_id = yield fetchval("SELECT account_id FROM subscribers WHERE id = $1",
                                        subscriber_id)
            if account_id is None:
                return 0
            yield execute("DELETE FROM sessions WHERE subscriber_id = $1", subscriber_id)
            yield from bump_accounts_program([account_id])
            deleted = yield execute("DELETE FROM subscribers WHERE id = $1", subscriber_id)
            yield from bump_provisioning_program()
            return deleted
        if not await self.driver.run(program):
            raise NotFound(f"subscriber {subscriber_id} not found")

    async def import_subscribers(self, rows: list[dict[str, Any]], *,
                                 actor: str | None = None) -> int:
        """Provision accounts and subscribers in one transaction: all or nothing.

        Each row: account fields (`account`, `currency`, `billing`,
        `credit_limit`), `plan` (name), identities, `password`,
        `opening_balance`. Rows naming an existing account attach to it.
        Validation of the rows is the caller's job (ocs.provisioning).
        """
        return await self.driver.run(_import_program, rows, self.passwords, actor, now_us())

    # ------------------------------------------------------------------ NAS / peers
    async def create_nas(self, *, name: str, address: str, secret: str = "",
                         kind: str = "nas", vendor: str = "generic", coa_port: int = 3799,
                         require_message_authenticator: str = "yes",
                         control: dict | None = None) -> Nas:
        values = dict(name=name, kind=kind, address=address, secret=secret, vendor=vendor,
                      coa_port=coa_port,
                      require_message_authenticator=require_message_authenticator,
                      control=control or {})
        return Nas.from_row(await self.driver.run(_insert_program, "nas", values, now_us()))

    async def list_nas(self) -> list[Nas]:
        return [Nas.from_row(r) for r in await self._all("SELECT * FROM nas ORDER BY id")]

    async def get_nas(self, nas_id: int) -> Nas:
        row = await self._one("SELECT * FROM nas WHERE id = $1", nas_id)
        if row is None:
            raise NotFound(f"NAS {nas_id} not found")
        return Nas.from_row(row)

    async def update_nas(self, nas_id: int, **changes) -> Nas:
        row = await self.driver.run(_update_program, "nas", nas_id, _only(changes, _NAS_FIELDS))
        if row is None:
            raise NotFound(f"NAS {nas_id} not found")
        return Nas.from_row(row)

    async def delete_nas(self, nas_id: int) -> None:
        def program():
            return (yield execute("DELETE FROM nas WHERE id = $1", nas_id))
        if not await self.driver.run(program):
            raise NotFound(f"NAS {nas_id} not found")

    # ------------------------------------------------------------------ sessions
    async def upsert_session(self, session: Session) -> None:
        def program():
            yield execute(UPSERT_SESSION, *session_args(session))
            yield from bump_accounts_program([session.account_id])
        await self.driver.run(program)

    async def get_session(self, session_id: str) -> Session:
        row = await self._one("SELECT * FROM sessions WHERE id = $1", session_id)
        if row is None:
            raise NotFound(f"session {session_id!r} not found")
        return Session.from_row(row)

    async def list_sessions(self, *, status: str | None = "active",
                            account_id: int | None = None, subscriber_id: int | None = None,
                            nas: str | None = None, id_prefix: str | None = None,
                            updated_before: int | None = None, framed_ip: str | None = None,
                            limit: int = 100, offset: int = 0) -> list[Session]:
        """Sessions, newest first. `id_prefix`: only those whose id starts with it
        (the sessions of one NAS behind a shared entry, see radius.accounting);
        `updated_before`: only those whose record was last written before that time
        (µs, this server's clock): a session opened later, whatever time its client
        gave it, is not among them; `framed_ip`: only those holding that address."""
        where, args = _where(("status", "=", status), ("account_id", "=", account_id),
                             ("subscriber_id", "=", subscriber_id), ("nas", "=", nas),
                             (f"substr(id, 1, {len(id_prefix or '')})", "=", id_prefix),
                             ("updated_at", "<", updated_before), ("framed_ip", "=", framed_ip))
        args += [limit, offset]
        rows = await self._all(f"SELECT * FROM sessions{where} ORDER BY started_at DESC "
                               f"LIMIT ${len(args) - 1} OFFSET ${len(args)}", *args,
                               # a subscriber's few sessions, an address's one or two
                               quick=subscriber_id is not None or framed_ip is not None)
        return [Session.from_row(r) for r in rows]

    async def active_sessions(self, subscriber_id: int, *, limit: int) -> int:
        """How many sessions of a subscriber are active, counting up to `limit`
        (the simultaneous-use check needs no more)."""
        row = await self._one(_COUNT_ACTIVE_SESSIONS, subscriber_id, limit)
        return row["n"]

    async def stale_sessions(self, before: int, *, limit: int = 500, proto: str | None = None,
                             other_than: tuple[str, ...] = ()) -> list[Session]:
        """Active sessions with no request since `before` (supervision): of `proto`
        only, or of any protocol but those in `other_than`."""
        where, args = _where(("status", "=", "active"), ("updated_at", "<", before),
                             ("proto", "=", proto))
        for p in other_than:
            args.append(p)
            where += f" AND proto <> ${len(args)}"
        args.append(limit)
        rows = await self._all(f"SELECT * FROM sessions{where} ORDER BY updated_at "
                               f"LIMIT ${len(args)}", *args)
        return [Session.from_row(r) for r in rows]

    async def swap_peer_state(self, origin_host: str, origin_state_id: int) -> int | None:
        """Record the Origin-State-Id a Diameter client sent (in a CER or a request)
        when it is higher than the one recorded (RFC 6733 §8.16: it grows with each
        restart; a late message of an earlier run carries a lower one); returns the
        one recorded before (None the first time). Atomic: of two nodes that see the
        same restart, one gets the old value and the other the new one."""
        def program():
            before = yield fetchval("SELECT origin_state_id FROM diameter_peer_states "
                                    "WHERE origin_host = $1 FOR UPDATE", origin_host)
            if before is None or origin_state_id > before:
                yield execute("INSERT INTO diameter_peer_states (origin_host, origin_state_id, "
                              "updated_at) VALUES ($1, $2, $3) ON CONFLICT (origin_host) DO "
                              "UPDATE SET origin_state_id = excluded.origin_state_id, "
                              "updated_at = excluded.updated_at",
                              origin_host, origin_state_id, now_us())
            return before
        return await self.driver.run(program)

    async def count_sessions(self, *, status: str = "active") -> dict[str, int]:
        rows = await self._all("SELECT proto, count(*) AS n FROM sessions WHERE status = $1 "
                               "GROUP BY proto", status)
        return {r["proto"]: int(r["n"]) for r in rows}

    # ------------------------------------------------------------------ CDRs
    async def add_cdr(self, *, account_id: int, kind: Kind | str, started_at: int,
                      ended_at: int, units: int, cost: int, currency: str,
                      session: str | None = None, subscriber_id: int | None = None,
                      service: str = "", details: dict | None = None) -> RatedCdr:
        values = dict(session=session, account_id=account_id, subscriber_id=subscriber_id,
                      service=service, kind=Kind(kind), started_at=started_at,
                      ended_at=ended_at, units=units, cost=cost, currency=currency,
                      details=details or {})
        row = await self.driver.run(_insert_program, "cdrs", values, now_us(), False)
        return RatedCdr.from_row(row)

    async def list_cdrs(self, *, account_id: int | None = None, session: str | None = None,
                        limit: int = 100, before_id: int | None = None) -> list[RatedCdr]:
        where, args = _where(("account_id", "=", account_id), ("session", "=", session),
                             ("id", "<", before_id))
        args.append(limit)
        rows = await self._all(f"SELECT * FROM cdrs{where} ORDER BY id DESC LIMIT ${len(args)}",
                               *args)
        return [RatedCdr.from_row(r) for r in rows]

    # ------------------------------------------------------------------ unmatched accounting
    async def record_unmatched(self, *, session: str, proto: str, nas: str | None,
                               nas_session_id: str | None, identity: str, closed: bool,
                               units: dict[str, int], attrs: dict[str, Any], seq: int,
                               at: int) -> None:
        """Keep a usage report for an unknown subscriber (durably, when this returns).
        The session's row takes the report with the highest `seq` (the latest
        cumulative counters, whatever order reports come in); a Stop closes it."""
        await self._unmatched.submit((
            session, proto, nas, nas_session_id, identity, "closed" if closed else "active",
            json.dumps(units, separators=(",", ":")),
            json.dumps(attrs, separators=(",", ":"), default=str), seq, at))

    async def _write_unmatched(self, rows: list[tuple]) -> list[None]:
        await self.driver.run(_record_unmatched_program, rows)
        return [None] * len(rows)

    async def list_unmatched(self, *, nas: str | None = None, status: str | None = None,
                             limit: int = 100, offset: int = 0) -> list[UnmatchedAccounting]:
        """Unmatched accounting, the most recently reported first."""
        where, args = _where(("nas", "=", nas), ("status", "=", status))
        args += [limit, offset]
        rows = await self._all(f"SELECT * FROM unmatched_accounting{where} ORDER BY last_at DESC, "
                               f"session LIMIT ${len(args) - 1} OFFSET ${len(args)}", *args)
        return [UnmatchedAccounting.from_row(r) for r in rows]

    async def purge_unmatched(self, older_than_s: int) -> int:
        """Forget unmatched accounting last reported more than `older_than_s` ago."""
        def program(before: int):
            return (yield execute("DELETE FROM unmatched_accounting WHERE last_at < $1",
                                  before))
        return await self.driver.run(program, now_us() - older_than_s * 1_000_000)

    async def delete_unmatched(self, session: str) -> None:
        """Forget one session's unmatched accounting (reconciled)."""
        def program():
            return (yield execute("DELETE FROM unmatched_accounting WHERE session = $1",
                                  session))
        if not await self.driver.run(program):
            raise NotFound(f"no unmatched accounting for session {session!r}")

    # ------------------------------------------------------------------ audit
    async def add_audit(self, *, actor: str, role: str, action: str, status: int,
                        target: str | None = None, request: Any = None,
                        remote: str | None = None) -> None:
        def program():
            yield execute("INSERT INTO audit (at, actor, role, action, target, request, status, "
                          "remote) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                          now_us(), actor, role, action, target,
                          # Always encoded: a JSON body may be a bare string.
                          None if request is None else json.dumps(
                              request, separators=(",", ":"), default=_enum_value),
                          status, remote)
        await self.driver.run(program)

    async def list_audit(self, *, actor: str | None = None, limit: int = 100,
                         before_id: int | None = None) -> list[AuditEntry]:
        where, args = _where(("actor", "=", actor), ("id", "<", before_id))
        args.append(limit)
        rows = await self._all(f"SELECT * FROM audit{where} ORDER BY id DESC LIMIT ${len(args)}",
                               *args)
        return [AuditEntry.from_row(r) for r in rows]

    # ------------------------------------------------------------------ API tokens
    async def create_token(self, name: str, role: Role | str, token: str | None = None
                           ) -> tuple[ApiToken, str]:
        """Create a token; returns the record and the secret (shown once, stored hashed)."""
        token = token or secrets.token_urlsafe(32)
        values = dict(name=name, token_hash=token_hash(token), role=Role(role).value)

        def program():
            return (yield fetchrow("INSERT INTO api_tokens (name, token_hash, role, created_at) "
                                   "VALUES ($1, $2, $3, $4) RETURNING *", values["name"],
                                   values["token_hash"], values["role"], now_us()))
        return ApiToken.from_row(await self.driver.run(program)), token

    async def verify_token(self, token: str) -> ApiToken | None:
        row = await self._one("SELECT * FROM api_tokens WHERE token_hash = $1", token_hash(token))
        return ApiToken.from_row(row) if row else None

    async def list_tokens(self) -> list[ApiToken]:
        return [ApiToken.from_row(r) for r in await self._all("SELECT * FROM api_tokens "
                                                              "ORDER BY id")]

    async def delete_token(self, name: str) -> None:
        def program():
            return (yield execute("DELETE FROM api_tokens WHERE name = $1", name))
        if not await self.driver.run(program):
            raise NotFound(f"token {name!r} not found")

    # ------------------------------------------------------------------ helpers
    async def _one(self, sql: str, *args):
        """One row by key: a point lookup, cheap enough to run inline (see drivers)."""
        rows = await self.driver.fetch_now(sql, *args)
        return rows[0] if rows else None

    async def _all(self, sql: str, *args, quick: bool = False):
        if quick:
            return await self.driver.fetch_now(sql, *args)

        def program():
            return (yield fetch(sql, *args))
        return await self.driver.run(program, write=False)


# ---------------------------------------------------------------------- programs

def _only(changes: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    unknown = set(changes) - set(allowed)
    if unknown:
        raise ValidationError(f"cannot change {', '.join(sorted(unknown))}")
    return changes


def _insert_program(table: str, values: dict[str, Any], now: int, updated: bool = True):
    cols = list(values) + (["created_at", "updated_at"] if updated else ["created_at"])
    args = [_col(k, v) for k, v in values.items()] + ([now, now] if updated else [now])
    marks = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    row = yield fetchrow(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks}) "
                         "RETURNING *", *args)
    if table in _PROVISIONING:
        yield from bump_provisioning_program()
    return row


# A subscriber's active sessions, counted up to a limit: the subscriber id and the
# limit are the parameters numbered here.
_ACTIVE_SESSIONS = ("(SELECT count(*) FROM (SELECT 1 FROM sessions WHERE subscriber_id = ${} "
                    "AND status = 'active' LIMIT ${}) AS s)")
_COUNT_ACTIVE_SESSIONS = f"SELECT {_ACTIVE_SESSIONS.format(1, 2)} AS n"
_BUCKETS_AND_SESSIONS = (
    f"SELECT *, {_ACTIVE_SESSIONS.format(2, 3)} AS active_sessions FROM buckets "
    "WHERE account_id = $1 AND (main = 1 OR balance <> 0 OR reserved <> 0) "
    "ORDER BY main, priority, id")


def _where(*conditions: tuple[str, str, Any]) -> tuple[str, list]:
    """' WHERE a = $1 AND b < $2' and its arguments, from (column, operator, value)
    filters; a filter whose value is None is left out."""
    clauses, args = [], []
    for column, op, value in conditions:
        if value is not None:
            args.append(value)
            clauses.append(f"{column} {op} ${len(args)}")
    return ((" WHERE " + " AND ".join(clauses)) if clauses else ""), args


def _record_unmatched_program(rows: list[tuple]):
    """Each row in turn: two reports of one session in a batch both count."""
    yield executemany(
        "INSERT INTO unmatched_accounting (session, proto, nas, nas_session_id, identity, "
        "status, units, attrs, seq, first_at, last_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) "
        "ON CONFLICT (session) DO UPDATE SET reports = unmatched_accounting.reports + 1, "
        "last_at = CASE WHEN excluded.last_at > unmatched_accounting.last_at "
        "THEN excluded.last_at ELSE unmatched_accounting.last_at END, "
        "status = CASE WHEN excluded.seq >= unmatched_accounting.seq OR "
        "excluded.status = 'closed' THEN excluded.status ELSE unmatched_accounting.status END, "
        "units = CASE WHEN excluded.seq >= unmatched_accounting.seq THEN excluded.units "
        "ELSE unmatched_accounting.units END, "
        "attrs = CASE WHEN excluded.attrs <> '{}' THEN excluded.attrs "
        "ELSE unmatched_accounting.attrs END, "
        "seq = CASE WHEN excluded.seq >= unmatched_accounting.seq THEN excluded.seq "
        "ELSE unmatched_accounting.seq END", rows)


# Tables whose changes the charging core's lookup caches must see (Store.provisioning_version).
_PROVISIONING = ("accounts", "subscribers", "plans")


def bump_provisioning_program():
    """Program fragment, after the change it announces: the one provisioning row is
    taken last, after any account row, so two provisioning writers never deadlock."""
    yield execute("UPDATE provisioning SET version = version + 1 WHERE id = 1")


def _update_program(table: str, row_id: int, changes: dict[str, Any]):
    if not changes:
        return (yield fetchrow(f"SELECT * FROM {table} WHERE id = $1", row_id))
    sets = ", ".join(f"{k} = ${i}" for i, k in enumerate(changes, start=2))
    if table == "accounts":  # the balance cache must read the account afresh
        sets += ", version = version + 1"
    args = [_col(k, v) for k, v in changes.items()]
    row = yield fetchrow(f"UPDATE {table} SET {sets}, updated_at = ${len(args) + 2} "
                         f"WHERE id = $1 RETURNING *", row_id, *args, now_us())
    if table in _PROVISIONING and row is not None:
        yield from bump_provisioning_program()
    return row


def _create_accounts_program(accounts: list[dict], openings: list[int], actor, now):
    created = []
    for values, opening in zip(accounts, openings):
        row = yield from _insert_program("accounts", values, now)
        bucket_id = yield fetchval(
            "INSERT INTO buckets (account_id, kind, balance, reserved, priority, main, name, "
            "created_at) VALUES ($1, 'money', $2, 0, 1000000, 1, 'main', $3) RETURNING id",
            row["id"], opening, now)
        if opening:
            yield execute(
                "INSERT INTO ledger (account_id, bucket_id, kind, amount, balance_after, "
                "entry_type, reason, actor, created_at) "
                "VALUES ($1, $2, 'money', $3, $3, 'credit', 'opening balance', $4, $5)",
                row["id"], bucket_id, opening, actor, now)
        created.append(Account.from_row(row))
    return created


def _grant_allowances(account_id: int, plan_row, actor, now):
    """Program fragment: the plan's allowance buckets for the current period."""
    if plan_row is None:
        return
    yield from bump_accounts_program([account_id])
    for a in json.loads(plan_row["allowances"] or "[]"):
        valid_to = now + a["validity_days"] * 86_400_000_000 if a.get("validity_days") else None
        bucket_id = yield fetchval(
            "INSERT INTO buckets (account_id, kind, service, balance, reserved, priority, "
            "valid_from, valid_to, main, name, created_at) "
            "VALUES ($1, $2, $3, $4, 0, $5, $6, $7, 0, $8, $6) RETURNING id",
            account_id, a["kind"], a.get("service"), a["units"], a.get("priority", 10), now,
            valid_to, f"{plan_row['name']} allowance")
        yield execute(
            "INSERT INTO ledger (account_id, bucket_id, kind, amount, balance_after, entry_type, "
            "reason, actor, created_at) VALUES ($1, $2, $3, $4, $4, 'credit', $5, $6, $7)",
            account_id, bucket_id, a["kind"], a["units"], f"plan {plan_row['name']} allowance",
            actor, now)


def _create_subscribers_program(subscribers: list[dict], actor, now):
    created = []
    plans: dict[int, Any] = {}
    for values in subscribers:
        locked = yield fetchval("SELECT id FROM accounts WHERE id = $1 FOR UPDATE",
                                values["account_id"])
        if locked is None:
            raise NotFound(f"account {values['account_id']} not found")
        plan_id = values.get("plan_id")
        if plan_id is not None and plan_id not in plans:
            plans[plan_id] = yield fetchrow("SELECT * FROM plans WHERE id = $1", plan_id)
            if plans[plan_id] is None:
                raise NotFound(f"plan {plan_id} not found")
        row = yield from _insert_program("subscribers", values, now)
        yield from _grant_allowances(values["account_id"], plans.get(plan_id), actor, now)
        created.append(Subscriber.from_row(row))
    return created


def _import_program(rows: list[dict], policy: PasswordPolicy, actor, now):
    """All-or-nothing bulk provisioning; see Store.import_subscribers."""
    plan_rows = yield fetch("SELECT * FROM plans")
    plans = {r["name"]: r for r in plan_rows}
    account_ids: dict[str, int] = {}
    names = sorted({r["account"] for r in rows})
    existing = yield fetch("SELECT id, name FROM accounts WHERE name = ANY($1)", names)
    account_ids.update({r["name"]: r["id"] for r in existing})
    for r in rows:
        if r.get("plan") and r["plan"] not in plans:
            raise ValidationError(f"line {r.get('line', '?')}: plan {r['plan']!r} does not exist")
    # New accounts (first row of each wins), with their main bucket and opening balance.
    new_accounts: dict[str, dict] = {}
    for r in rows:
        if r["account"] not in account_ids and r["account"] not in new_accounts:
            new_accounts[r["account"]] = r
    yield executemany(
        "INSERT INTO accounts (name, currency, billing, credit_limit, status, language, "
        "created_at, updated_at) VALUES ($1, $2, $3, $4, 'active', $5, $6, $6)",
        [(r["account"], r["currency"], r["billing"], r.get("credit_limit", 0),
          r.get("language", "en"), now) for r in new_accounts.values()])
    if new_accounts:
        created = yield fetch("SELECT id, name FROM accounts WHERE name = ANY($1)",
                              list(new_accounts))
        account_ids.update({r["name"]: r["id"] for r in created})
    yield executemany(
        "INSERT INTO buckets (account_id, kind, balance, reserved, priority, main, name, "
        "created_at) VALUES ($1, 'money', $2, 0, 1000000, 1, 'main', $3)",
        [(account_ids[name], r.get("opening_balance", 0), now)
         for name, r in new_accounts.items()])
    funded = [name for name, r in new_accounts.items() if r.get("opening_balance")]
    if funded:
        mains = yield fetch("SELECT account_id, id, balance FROM buckets WHERE main = 1 "
                            "AND account_id = ANY($1)", [account_ids[n] for n in funded])
        yield executemany(
            "INSERT INTO ledger (account_id, bucket_id, kind, amount, balance_after, "
            "entry_type, reason, actor, created_at) VALUES ($1, $2, 'money', $3, $3, 'credit', "
            "'opening balance', $4, $5)",
            [(m["account_id"], m["id"], m["balance"], actor, now) for m in mains])
    # Subscribers.
    sub_rows = []
    for r in rows:
        material = policy.material(r.get("password"))
        plan = plans.get(r.get("plan")) if r.get("plan") else None
        sub_rows.append((account_ids[r["account"]], plan["id"] if plan else None,
                         r.get("username"), r.get("msisdn"), r.get("imsi"), r.get("sip_user"),
                         material.get("password_hash"), material.get("nt_hash"),
                         material.get("cleartext"), r.get("framed_ip"),
                         r.get("max_sessions", 1), now, now))
    yield executemany(
        "INSERT INTO subscribers (account_id, plan_id, username, msisdn, imsi, sip_user, "
        "password_hash, nt_hash, cleartext, framed_ip, max_sessions, created_at, updated_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)", sub_rows)
    # Plan allowances, one set per subscriber: the buckets in one statement, then their
    # opening ledger credits in one more, read back from the buckets just written.
    buckets = []
    for r in rows:
        plan = plans.get(r.get("plan")) if r.get("plan") else None
        for a in json.loads(plan["allowances"] or "[]") if plan is not None else ():
            valid_to = now + a["validity_days"] * 86_400_000_000 \
                if a.get("validity_days") else None
            buckets.append((account_ids[r["account"]], a["kind"], a.get("service"), a["units"],
                            a.get("priority", 10), now, valid_to, f"{plan['name']} allowance"))
    if buckets:
        before = yield fetchval("SELECT coalesce(max(id), 0) FROM buckets")
        yield executemany(
            "INSERT INTO buckets (account_id, kind, service, balance, reserved, priority, "
            "valid_from, valid_to, main, name, created_at) "
            "VALUES ($1, $2, $3, $4, 0, $5, $6, $7, 0, $8, $6)", buckets)
        yield execute(
            "INSERT INTO ledger (account_id, bucket_id, kind, amount, balance_after, entry_type, "
            "reason, actor, created_at) SELECT account_id, id, kind, balance, balance, 'credit', "
            "'plan ' || substr(name, 1, length(name) - 10) || ' allowance', $1, $2 "
            "FROM buckets WHERE id > $3 AND main = 0 AND created_at = $2 "
            "AND account_id = ANY($4)",
            actor, now, before, sorted({b[0] for b in buckets}))
        yield from bump_accounts_program([b[0] for b in buckets])
    yield from bump_provisioning_program()  # last, as everywhere: accounts are locked first
    return len(rows)


def ledger_query(account_id: int | None = None, *, session: str | None = None,
                 limit: int = 100, before_id: int | None = None) -> tuple[str, list]:
    """The ledger listing, newest first, as (sql, args).

    The ledger is indexed by account only (migration 0010), so a session's
    entries are looked for under the accounts that session charged.
    """
    clauses, args = [], []
    if account_id is not None:
        args.append(account_id)
        clauses.append(f"account_id = ${len(args)}")
    if session is not None:
        args.append(session)
        n = len(args)
        clauses.append(f"session = ${n}")
        if account_id is None:
            clauses.append(
                f"account_id IN (SELECT account_id FROM sessions WHERE id = ${n} "
                f"UNION SELECT account_id FROM session_charges WHERE session = ${n} "
                f"UNION SELECT account_id FROM reservations WHERE session = ${n})")
    if before_id is not None:
        args.append(before_id)
        clauses.append(f"id < ${len(args)}")
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    args.append(limit)
    return f"SELECT * FROM ledger{where} ORDER BY id DESC LIMIT ${len(args)}", args


__all__ = ["Store", "PasswordPolicy", "StoreUnavailable", "IDENTITIES", "token_hash"]
