"""`ocsctl subscriber ...`: network identities, their account and plan, bulk import."""

from __future__ import annotations

import ipaddress
from typing import Any

import click

from .accounts import balance_lines, buckets_table, resolve_account
from .client import ApiFailure, file_size
from .context import Ctx, json_option, pass_ctx
from .output import emit_json, fields, table, when

IMPORT_TIMEOUT = 900.0  # seconds: 100k rows are validated and committed in one request

_FIND_OPTIONS = ("username", "msisdn", "imsi", "sip_user", "framed_ip", "session")


def _title(sub: dict[str, Any]) -> str:
    for key in ("username", "sip_user", "msisdn", "imsi"):
        if sub.get(key):
            return f"Subscriber {sub[key]} (#{sub['id']})"
    return f"Subscriber #{sub['id']}"


def show_subscriber(sub: dict[str, Any]) -> None:
    click.echo(_title(sub))
    plan = sub.get("plan")
    click.echo(fields([
        ("username", sub.get("username")), ("msisdn", sub.get("msisdn")),
        ("imsi", sub.get("imsi")), ("sip user", sub.get("sip_user")),
        ("framed ip", sub.get("framed_ip")), ("max sessions", sub.get("max_sessions")),
        ("password", "set" if sub.get("has_password") else None),
        ("plan", plan["name"] if isinstance(plan, dict) else sub.get("plan_id")),
        ("created", when(sub.get("created_at"))),
    ]))
    acct = sub.get("account")
    if not isinstance(acct, dict):
        click.echo(f"Account #{sub['account_id']}")
        return
    click.echo(f"Account {acct['name']} (#{acct['id']}): {acct['billing']}, {acct['status']}")
    click.echo(balance_lines(acct["balance"]))
    if acct["balance"].get("buckets"):
        click.echo("Buckets")
        click.echo(buckets_table(acct["balance"]))


def _guesses(value: str) -> list[str]:
    """What a bare FIND argument may be, most likely first."""
    order = ["username"]
    try:
        ipaddress.ip_address(value)
        order.append("framed_ip")
    except ValueError:
        pass
    if value.isdigit():
        order += ["msisdn", "imsi"]
    return order + ["sip_user", "session"]


@click.group("subscriber")
def subscriber():
    """Subscribers: identities on the network that charge to an account."""


@subscriber.command("find")
@click.argument("value", required=False)
@click.option("--username")
@click.option("--msisdn")
@click.option("--imsi")
@click.option("--sip-user")
@click.option("--framed-ip", help="Static address or the address of an active session.")
@click.option("--session", help="Session id (ours or the NAS's Acct-Session-Id).")
@json_option
@pass_ctx
def subscriber_find(ctx: Ctx, value, **given):
    """Find a subscriber; a bare VALUE is tried as username, then as other identities."""
    given = {k: v for k, v in given.items() if v is not None}
    if value is not None and given:
        raise click.UsageError("give either VALUE or one --option, not both")
    if len(given) > 1:
        raise click.UsageError("give one of " + ", ".join(
            "--" + k.replace("_", "-") for k in _FIND_OPTIONS))
    if not given and value is None:
        raise click.UsageError("what to find? e.g. 'ocsctl subscriber find demo' or "
                               "--msisdn 41780000001")
    if given:
        sub = ctx.client.get("/v1/subscribers/find", **given)
    else:
        sub = _find_by_value(ctx, value)
    if ctx.json:
        emit_json(sub)
    else:
        show_subscriber(sub)


def _find_by_value(ctx: Ctx, value: str, *, by_id: bool = False) -> dict[str, Any]:
    for key in _guesses(value):
        try:
            return ctx.client.get("/v1/subscribers/find", **{key: value})
        except ApiFailure as exc:
            if exc.status != 404:
                raise
    raise ApiFailure(404, f"no subscriber with {'id, ' if by_id else ''}username, msisdn, "
                          f"imsi, sip_user, framed ip or session {value!r}", code="not_found")


def lookup_subscriber(ctx: Ctx, ref: str) -> dict[str, Any]:
    """The subscriber `ref` names: an id, else a username, MSISDN, IMSI, SIP user,
    framed IP or session id (the first that matches, as 'find')."""
    if ref.isdigit():
        try:
            return ctx.client.get(f"/v1/subscribers/{int(ref)}")
        except ApiFailure as exc:
            if exc.status != 404:
                raise
    return _find_by_value(ctx, ref, by_id=ref.isdigit())


@subscriber.command("show")
@click.argument("ref", metavar="ID|IDENTITY")
@json_option
@pass_ctx
def subscriber_show(ctx: Ctx, ref: str):
    """Show a subscriber, with its account balance and plan: by id, else by
    username, MSISDN, IMSI, SIP user, framed IP or session (as 'find')."""
    sub = lookup_subscriber(ctx, ref)
    if ctx.json:
        emit_json(sub)
    else:
        show_subscriber(sub)


@subscriber.command("list")
@click.option("--account", "account_ref", metavar="ACCOUNT", help="Account id or name.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0)
@json_option
@pass_ctx
def subscriber_list(ctx: Ctx, account_ref, limit, offset):
    """List subscribers."""
    account_id = resolve_account(ctx.client, account_ref) if account_ref else None
    page = ctx.client.get("/v1/subscribers", account_id=account_id, limit=limit,
                          offset=offset)
    if ctx.json:
        return emit_json(page)
    click.echo(table([(s["id"], s["account_id"], s["username"], s["msisdn"], s["imsi"],
                       s["sip_user"], s["framed_ip"], s["plan_id"]) for s in page["items"]],
                     ["id", "account", "username", "msisdn", "imsi", "sip user",
                      "framed ip", "plan"]))


@subscriber.command("add")
@click.option("--account", "account_ref", required=True, metavar="ACCOUNT",
              help="Account id or name (it must exist: see 'ocsctl account add').")
@click.option("--plan", metavar="PLAN", help="Plan id or name.")
@click.option("--username")
@click.option("--msisdn")
@click.option("--imsi")
@click.option("--sip-user")
@click.option("--password")
@click.option("--framed-ip")
@click.option("--max-sessions", type=click.IntRange(min=1))
@json_option
@pass_ctx
def subscriber_add(ctx: Ctx, account_ref, plan, **values):
    """Create a subscriber (at least one of --username, --msisdn, --imsi, --sip-user)."""
    if not any(values.get(k) for k in ("username", "msisdn", "imsi", "sip_user")):
        raise click.UsageError("a subscriber needs at least one of --username, --msisdn, "
                               "--imsi, --sip-user")
    body: dict[str, Any] = {k: v for k, v in values.items() if v is not None}
    if account_ref.isdigit():
        body["account_id"] = int(account_ref)
    else:
        body["account"] = account_ref
    if plan is not None:
        body["plan_id" if plan.isdigit() else "plan"] = int(plan) if plan.isdigit() else plan
    sub = ctx.client.post("/v1/subscribers", body)
    if ctx.json:
        return emit_json(sub)
    click.echo(f"Created {_title(sub).replace('Subscriber', 'subscriber', 1)} on account "
               f"#{sub['account_id']}.")


@subscriber.command("import")
@click.argument("csv_file", type=click.File("rb"), metavar="FILE.csv")
@json_option
@pass_ctx
def subscriber_import(ctx: Ctx, csv_file):
    """Bulk-provision subscribers from a CSV file: all rows or none.

    \b
    Columns (header row required, any order):
      account          account name (required); existing accounts are attached to
      currency         ISO 4217 code, required for a new account
      billing          prepaid (default) | postpaid
      credit_limit     postpaid credit limit, e.g. 100.00
      plan             plan name (must exist)
      username, msisdn (6-15 digits), imsi (14-15 digits), sip_user
                       identities: at least one per row, unique
      password         cleartext or ssha256$.../pbkdf2-sha256$... hash
      framed_ip        static IPv4/IPv6 address
      max_sessions     integer >= 1 (default 1)
      opening_balance  money >= 0, new accounts only
    Every error is listed with its line number (the header is line 1).
    """
    size = file_size(csv_file)
    stream = csv_file if size is not None else _read_all(csv_file)
    result = ctx.client.upload("/v1/subscribers/import", stream, size if size is not None
                               else len(stream.getvalue()), "text/csv",
                               timeout=max(ctx.timeout, IMPORT_TIMEOUT))
    if ctx.json:
        return emit_json(result)
    click.echo(f"Imported {result['imported']} subscriber"
               f"{'s' if result['imported'] != 1 else ''} "
               f"({result['accounts_created']} new account"
               f"{'s' if result['accounts_created'] != 1 else ''}).")


def _read_all(stream):
    import io
    return io.BytesIO(stream.read())


COMMANDS = [subscriber]
