"""`ocsctl tariff|rate|rate-cdrs`: tariffs and rate decks, rating on demand, offline mediation.

    ocsctl tariff list | show NAME [--definition] | delete NAME
    ocsctl tariff put NAME retail.json          # the whole definition (PUT /v1/tariffs/NAME)
    ocsctl tariff import NAME deck.csv [--deck base] [--priority N] [--service S] [--unit U]
    ocsctl rate --tariff retail --to 442079460000 --duration 185 --at 2026-11-25T19:00
    ocsctl rate --tariff retail --service rg10 --units 1500000000
    ocsctl rate-cdrs Master.csv --format asterisk --tariff retail [--out rated.csv]

A definition file is the JSON that PUT /v1/tariffs/NAME takes (`tariff show NAME
--definition` prints it); a deck in it may name a CSV file (`"file": "base.csv"`,
relative to the JSON file) instead of carrying the rows as `"csv"`. Imports are
all or nothing: a refused file lists every bad line and exits 1.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.parse
from typing import Any

import click

from .context import Ctx, UsageProblem, json_option, pass_ctx
from .output import emit_json, fields, table, when


def _path(name: str) -> str:
    return "/v1/tariffs/" + urllib.parse.quote(name, safe="")


def _upload(ctx: Ctx, path: str, filename: str, query: dict[str, Any]) -> Any:
    from .client import file_size
    params = {k: v for k, v in query.items() if v is not None}
    if params:
        path += "?" + urllib.parse.urlencode(params)
    try:
        stream = open(filename, "rb")
    except OSError as exc:
        raise UsageProblem(f"cannot read {filename}: {exc.strerror}") from None
    with stream:
        return ctx.client.upload(path, stream, file_size(stream), "text/csv")


# ----------------------------------------------------------------------------- tariff

@click.group("tariff")
def tariff():
    """Tariffs: rate decks, time bands, data and event rates, exchange rates."""


@tariff.command("list")
@json_option
@pass_ctx
def tariff_list(ctx: Ctx):
    """List tariffs with their services and deck sizes."""
    page = ctx.client.get("/v1/tariffs")
    if ctx.json:
        return emit_json(page)
    click.echo(table([(t["name"], t["currency"], t["revision"], ", ".join(t["services"]),
                       ", ".join(f"{d['name']} ({d['rows']})" for d in t["decks"]),
                       when(t["updated_at"])) for t in page["items"]],
                     ["name", "currency", "revision", "services", "decks (rows)", "updated"]))


@tariff.command("show")
@click.argument("name")
@click.option("--definition", is_flag=True,
              help="Print only the definition, as JSON that 'tariff put' takes back.")
@json_option
@pass_ctx
def tariff_show(ctx: Ctx, name: str, definition: bool):
    """Show a tariff: settings, bands, holidays, decks, data and event rates."""
    t = ctx.client.get(_path(name))
    if definition:
        return emit_json({**t["definition"], "revision": t["revision"]})
    if ctx.json:
        return emit_json(t)
    d = t["definition"]
    n = d["numbering"]
    numbering = f"+ or {n['international_prefix'] or '-'} international"
    if n["national_prefix"]:
        numbering += f", {n['national_prefix']} national -> {n['country_code']}"
    click.echo(f"Tariff {t['name']} (revision {t['revision']}, {d['currency']}, "
               f"{d['timezone']})")
    click.echo(fields([
        ("description", d["description"]),
        ("rounding", f"{d['rounding']['decimals']} decimals, {d['rounding']['mode']}"),
        ("numbering", numbering), ("default band", d["default_band"]),
        ("holiday band", d["holiday_band"]),
        ("services", ", ".join(f"{s} ({k})" for s, k in t["services"].items()))]))
    if d["bands"]:
        click.echo("Bands")
        click.echo(table([(b["band"], b["days"], b["from"], b["to"]) for b in d["bands"]],
                         ["band", "days", "from", "to"]))
    if d["holidays"]:
        click.echo("Holidays")
        click.echo(table([(h["day"], h["band"] or d["holiday_band"], h["name"])
                          for h in d["holidays"]], ["day", "band", "name"]))
    if t["decks"]:
        click.echo("Decks")
        click.echo(table([(k["name"], k["service"], k["unit"], k["priority"], k["rows"],
                           ", ".join(k["bands"]), when(k["effective_from"]),
                           when(k["effective_to"])) for k in t["decks"]],
                         ["name", "service", "unit", "priority", "rows", "band prices",
                          "from", "to"]))
    if d["usage_rates"]:
        click.echo("Data and event rates")
        click.echo(table([(u["service"], u["kind"], u["unit"],
                           f"{u['increment']}/{u['next_increment']}",
                           "; ".join((f"up to {x['upto']}: " if x["upto"] is not None
                                      else "then " if i else "") + x["price"]
                                     for i, x in enumerate(u["tiers"])))
                          for u in d["usage_rates"]],
                         ["service", "kind", "per", "increments", "price"]))
    if d["exchange_rates"]:
        click.echo("Exchange rates")
        click.echo(table([(r["from"], r["to"], r["rate"], when(r["effective_from"]))
                          for r in d["exchange_rates"]], ["from", "to", "rate", "since"]))


def _read_definition(filename: str, name: str) -> dict[str, Any]:
    try:
        with open(filename, encoding="utf-8-sig") as fh:
            body = json.load(fh)
    except OSError as exc:
        raise UsageProblem(f"cannot read {filename}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageProblem(f"{filename} is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise UsageProblem(f"{filename}: a tariff definition is a JSON object")
    if body.get("name", name) != name:
        raise UsageProblem(f"{filename} defines tariff {body['name']!r}, not {name!r}")
    base = os.path.dirname(os.path.abspath(filename))
    for i, deck in enumerate(body.get("decks") or []):
        if isinstance(deck, dict) and "file" in deck:
            path = os.path.join(base, str(deck.pop("file")))
            try:
                with open(path, encoding="utf-8-sig") as fh:
                    deck["csv"] = fh.read()
            except OSError as exc:
                raise UsageProblem(f"{filename}: deck {i + 1}: cannot read {path}: "
                                   f"{exc.strerror}") from None
            except UnicodeDecodeError as exc:
                raise UsageProblem(f"{path} is not UTF-8 text: byte {exc.start}") from None
    return body


@tariff.command("put")
@click.argument("name")
@click.argument("filename", metavar="FILE.json")
@json_option
@pass_ctx
def tariff_put(ctx: Ctx, name: str, filename: str):
    """Create or replace tariff NAME from a JSON definition (validated before storing)."""
    body = _read_definition(filename, name)
    t = ctx.client.request("PUT", _path(name), body=body)
    if ctx.json:
        return emit_json(t)
    rows = sum(d["rows"] for d in t["decks"])
    click.echo(f"Saved tariff {t['name']} (revision {t['revision']}): "
               f"{len(t['decks'])} deck{'s' if len(t['decks']) != 1 else ''}, {rows} rows; "
               f"services {', '.join(t['services']) or 'none'}.")


@tariff.command("delete")
@click.argument("name")
@pass_ctx
def tariff_delete(ctx: Ctx, name: str):
    """Delete a tariff (refused while a plan names it)."""
    ctx.client.delete(_path(name))
    click.echo(f"Deleted tariff {name}.")


@tariff.command("import")
@click.argument("name")
@click.argument("filename", metavar="DECK.csv")
@click.option("--deck", default="base", show_default=True, help="Deck to replace or add.")
@click.option("--priority", type=click.IntRange(-1_000_000, 1_000_000),
              help="Higher wins where decks overlap (default: the deck's, else 0).")
@click.option("--service", help="Service the deck rates (default: the deck's, else voice).")
@click.option("--unit", type=click.Choice(["minute", "event"]),
              help="Prices per minute or per event (default: the deck's, else minute).")
@json_option
@pass_ctx
def tariff_import(ctx: Ctx, name, filename, deck, priority, service, unit):
    """Replace one deck of tariff NAME with the rows of a CSV file, all or nothing.

    Columns: prefix, destination, price, connection_fee, min_duration, increment,
    next_increment, effective_from, effective_to, price_<band>.
    """
    answer = _upload(ctx, f"{_path(name)}/decks/{urllib.parse.quote(deck, safe='')}",
                     filename, {"priority": priority, "service": service, "unit": unit})
    if ctx.json:
        return emit_json(answer)
    d = answer["deck"]
    click.echo(f"Imported {d['rows']} rows into deck {d['name']} of tariff {answer['tariff']} "
               f"({d['service']}, per {d['unit']}, priority {d['priority']}); "
               f"revision {answer['revision']}.")


# ----------------------------------------------------------------------------- rate

def _seconds_text(n: int, kind: str) -> str:
    return {"seconds": f"{n} s", "events": f"{n} event{'s' if n != 1 else ''}"}.get(
        kind, f"{n} octets")


@click.command("rate")
@click.option("--tariff", "tariff_name", required=True, help="Tariff to rate with.")
@click.option("--to", help="Number called (voice, SMS).")
@click.option("--duration", type=click.IntRange(min=0), help="Seconds (voice).")
@click.option("--units", type=click.IntRange(min=0), help="Octets or events (data, events).")
@click.option("--service", default="voice", show_default=True,
              help="Service id: voice, an SMS deck, a rating group...")
@click.option("--at", help="Start, ISO 8601; without an offset in the tariff's time zone "
                           "[default: now].")
@click.option("--already", type=click.IntRange(min=0), default=0,
              help="Units of the same call/session/period rated before.")
@click.option("--currency", help="Answer in this currency (converted with the tariff's "
                                 "exchange rates).")
@json_option
@pass_ctx
def rate(ctx: Ctx, tariff_name, to, duration, units, service, at, already, currency):
    """Rate one call, SMS, data volume or event and show how the charge was computed."""
    if (duration is None) == (units is None):
        raise UsageProblem("give --duration (voice) or --units (data, events), not both")
    body: dict[str, Any] = {"tariff": tariff_name, "service": service, "already": already}
    body["duration" if duration is not None else "units"] = \
        duration if duration is not None else units
    for key, value in (("to", to), ("at", at), ("currency", currency.upper() if currency
                                                 else None)):
        if value is not None:
            body[key] = value
    c = ctx.client.post("/v1/rate", body)
    if ctx.json:
        return emit_json(c)
    what = _seconds_text(c["units"], c["kind"])
    click.echo(f"{c['cost']} {c['currency']} for {what} of {c['service']}"
               + (f" to {c['to']}" if c["to"] else ""))
    pairs: list[tuple[str, Any]] = [
        ("tariff", f"{c['tariff']} (revision {c['revision']}, {c['engine']} engine)"),
        ("at", f"{c['local_time']} {c['time_zone']} ({when(c['at'])})")]
    dest = c["destination"]
    if dest:
        pairs += [("number", c["number"]),
                  ("destination", f"{dest['destination'] or '-'}, prefix {dest['prefix']} "
                                  f"(deck {dest['deck']}, line {dest['line']})"),
                  ("increments", f"{dest['increment']}/{dest['next_increment']}, minimum "
                                 f"{dest['min_duration']}, connection fee "
                                 f"{dest['connection_fee']} {c['tariff_currency']}")]
    if c["already"]:
        pairs.append(("already", _seconds_text(c["already"], c["kind"])))
    pairs.append(("billed", _seconds_text(c["billed_units"], c["kind"])))
    if c["fx"]:
        fx = c["fx"]
        pairs.append(("tariff cost", f"{c['tariff_cost']} {c['tariff_currency']}"))
        pairs.append(("exchange", f"1 {fx['from']} = {fx['rate']} {fx['to']}"
                                  + (f" since {when(fx['effective_from'])}"
                                     if fx["effective_from"] else "")))
    pairs.append(("cost", f"{c['cost']} {c['currency']}"))
    click.echo(fields(pairs))
    if c["bands"]:
        per = "minute" if c["kind"] == "seconds" else "event"
        click.echo("Bands")
        click.echo(table([(b["band"], b["units"], b["price"]) for b in c["bands"]],
                         ["band", "seconds" if per == "minute" else "events",
                          f"price/{per} {c['tariff_currency']}"]))
    if c["tiers"]:
        click.echo("Tiers")
        click.echo(table([(t["tier"], t["units"], f"{t['price']} per {t['unit']}")
                          for t in c["tiers"]],
                         ["tier", "units", f"price {c['tariff_currency']}"]))


# ----------------------------------------------------------------------------- rate-cdrs

@click.command("rate-cdrs")
@click.argument("filename", metavar="FILE")
@click.option("--tariff", "tariff_name", required=True, help="Tariff to rate with (any "
                                                                "stored tariff: what-if).")
@click.option("--format", "fmt", type=click.Choice(["freeswitch", "asterisk", "generic"]),
              default="generic", show_default=True,
              help="freeswitch: mod_cdr_csv default template; asterisk: cdr_csv Master.csv; "
                   "generic: header row with to, start, duration.")
@click.option("--service", default="voice", show_default=True)
@click.option("--currency", help="Rate into this currency.")
@click.option("--tz", help="Time zone of CDR time stamps [default: the tariff's].")
@click.option("--out", "out", metavar="FILE",
              help="Write the rated CDRs as CSV ('-' for standard output): one row per CDR "
                   "line, status ok or the reject reason.")
@json_option
@pass_ctx
def rate_cdrs(ctx: Ctx, filename, tariff_name, fmt, service, currency, tz, out):
    """Rate a file of CDRs in one batch (nothing is charged or stored); report rejects."""
    from ..mediation import write_csv
    answer = _upload(ctx, "/v1/rate-cdrs", filename,
                     {"tariff": tariff_name, "format": fmt, "service": service,
                      "currency": currency.upper() if currency else None, "tz": tz})
    cur = answer["currency"]
    if out:
        if out == "-":
            write_csv(sys.stdout, answer["rated"], answer["rejects"], cur)
        else:
            with open(out, "w", encoding="utf-8", newline="") as fh:
                write_csv(fh, answer["rated"], answer["rejects"], cur)
    if ctx.json:
        if out != "-":
            emit_json(answer)
        return
    s = answer["summary"]
    reasons = ", ".join(f"{r} {n}" for r, n in s["reasons"].items())
    lines = [f"Rated {s['rated']} of {s['lines']} CDRs with tariff {answer['tariff']} "
             f"(revision {answer['revision']}), {answer['service']}, {fmt} format, times in "
             f"{answer['time_zone']}",
             fields([("rated", s["rated"]),
                     ("rejected", f"{s['rejected']}" + (f" ({reasons})" if reasons else "")),
                     ("total cost", f"{s['total_cost']} {cur}")])]
    if answer["rejects"]:
        lines.append("Rejects")
        lines.append(table([(r["line"], r["reason"], r["callee"], r["message"])
                            for r in answer["rejects"]],
                           ["line", "reason", "number", "message"]))
    if out and out != "-":
        lines.append(f"Wrote {s['lines']} rows to {out}.")
    # With --out - the CSV owns standard output; the summary goes to standard error.
    click.echo("\n".join(lines), err=out == "-")


COMMANDS = [tariff, rate, rate_cdrs]
