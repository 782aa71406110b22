"""Where `ocsctl` finds the API, the token and the configuration.

Resolution, first match wins:

* API URL: ``--api``, ``$OCS_API``, else ``http://`` + ``[api] listen`` of the
  configuration (a wildcard listen address is reached on loopback), else
  ``http://127.0.0.1:8080``.
* Token: ``--token``, ``$OCS_TOKEN``, the token file (``--token-file``,
  ``$OCS_TOKEN_FILE``, default ``var/ocsctl.token``, written by ``ocsctl demo``
  and ``ocsctl token add --save``), else ``[api] bootstrap_token`` of the
  configuration.
* Configuration: ``--config``, ``$OCS_CONFIG``, default ``conf/ocs.toml``.
  The default file may be missing for API commands (built-in defaults are
  used); commands that open the store need it.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Awaitable, Callable

import click

from .client import Client

DEFAULT_CONFIG = "conf/ocs.toml"
DEFAULT_TOKEN_FILE = "var/ocsctl.token"
DEFAULT_API = "http://127.0.0.1:8080"


class UsageProblem(click.ClickException):
    """A problem with how ocsctl was called or configured: exit status 2."""

    exit_code = 2


class Ctx:
    def __init__(self, *, config: str | None, api: str | None, token: str | None,
                 token_file: str | None, json: bool, timeout: float):
        self.config_path = config or DEFAULT_CONFIG
        self.config_explicit = config is not None
        self.api_option = api
        self.token_option = token
        self.token_file = token_file or DEFAULT_TOKEN_FILE
        self.json = json
        self.timeout = timeout
        self._config: Any = None
        self._client: Client | None = None

    # -------------------------------------------------------------------- configuration
    def config(self, *, required: bool = False):
        """The loaded configuration, or None when the default file does not exist."""
        if self._config is None:
            if not os.path.exists(self.config_path) and not (required or self.config_explicit):
                return None
            from ..config import load
            from ..errors import ConfigError
            try:
                self._config = load(self.config_path)
            except ConfigError as exc:
                raise UsageProblem(f"configuration: {exc}") from None
        return self._config

    # -------------------------------------------------------------------- API
    @property
    def api_url(self) -> str:
        if self.api_option:
            return self.api_option
        config = self.config()
        if config is None:
            return DEFAULT_API
        return "http://" + _reachable(config.api.listen)

    def token(self) -> str | None:
        if self.token_option:
            return self.token_option
        try:
            with open(self.token_file, encoding="utf-8") as fh:
                token = fh.read().strip()
            if token:
                return token
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise UsageProblem(f"cannot read token file {self.token_file}: "
                               f"{exc.strerror}") from None
        config = self.config()
        if config is not None and config.api.bootstrap_token is not None:
            return config.api.bootstrap_token.get_secret_value()
        return None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.api_url, self.token(), timeout=self.timeout)
        return self._client

    # -------------------------------------------------------------------- store
    def run_with_store(self, fn: Callable[[Any], Awaitable[Any]], *,
                       migrate: bool = False) -> Any:
        """Open the configured store, run `await fn(store)`, close it."""
        config = self.config(required=True)
        from ..store import store_from_config

        async def run():
            store = store_from_config(config)
            await store.open(migrate_schema=migrate)
            try:
                return await fn(store)
            finally:
                await store.close()
        return asyncio.run(run())

    def save_token(self, token: str) -> str:
        """Write `token` to the token file (owner-only permissions); returns the path."""
        path = self.token_file
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(token + "\n")
        os.chmod(path, 0o600)  # an existing file keeps its mode on O_CREAT
        return path


def _reachable(listen: str) -> str:
    """HOST:PORT to connect to for a listen address (wildcards become loopback)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


pass_ctx = click.make_pass_decorator(Ctx)


def _set_json(ctx: click.Context, _param, value: bool) -> None:
    if value:
        ctx.find_object(Ctx).json = True


def json_option(fn):
    """`--json` on a subcommand (the same as the global `ocsctl --json`)."""
    return click.option("--json", "json_", is_flag=True, expose_value=False,
                        callback=_set_json, help="Print machine-readable JSON.")(fn)
