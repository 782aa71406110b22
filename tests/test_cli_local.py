"""`ocsctl` commands that work without ocsd (db migrate, demo, token add --direct),
and the exit statuses of usage errors and of an API nobody answers.

ocsctl runs as a real subprocess (`python -m ocs.cli`) against a real store
on both backends, the way an operator runs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass

import pytest

from ocs.store import Store, make_driver
from ocs.store.migrate import LATEST
from tests.conftest import ROOT
from tests.services import free_port


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


def ocsctl(*args: str, cwd, env: dict[str, str] | None = None, input: str | None = None,
           timeout: float = 120) -> Run:
    """Run ocsctl as an operator would; the environment is cleared of OCS_* settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("OCS_")}
    base["PYTHONPATH"] = ROOT
    proc = subprocess.run([sys.executable, "-m", "ocs.cli", *args], cwd=cwd,
                          env={**base, **(env or {})}, input=input, capture_output=True,
                          text=True, timeout=timeout)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def write_config(directory, url: str, options: dict, *, api_listen: str = "127.0.0.1:8080",
                 extra: str = "") -> str:
    path = os.path.join(directory, "ocs.toml")
    schema = options.get("schema") or ""
    with open(path, "w") as fh:
        fh.write(f'[store]\nurl = "{url}"\nschema = "{schema}"\n\n'
                 f'[api]\nlisten = "{api_listen}"\n{extra}')
    return path


@pytest.fixture
def config(store_target, tmp_path):
    url, options = store_target
    return write_config(str(tmp_path), url, options)


def open_store(store_target) -> Store:
    url, options = store_target
    return Store(make_driver(url, **options))


async def _verify(store_target, token):
    store = open_store(store_target)
    await store.open()
    try:
        return await store.verify_token(token)
    finally:
        await store.close()


def test_db_migrate_applies_then_says_already_at_version(config, tmp_path):
    first = ocsctl("--config", config, "db", "migrate", cwd=tmp_path)
    assert first.code == 0, first.err
    assert "applied migration" in first.out and f"now at version {LATEST}" in first.out
    again = ocsctl("--config", config, "db", "migrate", cwd=tmp_path)
    assert again.code == 0 and f"already at version {LATEST}" in again.out
    data = ocsctl("--config", config, "db", "migrate", "--json", cwd=tmp_path).json()
    assert data["applied"] == [] and data["version"] == LATEST


def test_demo_prints_and_saves_the_token_once(config, tmp_path, store_target):
    first = ocsctl("--config", config, "demo", cwd=tmp_path)
    assert first.code == 0, first.err
    assert "testing123" in first.out and "balance 10.00 EUR" in first.out
    assert "41780000002" in first.out and "1001" in first.out
    token_file = tmp_path / "var" / "ocsctl.token"
    token = token_file.read_text().strip()
    assert f"API token demo-admin (admin): {token}" in first.out
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    record = asyncio.run(_verify(store_target, token))
    assert record is not None and record.name == "demo-admin" and record.role.value == "admin"

    second = ocsctl("--config", config, "demo", cwd=tmp_path)
    assert second.code == 0, second.err
    assert "nothing changed" in second.out and token not in second.out
    assert "demo-admin exists" in second.out and "ocsctl token add" in second.out
    assert token_file.read_text().strip() == token  # not overwritten
    data = ocsctl("--config", config, "--json", "demo", cwd=tmp_path).json()
    assert data["created"] == [] and data["token"] is None
    assert {s["label"]: s["balance"] for s in data["subscribers"]}["prepaid"] == "10.00"


def test_token_add_direct_bootstraps_without_the_api(config, tmp_path, store_target):
    not_ready = ocsctl("--config", config, "token", "add", "ops", "--direct", cwd=tmp_path)
    assert not_ready.code == 1 and "ocsctl db migrate" in not_ready.err
    assert ocsctl("--config", config, "db", "migrate", cwd=tmp_path).code == 0

    made = ocsctl("--config", config, "--token-file", "ops.token", "token", "add", "ops",
                  "--role", "admin", "--direct", "--save", "--json", cwd=tmp_path)
    assert made.code == 0, made.err
    data = made.json()
    assert data["name"] == "ops" and data["role"] == "admin"
    assert (tmp_path / "ops.token").read_text().strip() == data["token"]
    assert asyncio.run(_verify(store_target, data["token"])).name == "ops"

    again = ocsctl("--config", config, "token", "add", "ops", "--direct", cwd=tmp_path)
    assert again.code == 1 and "'ops' already exists" in again.err


def test_unreachable_api_exits_3_with_a_hint(tmp_path):
    port = free_port()  # nothing listens there
    run = ocsctl("--api", f"http://127.0.0.1:{port}", "--token", "x", "subscriber", "find",
                 "demo", cwd=tmp_path)
    assert run.code == 3
    assert f"cannot reach the API at http://127.0.0.1:{port}" in run.err
    assert "is ocsd running?" in run.err


def test_api_url_comes_from_the_config_listen_address(tmp_path):
    port = free_port()
    config = write_config(str(tmp_path), "sqlite:x.db", {}, api_listen=f"0.0.0.0:{port}")
    run = ocsctl("--config", config, "plan", "list", cwd=tmp_path)
    assert run.code == 3 and f"http://127.0.0.1:{port}" in run.err


@pytest.mark.parametrize("args, words", [
    (["subscriber", "find"], "what to find?"),
    (["subscriber", "find", "demo", "--msisdn", "1"], "either VALUE or one --option"),
    (["account", "topup", "demo"], "Missing argument 'AMOUNT'"),
    (["subscriber", "import", "no-such-file.csv"], "No such file"),
    (["--config", "missing.toml", "db", "migrate"], "missing.toml: file not found"),
    (["nosuchcommand"], "No such command"),
])
def test_usage_errors_exit_2(tmp_path, args, words):
    run = ocsctl("--api", "http://127.0.0.1:9", *args, cwd=tmp_path)
    assert run.code == 2, (run.out, run.err)
    assert words in run.err


def test_a_bad_config_names_the_key_and_exits_2(tmp_path):
    config = write_config(str(tmp_path), "sqlite:x.db", {}, extra="colour = 1\n")
    run = ocsctl("--config", config, "db", "migrate", cwd=tmp_path)
    assert run.code == 2 and "api.colour: unknown key" in run.err
