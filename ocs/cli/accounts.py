"""`ocsctl account ...`: who pays, their balance, top-ups and corrections."""

from __future__ import annotations

from typing import Any

import click

from .client import ApiFailure, Client
from .context import Ctx, json_option, pass_ctx
from .output import amount, emit_json, fields, table, when

_PAGE = 1000


def resolve_account(client: Client, ref: str) -> int:
    """The id of the account named `ref` (an id, or a name).

    The API has no lookup by account name yet, so a name is resolved by, in
    order: a `name` filter on GET /v1/accounts if the server has one; the
    subscriber with that username when its account has that name (true of
    the demo data and of one-subscriber accounts); a scan of the accounts.
    """
    ref = ref.strip()
    if ref.isdigit():
        return int(ref)
    try:
        page = client.get("/v1/accounts", name=ref, limit=_PAGE)
    except ApiFailure as exc:
        if exc.status not in (400, 422):  # 422: this server has no name filter
            raise
    else:
        match = [a for a in page["items"] if a["name"] == ref]
        if match:
            return match[0]["id"]
        if not page["items"]:
            raise ApiFailure(404, f"no account named {ref!r}", code="not_found")
    try:
        sub = client.get("/v1/subscribers/find", username=ref)
        if sub["account"]["name"] == ref:
            return sub["account"]["id"]
    except ApiFailure as exc:
        if exc.status != 404:
            raise
    offset = 0
    while True:
        page = client.get("/v1/accounts", limit=_PAGE, offset=offset)
        for a in page["items"]:
            if a["name"] == ref:
                return a["id"]
        if len(page["items"]) < _PAGE:
            raise ApiFailure(404, f"no account named {ref!r}", code="not_found")
        offset += _PAGE


def balance_pairs(bal: dict[str, Any]) -> list[tuple[str, Any]]:
    cur = bal["currency"]
    pairs = [("balance", f"{bal['balance']} {cur}"), ("reserved", bal["reserved"]),
             ("available", bal["available"])]
    if _nonzero(bal.get("floor")):
        pairs.append(("floor", bal["floor"]))
    return pairs


def balance_lines(bal: dict[str, Any], indent: int = 2) -> str:
    return fields(balance_pairs(bal), indent)


def _nonzero(money: str | None) -> bool:
    return bool(money) and money.lstrip("-").replace(".", "").strip("0") != ""


def buckets_table(bal: dict[str, Any]) -> str:
    rows = [(b["id"], b["name"] or ("main" if b["main"] else ""), b["kind"], b["service"],
             amount(b["kind"], b["balance"], bal["currency"]),
             amount(b["kind"], b["reserved"], bal["currency"]), when(b["valid_to"]))
            for b in bal["buckets"]]
    return table(rows, ["id", "bucket", "kind", "service", "balance", "reserved", "valid to"])


def show_account(acct: dict[str, Any]) -> None:
    click.echo(f"Account {acct['name']} (#{acct['id']})")
    pairs = [("status", acct["status"]), ("billing", acct["billing"]),
             ("currency", acct["currency"])]
    if acct["billing"] == "postpaid":
        pairs.append(("credit limit", acct["credit_limit"]))
    if "balance" in acct:
        pairs += balance_pairs(acct["balance"])
    click.echo(fields(pairs))
    if "balance" in acct:
        if acct["balance"]["buckets"]:
            click.echo("Buckets")
            click.echo(buckets_table(acct["balance"]))


@click.group("account")
def account():
    """Accounts: who pays. Name them by id or by name."""


@account.command("show")
@click.argument("ref")
@json_option
@pass_ctx
def account_show(ctx: Ctx, ref: str):
    """Show an account, its balance and buckets."""
    acct = ctx.client.get(f"/v1/accounts/{resolve_account(ctx.client, ref)}")
    if ctx.json:
        emit_json(acct)
    else:
        show_account(acct)


@account.command("list")
@click.option("--status", type=click.Choice(["active", "suspended", "closed"]))
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0)
@json_option
@pass_ctx
def account_list(ctx: Ctx, status, limit, offset):
    """List accounts."""
    page = ctx.client.get("/v1/accounts", status=status, limit=limit, offset=offset)
    if ctx.json:
        return emit_json(page)
    click.echo(table([(a["id"], a["name"], a["billing"], a["currency"], a["status"],
                       a["credit_limit"] if a["billing"] == "postpaid" else None)
                      for a in page["items"]],
                     ["id", "name", "billing", "currency", "status", "credit limit"]))


@account.command("add")
@click.argument("name")
@click.option("--currency", required=True, help="ISO 4217 code, e.g. EUR.")
@click.option("--billing", type=click.Choice(["prepaid", "postpaid"]), default="prepaid",
              show_default=True)
@click.option("--credit-limit", metavar="AMOUNT", help="Postpaid credit limit, e.g. 100.00.")
@click.option("--opening-balance", metavar="AMOUNT", help="Initial money balance.")
@json_option
@pass_ctx
def account_add(ctx: Ctx, name, currency, billing, credit_limit, opening_balance):
    """Create an account."""
    body = {"name": name, "currency": currency.upper(), "billing": billing}
    if credit_limit is not None:
        body["credit_limit"] = credit_limit
    if opening_balance is not None:
        body["opening_balance"] = opening_balance
    acct = ctx.client.post("/v1/accounts", body)
    if ctx.json:
        return emit_json(acct)
    click.echo(f"Created account {acct['name']} (#{acct['id']}).")


def _balance_result(ctx: Ctx, name: str, verb: str, result: dict[str, Any]) -> None:
    if ctx.json:
        return emit_json(result)
    bal = result["balance"]
    if result.get("replayed"):
        click.echo(f"Already done (this ref was used before): nothing changed. "
                   f"Balance {bal['balance']} {bal['currency']}.")
        return
    if result.get("outcome") not in (None, "ok"):
        raise ApiFailure(422, result.get("message") or f"{verb} refused: {result['outcome']}")
    click.echo(f"{verb} {name} by {result['amount']} {bal['currency']}: balance "
               f"{bal['balance']} {bal['currency']} (available {bal['available']}).")


@account.command("topup")
@click.argument("ref")
@click.argument("amount_", metavar="AMOUNT")
@click.option("--ref", "payment_ref", metavar="ID",
              help="Payment reference: the same ref is applied only once.")
@click.option("--reason", help="Free text for the ledger.")
@json_option
@pass_ctx
def account_topup(ctx: Ctx, ref, amount_, payment_ref, reason):
    """Credit AMOUNT (e.g. 5.00) to the account's money balance."""
    account_id = resolve_account(ctx.client, ref)
    body = {"amount": amount_}
    if payment_ref:
        body["ref"] = payment_ref
    if reason:
        body["reason"] = reason
    _balance_result(ctx, ref, "Topped up",
                    ctx.client.post(f"/v1/accounts/{account_id}/topup", body))


@account.command("adjust", context_settings={"ignore_unknown_options": True})
@click.argument("ref")
@click.argument("amount_", metavar="AMOUNT")
@click.option("--reason", required=True, help="Why (recorded in the ledger and audit log).")
@click.option("--ref", "payment_ref", metavar="ID", help="Makes the correction idempotent.")
@click.option("--force", is_flag=True, help="Allow going below the account's floor.")
@json_option
@pass_ctx
def account_adjust(ctx: Ctx, ref, amount_, reason, payment_ref, force):
    """Correct the balance by a signed AMOUNT (e.g. -1.50)."""
    if amount_.startswith("--"):
        raise click.UsageError(f"no such option: {amount_}")
    account_id = resolve_account(ctx.client, ref)
    body: dict[str, Any] = {"amount": amount_, "reason": reason}
    if payment_ref:
        body["ref"] = payment_ref
    if force:
        body["force"] = True
    _balance_result(ctx, ref, "Adjusted",
                    ctx.client.post(f"/v1/accounts/{account_id}/adjust", body))


def _status_change(ctx: Ctx, ref: str, action: str, reason: str | None) -> None:
    account_id = resolve_account(ctx.client, ref)
    body = {"reason": reason} if reason else {}
    result = ctx.client.post(f"/v1/accounts/{account_id}/{action}", body)
    if ctx.json:
        return emit_json(result)
    status = (result or {}).get("status", "suspended" if action == "suspend" else "active")
    click.echo(f"Account {ref} is {status}.")


@account.command("suspend")
@click.argument("ref")
@click.option("--reason")
@json_option
@pass_ctx
def account_suspend(ctx: Ctx, ref, reason):
    """Suspend an account: no new grants for its subscribers."""
    _status_change(ctx, ref, "suspend", reason)


@account.command("resume")
@click.argument("ref")
@click.option("--reason")
@json_option
@pass_ctx
def account_resume(ctx: Ctx, ref, reason):
    """Resume a suspended account."""
    _status_change(ctx, ref, "resume", reason)


COMMANDS = [account]
