"""The balance state of recently charged accounts, kept between batches.

Reading an account's buckets, its sessions' reservations and charges, session
records and usage counters costs five queries per batch; on the request path
nearly every batch touches accounts the previous batches left exactly as they
are. So the writer keeps what it committed, and trusts it only while the
database agrees nobody else changed the account since:

* every transaction that changes an account's balance state bumps
  `accounts.version` (the balance batch with its writes, after locking the
  account; the API's writes, provisioning and deletes too);
* a cached account is used only when the version the batch's lock statement
  finds is the version this node committed last. Another
  node's batch, an API change or an `ocsctl` command in between makes the
  versions disagree, and the account is read afresh.

A session's entry belongs to the account entry it was cached under: when that
account is read afresh, its sessions are too. Entries change in place during
a batch, so a batch that does not commit evicts what it touched (`abort`);
one that commits publishes the new versions (`publish`). Batches are applied
one at a time, which is what makes one staged batch enough.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..balance import AccountState, ChargeState, ReservationState
from ..model import Session


@dataclass(slots=True, eq=False)
class CachedAccount:
    version: int
    state: AccountState
    counters: dict[str, int] = field(default_factory=dict)  # usage counters read or written


@dataclass(slots=True, eq=False)
class CachedSession:
    owner: CachedAccount
    reservations: dict[str, ReservationState]        # service -> hold
    charges: dict[str, ChargeState]                  # service -> charged so far
    record: Session | None = None
    has_record: bool = False                         # `record` was read (None: no row)


class BalanceCache:
    def __init__(self, max_accounts: int = 200_000, max_sessions: int = 500_000):
        self.max_accounts = max_accounts
        self.max_sessions = max_sessions
        self.accounts: dict[int, CachedAccount] = {}
        self.sessions: dict[str, CachedSession] = {}
        # Staged by the batch being applied: account id -> (entry, version once committed),
        # sessions to cache, sessions to forget.
        self._staged: dict[int, tuple[CachedAccount, int]] = {}
        self._staged_sessions: dict[str, CachedSession] = {}
        self._dropped_sessions: set[str] = set()
        self._used_sessions: set[str] = set()  # taken from the cache by the staged batch

    # -- reading (inside the batch) -------------------------------------------------
    def account(self, account_id: int, locked_version: int) -> CachedAccount | None:
        """The cached entry if nobody changed the account since this node committed it;
        `locked_version` is the version the batch's lock statement found."""
        entry = self.accounts.get(account_id)
        if entry is not None and entry.version == locked_version:
            return entry
        return None

    def session(self, session: str, valid: dict[int, CachedAccount]) -> CachedSession | None:
        """The cached session if it belongs to an account entry this batch validated."""
        entry = self.sessions.get(session)
        if entry is None or valid.get(entry.owner.state.id) is not entry.owner:
            return None
        self._used_sessions.add(session)
        return entry

    # -- staging (inside the batch) and publishing (after COMMIT) ----------------------
    def stage(self, entry: CachedAccount, committed_version: int) -> None:
        self._staged[entry.state.id] = (entry, committed_version)

    def staged(self, account_id: int) -> CachedAccount | None:
        hit = self._staged.get(account_id)
        return hit[0] if hit else None

    def stage_session(self, session: str, entry: CachedSession | None) -> None:
        """Cache `entry` for `session` once committed (None: forget the session)."""
        if entry is None:
            self._staged_sessions.pop(session, None)
            self._dropped_sessions.add(session)
        else:
            self._dropped_sessions.discard(session)
            self._staged_sessions[session] = entry

    def publish(self) -> None:
        """The staged batch committed: its entries are the accounts' state at their new versions."""
        if len(self.accounts) + len(self._staged) > self.max_accounts:
            self.clear()  # crude but bounded: the next batches read afresh
        if len(self.sessions) + len(self._staged_sessions) > self.max_sessions:
            self.sessions.clear()
        for account_id, (entry, version) in self._staged.items():
            entry.version = version
            self.accounts[account_id] = entry
        for session in self._dropped_sessions:
            self.sessions.pop(session, None)
        self.sessions.update(self._staged_sessions)
        self._reset_stage()

    def abort(self) -> None:
        """The staged batch did not commit: what it touched may hold uncommitted changes.
        (Also called as a batch starts: a PostgreSQL retry of a deadlocked batch runs
        the program again, and must not see what the failed attempt changed.)"""
        for account_id in self._staged:
            self.accounts.pop(account_id, None)
        for session in (*self._staged_sessions, *self._dropped_sessions, *self._used_sessions):
            self.sessions.pop(session, None)
        self._reset_stage()

    def _reset_stage(self) -> None:
        self._staged = {}
        self._staged_sessions = {}
        self._dropped_sessions = set()
        self._used_sessions = set()

    def clear(self) -> None:
        self.accounts.clear()
        self.sessions.clear()
