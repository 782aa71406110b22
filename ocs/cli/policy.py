"""`ocsctl session kill`, `ocsctl subscriber throttle|restore`, `ocsctl policy queue|retry`:
enforcement by hand, and the action queue; `ocsctl diameter peers`: the Diameter
peers a node (or every node) is connected to (RAR and ASR reach a client only
through them); `ocsctl nodes`: the ocsd nodes running.

The commands queue actions on the daemon (the API answers 202 with what was
queued); the worker carries them out, retrying as configured. `policy queue`
shows what is waiting, running and dead-lettered; `policy retry` queues a
dead-lettered action again.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import click

from .context import Ctx, json_option, pass_ctx
from .output import emit_json, table, when
from .resources import parse_speed, session
from .subscribers import lookup_subscriber, subscriber


def resolve_subscriber(ctx: Ctx, ref: str) -> int:
    """The id of the subscriber `ref` names (see subscribers.lookup_subscriber)."""
    return int(lookup_subscriber(ctx, ref)["id"])


def _queued(ctx: Ctx, page: dict[str, Any], what: str) -> None:
    if ctx.json:
        return emit_json(page)
    for a in page["items"]:
        click.echo(f"queued {a['action']} of session {a['session']} via {a['backend']} "
                   f"(action {a['id'] or a['key']})")
    if not page["items"]:
        click.echo(f"nothing to {what}")


@session.command("kill")
@click.argument("session_id", metavar="ID")
@json_option
@pass_ctx
def session_kill(ctx: Ctx, session_id: str):
    """Disconnect a session through its NAS (Disconnect-Request, ASR or hang-up)."""
    page = ctx.client.post("/v1/sessions/" + urllib.parse.quote(session_id, safe="")
                           + "/kill")
    _queued(ctx, page, "disconnect")


@subscriber.command("throttle")
@click.argument("ref", metavar="NAME")
@click.option("--speed", metavar="DOWN/UP",
              help="kbit/s, e.g. 1024/512; default: the plan's throttle profile.")
@json_option
@pass_ctx
def subscriber_throttle(ctx: Ctx, ref: str, speed: str | None):
    """Throttle every active session of a subscriber (by CoA, or tc on this host)."""
    body: dict[str, Any] = {}
    if speed:
        body = parse_speed(speed)
    sub_id = resolve_subscriber(ctx, ref)
    _queued(ctx, ctx.client.post(f"/v1/subscribers/{sub_id}/throttle", body), "throttle")


@subscriber.command("restore")
@click.argument("ref", metavar="NAME")
@json_option
@pass_ctx
def subscriber_restore(ctx: Ctx, ref: str):
    """Give every active session of a subscriber its plan's speed again."""
    sub_id = resolve_subscriber(ctx, ref)
    _queued(ctx, ctx.client.post(f"/v1/subscribers/{sub_id}/restore"), "restore")


@click.group("policy")
def policy():
    """Enforcement: the queue of actions on the network."""


@policy.command("queue")
@click.option("--status", type=click.Choice(["queue", "pending", "running", "dead", "done",
                                             "superseded", "replaced", "all"]),
              default="queue", show_default=True,
              help="queue = pending, running and dead-lettered.")
@click.option("--dead", "dead_only", is_flag=True, help="Only dead-lettered actions.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
@pass_ctx
def policy_queue(ctx: Ctx, status: str, dead_only: bool, limit: int):
    """List enforcement actions, newest first; retry dead ones with 'ocsctl policy retry'."""
    page = ctx.client.get("/v1/policy/actions", status="dead" if dead_only else status,
                          limit=limit)
    if ctx.json:
        return emit_json(page)
    click.echo(table([(a["id"], a["status"], a["action"], a["backend"], a["session"], a["nas"],
                       a["attempts"], when(a["next_at"]) if a["status"] == "pending"
                       else when(a["updated_at"]), a["result"], (a["last_error"] or "")[:60])
                      for a in page["items"]],
                     ["id", "status", "action", "backend", "session", "nas", "attempts",
                      "next/last", "result", "last error"]))


@policy.command("retry")
@click.argument("action_ids", metavar="ID...", nargs=-1)
@click.option("--all-dead", is_flag=True, help="Every dead-lettered action.")
@json_option
@pass_ctx
def policy_retry(ctx: Ctx, action_ids: tuple[str, ...], all_dead: bool):
    """Queue dead-lettered actions again, with a fresh attempt count."""
    if all_dead:
        if action_ids:
            raise click.UsageError("give IDs or --all-dead, not both")
        page = ctx.client.get("/v1/policy/actions", status="dead", limit=1000)
        action_ids = tuple(a["id"] for a in page["items"])
    elif not action_ids:
        raise click.UsageError("which action? give its ID (see 'ocsctl policy queue --dead') "
                               "or --all-dead")
    revived = [ctx.client.post(f"/v1/policy/actions/{urllib.parse.quote(i, safe='')}/retry")
               for i in action_ids]
    if ctx.json:
        return emit_json(revived)
    for a in revived:
        click.echo(f"queued again: {a['action']} of session {a['session']} via {a['backend']}")
    if not revived:
        click.echo("no dead-lettered action")


@click.group("diameter")
def diameter():
    """Diameter: the peers connected to this node, or to every node."""


@diameter.command("peers")
@click.option("--all-nodes", "all_nodes", is_flag=True,
              help="the peers of every running node, each connection with its node")
@json_option
@pass_ctx
def diameter_peers(ctx: Ctx, all_nodes: bool):
    """List the Diameter connections of the node the API runs on (or of every node),
    oldest first."""
    page = ctx.client.get("/v1/diameter/peers" + ("?nodes=all" if all_nodes else ""))
    if ctx.json:
        return emit_json(page)
    if not page["items"]:
        click.echo("no Diameter peer is connected to " + ("any running node" if all_nodes
                                                          else "this node"))
    else:
        rows = [([p["node"]] if all_nodes else []) +
                [p["origin_host"] or "-", p["origin_realm"] or "-", p["address"],
                 p["transport"], p["state"], p["watchdog"] or "-", when(p["connected_at"]),
                 p["product_name"] or "-",
                 "-" if p["origin_state_id"] is None else p["origin_state_id"]]
                for p in page["items"]]
        click.echo(table(rows, (["node"] if all_nodes else []) +
                         ["origin host", "realm", "address", "transport", "state", "watchdog",
                          "connected", "product", "origin state"]))
    for problem in page.get("unreachable", []):
        click.echo(f"node {problem['node']}: {problem['error']}", err=True)


@click.command("nodes")
@json_option
@pass_ctx
def nodes(ctx: Ctx):
    """List the ocsd nodes running on the shared state (Redis); * marks the one asked."""
    page = ctx.client.get("/v1/cluster/nodes")
    if ctx.json:
        return emit_json(page)
    click.echo(table([(("* " if n["this"] else "  ") + n["node"], n["host"], n["pid"],
                        n["version"], when(n["started_at"])) for n in page["items"]],
                     ["node", "host", "pid", "version", "started"]))


COMMANDS = [policy, diameter, nodes]
