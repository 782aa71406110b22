"""`ocsctl tariff|rate|rate-cdrs` as real subprocesses against the real API (the
`served` harness of tests/test_cli.py: a SQLite store seeded with the demo data,
the API on a socket in the test's loop): what an operator sees and the exit
statuses."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from tests.conftest import ROOT
from tests.services import free_port
from tests.test_cli import Served, _wait_healthy, served, value  # noqa: F401
from tests.test_cli_local import ocsctl as ocsctl_sync, write_config

DATA = os.path.join(os.path.dirname(__file__), "data", "cdrs")

BAD_DECK = """prefix,destination,price,increment
44,United Kingdom,0.70,60
4420,London,0.90,60
33,France,x,60
4420,London twice,0.95,60
"""


def copy_data(served: Served) -> str:
    """The sample files in the ocsctl working directory (deck paths are relative)."""
    for name in ("retail.json", "retail-base.csv", "freeswitch.csv", "Master.csv"):
        shutil.copy(os.path.join(DATA, name), served.cwd)
    return served.cwd


async def put_retail(served: Served) -> None:
    copy_data(served)
    r = await served.run("tariff", "put", "retail", "retail.json")
    assert r.code == 0, r.err
    assert r.out.strip() == ("Saved tariff retail (revision 1): 1 deck, 5 rows; services "
                             "rg10, sms, voice.")


async def test_put_list_show_import_and_delete(served: Served):
    await put_retail(served)
    listing = await served.run("tariff", "list")
    assert listing.code == 0, listing.err
    head, _, row = listing.out.splitlines()
    assert head.split()[:4] == ["name", "currency", "revision", "services"]
    assert row.split()[:6] == ["retail", "EUR", "1", "rg10,", "sms,", "voice"]
    assert "base (5)" in row

    shown = await served.run("tariff", "show", "retail")
    assert shown.code == 0, shown.err
    assert shown.out.startswith("Tariff retail (revision 1, EUR, Europe/Zurich)")
    assert value(shown.out, "rounding") == "2 decimals, up"
    assert value(shown.out, "numbering") == "+ or 00 international, 0 national -> 41"
    assert "peak  mon,tue,wed,thu,fri  08:00  19:00" in shown.out
    assert "up to 1000000000: 2.00; then 1.00" in shown.out
    assert "EUR   CHF  0.95" in shown.out

    # The definition goes back through put (decks kept, revision checked).
    definition = await served.run("tariff", "show", "retail", "--definition")
    data = json.loads(definition.out)
    data["description"] = "edited by ocsctl"
    with open(os.path.join(served.cwd, "edited.json"), "w") as fh:
        json.dump(data, fh)
    r = await served.run("tariff", "put", "retail", "edited.json")
    assert r.code == 0 and "(revision 2): 1 deck, 5 rows" in r.out, r.err
    stale = await served.run("tariff", "put", "retail", "edited.json")
    assert stale.code == 1 and "HTTP 409" in stale.err and "revision 2, not 1" in stale.err

    # A bad deck: every bad line printed, exit 1, nothing imported.
    with open(os.path.join(served.cwd, "bad.csv"), "w") as fh:
        fh.write(BAD_DECK)
    bad = await served.run("tariff", "import", "retail", "bad.csv")
    assert bad.code == 1 and bad.out == ""
    assert "HTTP 422" in bad.err and "problems listed by the server (the header is line 1)" \
        in bad.err
    assert "  line 4, column price: not an amount: 'x'" in bad.err
    assert "  line 5, column prefix: duplicate prefix 4420 (line 3)" in bad.err
    t = (await served.run("--json", "tariff", "show", "retail")).json()
    assert t["revision"] == 2 and t["decks"][0]["rows"] == 5

    promo = os.path.join(served.cwd, "promo.csv")
    with open(promo, "w") as fh:
        fh.write("prefix,destination,price,increment\n4420,London promo,0.10,60\n")
    r = await served.run("tariff", "import", "retail", "promo.csv", "--deck", "promo",
                         "--priority", "10")
    assert r.code == 0, r.err
    assert r.out.strip() == ("Imported 1 rows into deck promo of tariff retail (voice, per "
                             "minute, priority 10); revision 3.")
    missing = await served.run("tariff", "import", "retail", "nowhere.csv")
    assert missing.code == 2 and "cannot read nowhere.csv" in missing.err

    r = await served.run("tariff", "delete", "retail")
    assert r.code == 0 and r.out.strip() == "Deleted tariff retail."
    gone = await served.run("tariff", "show", "retail")
    assert gone.code == 1 and "no tariff named 'retail'" in gone.err and "HTTP 404" in gone.err


async def test_put_refuses_a_file_that_is_not_a_definition(served: Served):
    copy_data(served)
    with open(os.path.join(served.cwd, "broken.json"), "w") as fh:
        fh.write("{not json")
    r = await served.run("tariff", "put", "retail", "broken.json")
    assert r.code == 2 and "broken.json is not JSON" in r.err
    r = await served.run("tariff", "put", "other", "retail.json")
    assert r.code == 0, r.err   # the file carries no name: any name will do
    with open(os.path.join(served.cwd, "named.json"), "w") as fh:
        json.dump({"name": "retail", "currency": "EUR"}, fh)
    r = await served.run("tariff", "put", "other", "named.json")
    assert r.code == 2 and "defines tariff 'retail', not 'other'" in r.err
    with open(os.path.join(served.cwd, "invalid.json"), "w") as fh:
        json.dump({"currency": "EUR", "timezone": "Mars/Olympus"}, fh)
    r = await served.run("tariff", "put", "other", "invalid.json")
    assert r.code == 1 and "HTTP 422" in r.err and "timezone" in r.err


async def test_rate_prints_the_charge_and_how_it_was_computed(served: Served):
    await put_retail(served)
    r = await served.run("rate", "--tariff", "retail", "--to", "442079460000", "--duration",
                         "185", "--at", "2026-11-25T19:00")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0] == "4.00 EUR for 185 s of voice to 442079460000"
    assert value(r.out, "destination") == "London, prefix 4420 (deck base, line 4)"
    assert value(r.out, "increments") == "60/60, minimum 0, connection fee 0.00 EUR"
    assert value(r.out, "billed") == "240 s"
    assert value(r.out, "cost") == "4.00 EUR"
    assert value(r.out, "at") == ("2026-11-25T19:00:00+01:00 Europe/Zurich "
                                  "(2026-11-25 18:00:00Z)")
    assert lines[-1].split() == ["offpeak", "240", "1.00"]

    across = await served.run("rate", "--tariff", "retail", "--to", "442079460000",
                              "--duration", "185", "--at", "2026-11-25T18:59", "--json")
    c = across.json()
    assert c["cost"] == "5.00" and [(b["band"], b["units"]) for b in c["bands"]] == [
        ("peak", 60), ("offpeak", 180)]

    chf = await served.run("rate", "--tariff", "retail", "--to", "442079460000", "--duration",
                           "185", "--at", "2026-11-25T19:00", "--currency", "chf")
    assert value(chf.out, "cost") == "3.80 CHF"
    assert value(chf.out, "tariff cost") == "4.00 EUR"
    assert value(chf.out, "exchange") == "1 EUR = 0.95 CHF since 2026-01-01 00:00:00Z"

    data = await served.run("rate", "--tariff", "retail", "--service", "rg10", "--units",
                            "1500000000")
    assert data.code == 0 and value(data.out, "cost") == "2.50 EUR"
    assert [ln.split() for ln in data.out.splitlines()[-2:]] == [
        ["1", "1000000000", "2.00", "per", "1000000000"],
        ["2", "500000000", "1.00", "per", "1000000000"]]

    no_route = await served.run("rate", "--tariff", "retail", "--to", "8612345678",
                                "--duration", "60")
    assert no_route.code == 1 and "has no rate for 8612345678" in no_route.err
    both = await served.run("rate", "--tariff", "retail", "--duration", "60", "--units", "1")
    assert both.code == 2 and "--duration (voice) or --units" in both.err


async def test_rate_cdrs_summary_rejects_and_rated_file(served: Served):
    await put_retail(served)
    r = await served.run("rate-cdrs", "freeswitch.csv", "--format", "freeswitch", "--tariff",
                         "retail", "--out", "rated.csv")
    assert r.code == 0, r.err
    assert r.out.startswith("Rated 3 of 10 CDRs with tariff retail (revision 1), voice, "
                            "freeswitch format, times in Europe/Zurich")
    assert value(r.out, "total cost") == "5.53 EUR"
    assert value(r.out, "rejected") == ("7 (zero_duration 1, unparseable 1, no_route 1, "
                                        "bad_number 1, bad_duration 1, bad_time 1, "
                                        "negative_duration 1)")
    rejects = r.out.split("Rejects\n", 1)[1].splitlines()
    assert [ln.split()[:2] for ln in rejects[2:9]] == [
        ["3", "zero_duration"], ["4", "unparseable"], ["5", "no_route"], ["6", "bad_number"],
        ["7", "bad_duration"], ["10", "bad_time"], ["11", "negative_duration"]]
    assert r.out.rstrip().endswith("Wrote 10 rows to rated.csv.")
    with open(os.path.join(served.cwd, "rated.csv")) as fh:
        rows = list(csv.DictReader(fh))
    assert [(x["line"], x["status"], x["cost"], x["destination"]) for x in rows[:3]] == [
        ("1", "ok", "5.00", "London"), ("2", "ok", "0.43", "UK mobile"),
        ("3", "zero_duration", "", "")]

    # Asterisk, in CHF, the rated CSV on standard output and the summary on standard error.
    r = await served.run("rate-cdrs", "Master.csv", "--format", "asterisk", "--tariff",
                         "retail", "--currency", "CHF", "--out", "-")
    assert r.code == 0, r.err
    rows = list(csv.DictReader(io.StringIO(r.out)))
    assert [(x["line"], x["status"], x["cost"], x["currency"]) for x in rows if
            x["status"] == "ok"] == [("1", "ok", "4.75", "CHF"), ("3", "ok", "0.41", "CHF"),
                                     ("5", "ok", "0.10", "CHF")]
    assert "total cost  5.26 CHF" in r.err

    as_json = await served.run("--json", "rate-cdrs", "Master.csv", "--format", "asterisk",
                               "--tariff", "retail")
    assert as_json.json()["summary"]["total_cost"] == "5.53"
    unknown = await served.run("rate-cdrs", "Master.csv", "--format", "asterisk", "--tariff",
                               "nothing")
    assert unknown.code == 1 and "no tariff named 'nothing'" in unknown.err


def test_the_running_daemon_reloads_tariffs_changed_through_ocsctl(tmp_path):
    """ocsd as an operator runs it: a tariff put or a deck imported is compiled into the
    daemon's tariffs at once (its log says so), without SIGHUP."""
    port = free_port()
    (tmp_path / "conf").mkdir()
    write_config(str(tmp_path / "conf"), "sqlite:var/ocs.db", {},
                 api_listen=f"127.0.0.1:{port}")
    for name in ("retail.json", "retail-base.csv"):
        shutil.copy(os.path.join(DATA, name), tmp_path)
    assert ocsctl_sync("db", "migrate", cwd=tmp_path).code == 0
    assert ocsctl_sync("demo", cwd=tmp_path).code == 0
    log_path = tmp_path / "ocsd.log"
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("NOTIFY_SOCKET", None)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", "from ocs.daemon import main; main()",
                                 "--config", "conf/ocs.toml"], cwd=tmp_path, env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            _wait_healthy(f"http://127.0.0.1:{port}", proc)
            assert "tariffs in force: none" in log_path.read_text()
            put = ocsctl_sync("tariff", "put", "retail", "retail.json", cwd=tmp_path)
            assert put.code == 0, put.err
            assert _logged(log_path, "tariffs reloaded: retail", 1) == 1
            (tmp_path / "promo.csv").write_text("prefix,destination,price,increment\n"
                                                "4420,London promo,0.10,60\n")
            imported = ocsctl_sync("tariff", "import", "retail", "promo.csv", "--deck", "promo",
                                   "--priority", "5", cwd=tmp_path)
            assert imported.code == 0, imported.err
            assert _logged(log_path, "tariffs reloaded: retail", 2) == 2
            rated = ocsctl_sync("--json", "rate", "--tariff", "retail", "--to", "442079460000",
                                "--duration", "185", "--at", "2026-11-25T19:00", cwd=tmp_path)
            assert rated.code == 0, rated.err
            assert (rated.json()["cost"], rated.json()["revision"]) == ("0.40", 2)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
    assert code == 0, log_path.read_text()


def _logged(path, text: str, times: int, timeout: float = 10.0) -> int:
    """How many times the log says `text`, waiting (a little) until it says it `times`
    times: the log is written by another process."""
    deadline = time.monotonic() + timeout
    while True:
        count = path.read_text().count(text)
        if count >= times or time.monotonic() > deadline:
            return count
        time.sleep(0.05)
