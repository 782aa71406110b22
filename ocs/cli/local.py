"""Commands that need no running ocsd: `db migrate`, `demo`, `token add --direct`.

They open the store of the configuration (``[store]``) themselves, so they
work on a fresh machine before ocsd was ever started. `token` also has API
variants (`list`, `delete`, `add` without ``--direct``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import click

from .context import Ctx, json_option, pass_ctx
from .output import emit_json, table, when

ROLES = ["read-only", "operator", "admin"]


# ----------------------------------------------------------------------------- db

@click.group("db")
def db():
    """The store's schema."""


@db.command("migrate")
@json_option
@pass_ctx
def db_migrate(ctx: Ctx):
    """Apply pending schema migrations to the configured store."""
    config = ctx.config(required=True)
    from ..store import store_from_config

    async def run():
        store = store_from_config(config)
        await store.driver.open()  # not store.open(): that refuses an outdated schema
        try:
            before = await store.schema_version()
            applied = await store.migrate()
            return before, applied, await store.schema_version(), store.describe()
        finally:
            await store.driver.close()

    import asyncio
    before, applied, version, where = asyncio.run(run())
    if ctx.json:
        return emit_json({"store": where, "previous_version": before, "applied": applied,
                          "version": version})
    if applied:
        click.echo(f"{where}: applied migration{'s' if len(applied) > 1 else ''} "
                   f"{', '.join(str(v) for v in applied)}; now at version {version}.")
    else:
        click.echo(f"{where}: already at version {version}, nothing to apply.")


# ----------------------------------------------------------------------------- demo

@click.command("demo")
@json_option
@pass_ctx
def demo(ctx: Ctx):
    """Seed the demo dataset (migrating the store first); safe to run again.

    A new demo admin token is printed once and saved to the token file, from
    which ocsctl reads it.
    """
    from .. import demo as demo_data

    info = ctx.run_with_store(demo_data.seed, migrate=True)
    saved = ctx.save_token(info.token) if info.token else None
    if ctx.json:
        data: dict[str, Any] = dataclasses.asdict(info)
        data["token_file"] = saved
        return emit_json(data)
    click.echo(info.summary())
    if saved:
        click.echo(f"Saved to {saved}: ocsctl uses it from there (or pass --token).")
    elif os.path.exists(ctx.token_file):
        click.echo(f"ocsctl uses the token saved in {ctx.token_file}.")


# ----------------------------------------------------------------------------- tokens

@click.group("token")
def token():
    """API tokens (bearer secrets with a role)."""


@token.command("list")
@json_option
@pass_ctx
def token_list(ctx: Ctx):
    """List tokens (names and roles; secrets are never shown again)."""
    page = ctx.client.get("/v1/tokens")
    if ctx.json:
        return emit_json(page)
    click.echo(table([(t["id"], t["name"], t["role"], when(t["created_at"]))
                      for t in page["items"]], ["id", "name", "role", "created"]))


@token.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), default="operator", show_default=True)
@click.option("--direct", is_flag=True,
              help="Write to the configured store instead of calling the API (bootstrap: "
                   "needs no running ocsd and no token).")
@click.option("--save", is_flag=True, help="Also write the secret to the token file.")
@json_option
@pass_ctx
def token_add(ctx: Ctx, name, role, direct, save):
    """Create a token; its secret is printed once."""
    if direct:
        async def create(store):
            from ..errors import Conflict
            if any(t.name == name for t in await store.list_tokens()):
                raise Conflict(f"token {name!r} already exists (delete it first, or pick "
                               "another name)")
            record, secret = await store.create_token(name, role)
            return {"id": record.id, "name": record.name, "role": record.role.value,
                    "token": secret}
        created = ctx.run_with_store(create)
    else:
        created = ctx.client.post("/v1/tokens", {"name": name, "role": role})
    saved = ctx.save_token(created["token"]) if save else None
    if ctx.json:
        return emit_json({**created, "token_file": saved})
    click.echo(f"Token {created['name']} ({created['role']}): {created['token']}")
    click.echo("Shown only now: it is stored hashed and cannot be read back.")
    if saved:
        click.echo(f"Saved to {saved}.")


@token.command("delete")
@click.argument("name")
@json_option
@pass_ctx
def token_delete(ctx: Ctx, name):
    """Revoke a token."""
    import urllib.parse
    ctx.client.delete("/v1/tokens/" + urllib.parse.quote(name, safe=""))
    if ctx.json:
        return emit_json({"deleted": name})
    click.echo(f"Deleted token {name}.")


COMMANDS = [db, demo, token]
