"""`ocsctl`: the operator's command line.

A thin client of the REST API for everything an operator does day to day;
`db migrate`, `demo` and `token add --direct` work on the store directly (from
the configuration's ``[store]``) because they must work before ocsd runs.

Every command prints a table or a key/value block by default and JSON with
``--json`` (global, or after the command). Exit status: 0 success, 1 the API
(or the store) refused or failed, 2 usage or configuration error, 3 the API
could not be reached.

Usage::

    ocsctl [--config FILE] [--api URL] [--token TOKEN] [--token-file FILE] [--json]
           COMMAND ...

    ocsctl subscriber find demo              # by username (or --msisdn, --imsi,
                                             #  --sip-user, --framed-ip, --session)
    ocsctl subscriber show 1 | list [--account A] | add --account A --username U ...
    ocsctl subscriber import subscribers.csv # all or nothing, line-numbered errors
    ocsctl account show demo | list | add NAME --currency EUR [--billing postpaid ...]
    ocsctl account topup demo 5.00 [--ref PAYMENT-ID] [--reason TEXT]
    ocsctl account adjust demo -1.50 --reason "goodwill" [--force]
    ocsctl account suspend demo [--reason TEXT] | resume demo
    ocsctl plan list | add NAME --currency EUR --allowance octets:10GiB:30 ...
    ocsctl nas list | add NAME ADDRESS --secret S [--vendor mikrotik]
    ocsctl session list [--status closed] [--account A] | show ID
    ocsctl ledger [--account A] [--session S] [--limit N]
    ocsctl audit [--actor NAME] [--limit N]
    ocsctl token list | add NAME [--role operator] [--save] | delete NAME
    ocsctl token add NAME --direct [--save]  # into the store, without the API
    ocsctl tariff list | show NAME | put NAME FILE.json | import NAME DECK.csv | delete NAME
    ocsctl rate --tariff T --to N --duration S [--at ISO] [--currency C]
    ocsctl rate-cdrs FILE --format freeswitch|asterisk|generic --tariff T [--out rated.csv]
    ocsctl db migrate
    ocsctl demo

Accounts are named by id or by name everywhere (``demo`` or ``7``).
"""

from __future__ import annotations

import click

from .. import __version__
from .client import ApiFailure, ApiUnreachable
from .context import DEFAULT_TOKEN_FILE, Ctx, UsageProblem

UNREACHABLE_HINT = ("hint: is ocsd running? Start it with 'ocsd --config conf/ocs.toml' "
                    "(or 'make run'), or point ocsctl at it with --api URL / $OCS_API.")
TOKEN_HINT = ("hint: pass --token or set $OCS_TOKEN; 'ocsctl demo' saves a token to "
              f"{DEFAULT_TOKEN_FILE}, and 'ocsctl token add NAME --direct --save' makes one "
              "without the API.")


def _report_api_failure(exc: ApiFailure) -> None:
    click.echo(f"error: {exc.message} (HTTP {exc.status})", err=True)
    if exc.code == "import_rejected" and exc.details:
        click.echo(f"{len(exc.details)} problem{'s' if len(exc.details) != 1 else ''} "
                   "listed by the server (the header is line 1):", err=True)
    for d in exc.details:
        if not isinstance(d, dict):
            continue
        if d.get("line") is not None:
            where = f"line {d['line']}" + (f", column {d['column']}" if d.get("column") else "")
        else:
            where = d.get("field") or ""
        text = f"{where}: {d.get('message', '')}" if where else str(d.get("message", ""))
        # A validation summary often already says it; an import lists every line.
        if exc.code == "import_rejected" or text not in exc.message:
            click.echo("  " + text, err=True)
    if exc.status == 401:
        click.echo(TOKEN_HINT, err=True)


class OcsctlGroup(click.Group):
    """Turns the errors every command can meet into a message and an exit status."""

    def invoke(self, ctx: click.Context):
        from ..errors import MigrationError, OcsError
        try:
            return super().invoke(ctx)
        except ApiUnreachable as exc:
            click.echo(f"error: {exc}", err=True)
            click.echo(UNREACHABLE_HINT, err=True)
            ctx.exit(3)
        except ApiFailure as exc:
            _report_api_failure(exc)
            ctx.exit(1)
        except MigrationError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except OcsError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)


@click.group(cls=OcsctlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", envvar="OCS_CONFIG", metavar="FILE",
              help="Configuration file [$OCS_CONFIG; default conf/ocs.toml].")
@click.option("--api", envvar="OCS_API", metavar="URL",
              help="API base URL [$OCS_API; default http://<[api] listen>].")
@click.option("--token", envvar="OCS_TOKEN", metavar="TOKEN",
              help="API bearer token [$OCS_TOKEN; else the token file, else "
                   "[api] bootstrap_token].")
@click.option("--token-file", envvar="OCS_TOKEN_FILE", metavar="FILE",
              help=f"Where the token is kept [$OCS_TOKEN_FILE; default {DEFAULT_TOKEN_FILE}].")
@click.option("--json", "json_", is_flag=True, help="Print machine-readable JSON.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Seconds to wait for the API.")
@click.version_option(__version__, prog_name="ocsctl")
@click.pass_context
def cli(ctx: click.Context, config, api, token, token_file, json_, timeout):
    """Operate ocsd: subscribers, accounts, plans, NAS, sessions, ledger, audit."""
    ctx.obj = Ctx(config=config, api=api, token=token, token_file=token_file, json=json_,
                  timeout=timeout)


from . import (accounts, local, policy, resources, subscribers,  # noqa: E402  (register commands)
               tariffs)

for module in (subscribers, accounts, resources, local, policy, tariffs):
    for command in module.COMMANDS:
        cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="ocsctl")


__all__ = ["main", "cli", "UsageProblem"]
