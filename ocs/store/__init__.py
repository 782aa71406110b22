"""Storage: one `Store` over two real backends (SQLite embedded, PostgreSQL).

`open_store(config)` builds the store a configuration asks for; see
`ocs.store.store.Store` for the operations and `ocs.store.sql` for how one
implementation runs on both backends.
"""

from __future__ import annotations

from .store import IDENTITIES, PasswordPolicy, Store

__all__ = ["Store", "PasswordPolicy", "IDENTITIES", "make_driver", "store_from_config"]


def make_driver(url: str, **options):
    """A backend driver for a store URL: `sqlite:PATH` or `postgresql://...`.

    `options` are the backend's tuning knobs (see conf/ocs.toml `[store]`).
    """
    if url.startswith("sqlite:"):
        from .sqlite import SqliteDriver
        path = url[len("sqlite:"):]
        if path.startswith("//"):
            path = path[2:]
        return SqliteDriver(path, synchronous=options.get("sqlite_synchronous", "FULL"))
    if url.startswith(("postgres://", "postgresql://")):
        from .postgres import PostgresDriver
        return PostgresDriver(url, min_size=options.get("pool_min", 2),
                              max_size=options.get("pool_max", 10),
                              schema=options.get("schema"),
                              command_timeout=options.get("command_timeout", 10.0))
    raise ValueError(f"unsupported store url {url!r}: use sqlite:PATH or postgresql://...")


def store_from_config(config, *, metrics=None) -> Store:
    """The Store described by a `ocs.config.Config` (not yet opened)."""
    return Store(
        make_driver(config.store.url, **config.store.driver_options()),
        group_commit_window=config.store.group_commit_window_ms / 1000,
        max_batch=config.store.max_batch,
        password_policy=PasswordPolicy(scheme=config.auth.password_scheme,
                                       store_cleartext=config.auth.store_cleartext,
                                       store_nt_hash=config.auth.store_nt_hash),
        observe_batch=metrics.observe_batch if metrics is not None else None)
