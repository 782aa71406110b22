"""`ocsctl plan|nas|session|ledger|audit`: the other resources of the API."""

from __future__ import annotations

import decimal
import json
import re
import urllib.parse
from typing import Any

import click

from .accounts import resolve_account
from .client import ApiFailure
from .context import Ctx, json_option, pass_ctx
from .output import amount, emit_json, fields, size, table, when

# ----------------------------------------------------------------------------- unit parsing

_SIZE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([kmgt]i?b?|b)?$", re.IGNORECASE)
_TIME = re.compile(r"^([0-9]+)\s*(s|sec|m|min|h)?$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
                 "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_octets(text: str) -> int:
    """"10GiB" -> 10737418240, "500MB" -> 500000000, "1024" -> 1024."""
    m = _SIZE.match(text.strip())
    if not m:
        raise click.BadParameter(f"{text!r} is not a size like 10GiB, 500MB or 1048576")
    unit = (m.group(2) or "").lower().removesuffix("b")
    value = float(m.group(1)) * _SIZE_FACTORS[unit]
    if value != int(value):
        raise click.BadParameter(f"{text!r} is not a whole number of octets")
    return int(value)


def parse_seconds(text: str) -> int:
    """"100min" -> 6000, "2h" -> 7200, "90" -> 90."""
    m = _TIME.match(text.strip())
    if not m:
        raise click.BadParameter(f"{text!r} is not a duration like 90, 100min or 2h")
    factor = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[(m.group(2) or "").lower()]
    return int(m.group(1)) * factor


def parse_allowance(text: str) -> dict[str, Any]:
    """KIND:UNITS[:DAYS[:SERVICE]], e.g. octets:10GiB:30 or seconds:100min."""
    parts = text.split(":")
    if len(parts) < 2 or len(parts) > 4:
        raise click.BadParameter(f"{text!r}: use KIND:UNITS[:DAYS[:SERVICE]], "
                                 "e.g. octets:10GiB:30")
    kind, units = parts[0].lower(), parts[1]
    if kind == "octets":
        value: Any = parse_octets(units)
    elif kind == "seconds":
        value = parse_seconds(units)
    elif kind == "events":
        if not units.isdigit():
            raise click.BadParameter(f"{units!r}: events are a whole number")
        value = int(units)
    elif kind == "money":
        value = units
    else:
        raise click.BadParameter(f"{kind!r}: kind is octets, seconds, events or money")
    allowance: dict[str, Any] = {"kind": kind, "units": value}
    if len(parts) > 2 and parts[2]:
        if not parts[2].isdigit():
            raise click.BadParameter(f"{parts[2]!r}: validity is a number of days")
        allowance["validity_days"] = int(parts[2])
    if len(parts) > 3 and parts[3]:
        allowance["service"] = parts[3]
    return allowance


def parse_speed(text: str) -> dict[str, int]:
    m = re.fullmatch(r"([0-9]+)/([0-9]+)", text.strip())
    if not m:
        raise click.BadParameter(f"{text!r}: use DOWN/UP in kbit/s, e.g. 20000/5000")
    return {"down_kbps": int(m.group(1)), "up_kbps": int(m.group(2))}


def _allowances_text(plan: dict[str, Any]) -> str:
    parts = []
    for a in plan["allowances"]:
        text = amount(a["kind"], a["units"], plan["currency"])
        if a.get("validity_days"):
            text += f"/{a['validity_days']}d"
        if a.get("service"):
            text += f" ({a['service']})"
        parts.append(text)
    return ", ".join(parts)


# ----------------------------------------------------------------------------- plans

@click.group("plan")
def plan():
    """Plans: allowances, speed profile, fair usage, recurring fee."""


@plan.command("list")
@json_option
@pass_ctx
def plan_list(ctx: Ctx):
    """List plans."""
    page = ctx.client.get("/v1/plans")
    if ctx.json:
        return emit_json(page)
    rows = []
    for p in page["items"]:
        speed = p.get("speed_profile")
        fup = p.get("fair_usage")
        rows.append((p["id"], p["name"], p["currency"], f"{p['recurring_fee']}/{p['period']}",
                     _allowances_text(p),
                     f"{speed['down_kbps']}/{speed['up_kbps']}" if speed else None,
                     f"{size(fup['threshold_octets'])} -> {fup['throttle_profile']['down_kbps']}"
                     f"/{fup['throttle_profile']['up_kbps']}" if fup else None))
    click.echo(table(rows, ["id", "name", "currency", "fee", "allowances", "speed kbps",
                            "fair usage"]))


@plan.command("add")
@click.argument("name")
@click.option("--currency", required=True, help="ISO 4217 code, e.g. EUR.")
@click.option("--recurring-fee", metavar="AMOUNT", help="Fee per period, e.g. 19.90.")
@click.option("--period", type=click.Choice(["day", "week", "month"]))
@click.option("--allowance", "allowances", multiple=True, metavar="KIND:UNITS[:DAYS[:SERVICE]]",
              help="Repeatable, e.g. octets:10GiB:30 or seconds:100min:30.")
@click.option("--tariff", help="Rate deck for usage beyond the allowances.")
@click.option("--speed", metavar="DOWN/UP", help="Speed profile in kbit/s, e.g. 20000/5000.")
@click.option("--fair-usage", metavar="SIZE:DOWN/UP",
              help="Throttle after SIZE in a period, e.g. 8GiB:1024/512.")
@click.option("--description", default=None)
@json_option
@pass_ctx
def plan_add(ctx: Ctx, name, currency, recurring_fee, period, allowances, tariff, speed,
             fair_usage, description):
    """Create a plan."""
    body: dict[str, Any] = {"name": name, "currency": currency.upper(),
                            "allowances": [parse_allowance(a) for a in allowances]}
    if recurring_fee is not None:
        body["recurring_fee"] = recurring_fee
    if period:
        body["period"] = period
    if tariff:
        body["tariff"] = tariff
    if speed:
        body["speed_profile"] = parse_speed(speed)
    if fair_usage:
        threshold, sep, throttle = fair_usage.partition(":")
        if not sep:
            raise click.BadParameter("use SIZE:DOWN/UP, e.g. 8GiB:1024/512",
                                     param_hint="--fair-usage")
        body["fair_usage"] = {"threshold_octets": parse_octets(threshold),
                              "throttle_profile": parse_speed(throttle)}
    if description is not None:
        body["description"] = description
    created = ctx.client.post("/v1/plans", body)
    if ctx.json:
        return emit_json(created)
    click.echo(f"Created plan {created['name']} (#{created['id']}).")


# ----------------------------------------------------------------------------- NAS

@click.group("nas")
def nas():
    """Network elements: RADIUS clients, Diameter peers, softswitches."""


@nas.command("list")
@json_option
@pass_ctx
def nas_list(ctx: Ctx):
    """List NAS and peers (secrets are never shown)."""
    page = ctx.client.get("/v1/nas")
    if ctx.json:
        return emit_json(page)
    click.echo(table([(n["id"], n["name"], n["kind"], n["address"], n["vendor"], n["coa_port"],
                       n["require_message_authenticator"], n["has_secret"])
                      for n in page["items"]],
                     ["id", "name", "kind", "address", "vendor", "coa port",
                      "msg-auth", "secret"]))


# Control keys whose value is always text: `policy_node=10` names node "10",
# `coa_address=10.1` is an address, not numbers.
_TEXT_CONTROL = frozenset({"coa_address", "origin_host", "policy_node"})


def _control(pairs: tuple[str, ...]) -> dict[str, Any]:
    """`--control KEY=VALUE` options as changes: a VALUE that reads as JSON (true,
    5, {"host": ...}) is taken as such, any other as text; the keys that name
    something (_TEXT_CONTROL) take text always; an empty VALUE removes the key
    (None)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r}: use KEY=VALUE (KEY= removes KEY)",
                                     param_hint="--control")
        if value == "":
            out[key] = None
            continue
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
        if key in _TEXT_CONTROL and not isinstance(out[key], str):
            out[key] = value
    return out


_CONTROL_HELP = ("KEY=VALUE of the element's control (repeatable), e.g. proxy=true, "
                 "policy_node=edge-1, coa_address=10.0.0.1; KEY= removes KEY.")


@nas.command("add")
@click.argument("name")
@click.argument("address")
@click.option("--secret", prompt=True, hide_input=True,
              help="RADIUS shared secret (prompted for when not given).")
@click.option("--kind", type=click.Choice(["nas", "diameter", "softswitch"]))
@click.option("--vendor", help="e.g. mikrotik, cisco, juniper, huawei, accel-ppp; "
                               "default generic.")
@click.option("--coa-port", type=click.IntRange(1, 65535))
@click.option("--require-message-authenticator", "msg_auth",
              type=click.Choice(["yes", "no", "auto"]))
@click.option("--control", "control", multiple=True, metavar="KEY=VALUE", help=_CONTROL_HELP)
@json_option
@pass_ctx
def nas_add(ctx: Ctx, name, address, secret, kind, vendor, coa_port, msg_auth, control):
    """Add a NAS at ADDRESS (an IP address or CIDR prefix)."""
    body: dict[str, Any] = {"name": name, "address": address, "secret": secret}
    for key, value in (("kind", kind), ("vendor", vendor), ("coa_port", coa_port),
                       ("require_message_authenticator", msg_auth)):
        if value is not None:
            body[key] = value
    if control:
        body["control"] = {k: v for k, v in _control(control).items() if v is not None}
    created = ctx.client.post("/v1/nas", body)
    if ctx.json:
        return emit_json(created)
    click.echo(f"Added NAS {created['name']} at {created['address']} (#{created['id']}).")


def _nas(ctx: Ctx, ref: str) -> dict[str, Any]:
    """The NAS named `ref` (or with that id)."""
    for n in ctx.client.get("/v1/nas")["items"]:
        if n["name"] == ref or str(n["id"]) == ref:
            return n
    raise ApiFailure(404, f"no NAS named {ref!r} (see 'ocsctl nas list')", code="not_found")


@nas.command("set")
@click.argument("ref", metavar="NAME")
@click.option("--secret", help="A new RADIUS shared secret (what the NAS has configured).")
@click.option("--address", help="A new IP address or CIDR prefix.")
@click.option("--vendor")
@click.option("--coa-port", type=click.IntRange(1, 65535))
@click.option("--require-message-authenticator", "msg_auth",
              type=click.Choice(["yes", "no", "auto"]))
@click.option("--rename", metavar="NEW_NAME")
@click.option("--control", "control", multiple=True, metavar="KEY=VALUE", help=_CONTROL_HELP)
@json_option
@pass_ctx
def nas_set(ctx: Ctx, ref, secret, address, vendor, coa_port, msg_auth, rename, control):
    """Change a NAS: its secret (after a "shared secret differs" warning), address,
    vendor, CoA port, Message-Authenticator rule or control keys (the others kept).
    Takes effect at once."""
    body = {k: v for k, v in (("secret", secret), ("address", address), ("vendor", vendor),
                              ("coa_port", coa_port),
                              ("require_message_authenticator", msg_auth), ("name", rename))
            if v is not None}
    if not body and not control:
        raise click.UsageError("nothing to change: give --secret, --address, --vendor, "
                               "--coa-port, --require-message-authenticator, --rename or "
                               "--control")
    current = _nas(ctx, ref)
    if control:
        merged = {**(current.get("control") or {}), **_control(control)}
        body["control"] = {k: v for k, v in merged.items() if v is not None}
    changed = ctx.client.patch(f"/v1/nas/{current['id']}", body)
    if ctx.json:
        return emit_json(changed)
    click.echo(f"Changed NAS {changed['name']} at {changed['address']}: "
               + ", ".join(sorted(body)) + ".")


@nas.command("delete")
@click.argument("ref", metavar="NAME")
@pass_ctx
def nas_delete(ctx: Ctx, ref):
    """Remove a NAS: its packets are dropped from then on (its sessions stay as they are)."""
    ctx.client.delete(f"/v1/nas/{_nas(ctx, ref)['id']}")
    click.echo(f"Deleted NAS {ref}.")


# ----------------------------------------------------------------------------- sessions

@click.group("session")
def session():
    """Network sessions and what they hold."""


@session.command("list")
@click.option("--status", type=click.Choice(["active", "closed"]), default="active",
              show_default=True)
@click.option("--account", "account_ref", metavar="ACCOUNT", help="Account id or name.")
@click.option("--subscriber", "subscriber_id", type=int, metavar="ID")
@click.option("--nas", "nas_name", metavar="NAS")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
@pass_ctx
def session_list(ctx: Ctx, status, account_ref, subscriber_id, nas_name, limit):
    """List sessions, newest first."""
    account_id = resolve_account(ctx.client, account_ref) if account_ref else None
    page = ctx.client.get("/v1/sessions", status=status,
                          account_id=account_id, subscriber_id=subscriber_id, nas=nas_name,
                          limit=limit)
    if ctx.json:
        return emit_json(page)
    click.echo(table([(s["id"], s["proto"], s["account_id"], s["subscriber_id"], s["nas"],
                       s["framed_ip"], s["status"], when(s["started_at"]),
                       when(s["updated_at"])) for s in page["items"]],
                     ["id", "proto", "account", "subscriber", "nas", "framed ip", "status",
                      "started", "updated"]))


@session.command("show")
@click.argument("session_id", metavar="ID")
@json_option
@pass_ctx
def session_show(ctx: Ctx, session_id: str):
    """Show a session, its reservations and what it was charged so far."""
    s = ctx.client.get("/v1/sessions/" + urllib.parse.quote(session_id, safe=""))
    if ctx.json:
        return emit_json(s)
    click.echo(f"Session {s['id']}")
    click.echo(fields([("status", s["status"]), ("proto", s["proto"]),
                       ("account", s["account_id"]), ("subscriber", s["subscriber_id"]),
                       ("nas", s["nas"]), ("nas session", s["nas_session_id"]),
                       ("framed ip", s["framed_ip"]), ("started", when(s["started_at"])),
                       ("updated", when(s["updated_at"])), ("ended", when(s["ended_at"]))]))
    if s.get("reservations"):
        click.echo("Reservations")
        click.echo(table([(r["service"] or "-", r["kind"], amount(r["kind"], r["units"]),
                           when(r["expires_at"])) for r in s["reservations"]],
                         ["service", "kind", "units", "expires"]))
    if s.get("charges"):
        click.echo("Charged so far")
        click.echo(table([(c["service"] or "-", c["kind"], amount(c["kind"], c["units"]),
                           c["cost"], amount(c["kind"], c["unpaid"])
                           if decimal.Decimal(str(c["unpaid"])) else "-")
                          for c in s["charges"]], ["service", "kind", "used", "cost", "unpaid"]))


@session.command("unmatched")
@click.option("--status", type=click.Choice(["active", "closed"]))
@click.option("--nas", "nas_name", metavar="NAS")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--forget", "forget", metavar="SESSION",
              help="Remove this session's entry (reconciled) instead of listing.")
@json_option
@pass_ctx
def session_unmatched(ctx: Ctx, status, nas_name, limit, forget):
    """Accounting a NAS reported for unknown subscribers, latest first."""
    if forget:
        ctx.client.delete("/v1/accounting/unmatched/" + urllib.parse.quote(forget, safe=""))
        if not ctx.json:
            click.echo(f"Forgot the unmatched accounting of {forget}.")
        return
    page = ctx.client.get("/v1/accounting/unmatched", status=status, nas=nas_name, limit=limit)
    if ctx.json:
        return emit_json(page)
    click.echo(table([(u["session"], u["nas"], u["identity"], u["status"],
                       " ".join(f"{k}={v}" for k, v in sorted(u["units"].items())),
                       u["reports"], when(u["last_at"])) for u in page["items"]],
                     ["session", "nas", "identity", "status", "units", "reports", "last"]))


# ----------------------------------------------------------------------------- ledger, audit

@click.command("ledger")
@click.option("--account", "account_ref", metavar="ACCOUNT", help="Account id or name.")
@click.option("--session", "session_id", metavar="ID")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--before-id", type=click.IntRange(min=1), help="Older entries than this id.")
@json_option
@pass_ctx
def ledger(ctx: Ctx, account_ref, session_id, limit, before_id):
    """Ledger entries (every debit and credit), newest first."""
    account_id = resolve_account(ctx.client, account_ref) if account_ref else None
    page = ctx.client.get("/v1/ledger", account_id=account_id, session=session_id,
                          limit=limit, before_id=before_id)
    if ctx.json:
        return emit_json(page)
    click.echo(table([(e["id"], when(e["created_at"]), e["account_id"], e["entry_type"],
                       amount(e["kind"], e["amount"]), amount(e["kind"], e["balance_after"]),
                       e["session"], e["reason"], e["actor"]) for e in page["items"]],
                     ["id", "time", "account", "type", "amount", "balance after", "session",
                      "reason", "actor"]))


@click.command("audit")
@click.option("--actor", help="Only this token name.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--before-id", type=click.IntRange(min=1))
@json_option
@pass_ctx
def audit(ctx: Ctx, actor, limit, before_id):
    """The audit log of API changes: who did what, when, with what result."""
    page = ctx.client.get("/v1/audit", actor=actor, limit=limit, before_id=before_id)
    if ctx.json:
        return emit_json(page)
    click.echo(table([(e["id"], when(e["at"]), e["actor"], e["role"], e["action"],
                       e["target"], e["status"]) for e in page["items"]],
                     ["id", "at", "actor", "role", "action", "target", "status"]))


COMMANDS = [plan, nas, session, ledger, audit]
