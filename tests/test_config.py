"""Configuration: what an operator sees when the file is right, wrong, or holds secrets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from ocs import config as cfgmod
from ocs.config import Config, load, secret_weakness
from ocs.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTED = ROOT / "conf" / "ocs.toml"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "ocs.toml"
    path.write_text(text)
    return str(path)


def refused(path: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(path)
    return info.value


# ---------------------------------------------------------------------- the documented file
def test_the_documented_file_loads_with_the_defaults():
    config = load(str(DOCUMENTED))
    defaults = Config()
    for section in ("log", "store", "redis", "auth", "api", "metrics"):
        assert getattr(config, section) == getattr(defaults, section), section
    assert config.daemon.drain_timeout == defaults.daemon.drain_timeout
    assert config.source == str(DOCUMENTED)


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^\[([a-z_]+)\]\s*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2]))


def test_every_key_of_the_model_is_documented():
    """Keeps conf/ocs.toml honest: each setting appears, set or commented, in its section."""
    sections = _sections(DOCUMENTED.read_text())
    missing = []
    for name, info in Config.model_fields.items():
        if not (isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)):
            continue
        body = sections.get(name)
        if body is None:
            missing.append(f"[{name}]")
            continue
        for field_name, finfo in info.annotation.model_fields.items():
            key = finfo.alias or field_name
            if not re.search(rf"^#?\s*{re.escape(key)}\s*=", body, re.MULTILINE):
                missing.append(f"{name}.{key}")
    assert not missing, f"settings not documented in conf/ocs.toml: {missing}"


def test_documented_file_has_no_key_the_model_lacks():
    """The reverse: every uncommented key in conf/ocs.toml is one the model accepts."""
    for name, body in _sections(DOCUMENTED.read_text()).items():
        assert name in Config.model_fields, f"[{name}] is not a section"
        fields = {f.alias or k for k, f in
                  Config.model_fields[name].annotation.model_fields.items()}
        for key in re.findall(r"^([a-z_]+)\s*=", body, re.MULTILINE):
            assert key in fields, f"{name}.{key} is documented but unknown"


# ---------------------------------------------------------------------- refusals
@pytest.mark.parametrize("text, key, reason", [
    ("[api]\nlisten_on = '0.0.0.0:80'\n", "api.listen_on", "unknown key"),
    ("[nosuch]\nx = 1\n", "nosuch", "unknown key"),
    ("[api]\nlisten = 'localhost'\n", "api.listen", "'localhost' is not HOST:PORT"),
    ("[api]\nlisten = '127.0.0.1:70000'\n", "api.listen", "is not HOST:PORT"),
    ("[daemon]\ndrain_timeout = 0\n", "daemon.drain_timeout", "greater than 0"),
    ("[daemon]\ndrain_timeout = 'soon'\n", "daemon.drain_timeout", "valid number"),
    ("[log]\nlevel = 'loud'\n", "log.level", "'debug', 'info', 'warning' or 'error'"),
    ("[log]\nlevels = { 'ocs.store' = 'chatty' }\n", "log.levels.ocs.store", "Input should be"),
    ("[store]\nurl = 'mysql://db/ocs'\n", "store.url", "use sqlite:PATH or postgresql://"),
    ("[store]\nschema = 'a; DROP'\n", "store.schema", "letters, digits and underscores"),
    ("[redis]\nurl = 'http://cache'\n", "redis.url", "use redis://"),
    ("[redis]\nsentinels = ['10.0.0.1:26379']\n", "redis", "sentinels need sentinel_master"),
    ("[redis]\nsentinel_master = 'ocs'\n", "redis", "sentinel_master needs sentinels"),
    ("[redis]\nsentinels = ['10.0.0.1']\nsentinel_master = 'ocs'\n", "redis.sentinels.0",
     "is not HOST:PORT"),
    ("[redis]\nsentinels = ['10.0.0.1:26379']\nsentinel_master = 'ocs'\n"
     "url = 'unix:///run/redis.sock'\n", "redis", "not supported with Sentinel"),
    ("[redis]\nurl = 'redis://cache/0'\ntls_ca = '/etc/ssl/certs/ca-certificates.crt'\n",
     "redis", "need TLS: url = \"rediss://"),
    ("[redis]\nurl = 'rediss://cache/0'\ntls_certificate = '/etc/passwd'\n", "redis",
     "tls_certificate and tls_key go together"),
    ("[redis]\nurl = 'rediss://cache/0'\ntls_ca = '/nonexistent/ca.pem'\n", "redis",
     "tls_ca: cannot read /nonexistent/ca.pem"),
    ("[redis]\nurl = 'rediss://cache/0'\ntls_ca = '/etc/passwd'\n", "redis",
     "tls_ca: /etc/passwd holds no PEM certificate"),
    ("[redis]\nurl = 'rediss://cache/0'\ntls_certificate = '/etc/passwd'\n"
     "tls_key = '/etc/passwd'\n", "redis",
     "tls_certificate and tls_key: /etc/passwd and /etc/passwd are not a PEM"),
    ("[redis]\nsentinels = ['10.0.0.1:26379']\nsentinel_master = 'ocs'\n"
     "cluster_nodes = ['10.0.0.1:6379']\n", "redis", "cluster_nodes or sentinels, not both"),
    ("[redis]\ncluster_nodes = ['10.0.0.1:6379']\nurl = 'redis://:pw@/3'\n", "redis",
     "database 0"),
    ("[redis]\ncluster_nodes = ['10.0.0.1']\n", "redis.cluster_nodes.0", "is not HOST:PORT"),
    ("[radius]\nstrip_realms = ['@isp.example']\n", "radius.strip_realms", "is not a realm"),
    ("source = 'x'\n", "source", "unknown key"),
])
def test_bad_values_name_file_key_and_reason(tmp_path, text, key, reason):
    path = write(tmp_path, text)
    err = refused(path)
    assert err.file == path and err.key == key
    assert reason in err.reason
    assert str(err).startswith(f"{path}:{key}: ")


def test_several_problems_are_counted(tmp_path):
    err = refused(write(tmp_path, "[api]\nlisten = 'x'\nmax_body_mb = 0\n"))
    assert err.reason.endswith("(and 1 more problem)")


def test_bad_toml_names_the_file_and_the_line(tmp_path):
    path = write(tmp_path, "[api]\nlisten = \n")
    err = refused(path)
    assert err.file == path and err.key is None
    assert err.reason.startswith("not valid TOML") and "line 2" in err.reason


def test_missing_file(tmp_path):
    err = refused(str(tmp_path / "absent.toml"))
    assert str(err) == f"{tmp_path / 'absent.toml'}: file not found"


# ---------------------------------------------------------------------- secrets
def test_secret_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("OCS_T_TOKEN", "from-the-environment")
    config = load(write(tmp_path, "[api]\nbootstrap_token = 'env:OCS_T_TOKEN'\n"))
    assert config.api.bootstrap_token.get_secret_value() == "from-the-environment"
    # A resolved secret never shows in a repr (what ends up in tracebacks and logs).
    assert "from-the-environment" not in repr(config) + str(config.api)


def test_secret_from_unset_environment_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("OCS_T_NOPE", raising=False)
    err = refused(write(tmp_path, "[api]\nbootstrap_token = 'env:OCS_T_NOPE'\n"))
    assert err.key == "api.bootstrap_token"
    assert err.reason == "environment variable OCS_T_NOPE is not set"


def test_secret_from_file(tmp_path):
    secret_file = tmp_path / "token"
    secret_file.write_text("from-a-file\n")
    config = load(write(tmp_path, f"[api]\nbootstrap_token = 'file:{secret_file}'\n"))
    assert config.api.bootstrap_token.get_secret_value() == "from-a-file"
    err = refused(write(tmp_path, f"[api]\nbootstrap_token = 'file:{tmp_path}/gone'\n"))
    assert err.key == "api.bootstrap_token"
    assert f"cannot read secret file {tmp_path}/gone" in err.reason


def test_secret_from_systemd_credential(tmp_path, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api-token").write_text("from-a-credential\n")
    text = "[api]\nbootstrap_token = 'credential:api-token'\n"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    err = refused(write(tmp_path, text))
    assert err.key == "api.bootstrap_token" and "LoadCredential=" in err.reason
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    config = load(write(tmp_path, text))
    assert config.api.bootstrap_token.get_secret_value() == "from-a-credential"
    err = refused(write(tmp_path, "[api]\nbootstrap_token = 'credential:other'\n"))
    assert f"cannot read credential {creds}/other" in err.reason


def test_literal_secret_and_no_secret(tmp_path):
    config = load(write(tmp_path, "[api]\nbootstrap_token = 'literal-value'\n"))
    assert config.api.bootstrap_token.get_secret_value() == "literal-value"
    assert load(write(tmp_path, "")).api.bootstrap_token is None


@pytest.mark.parametrize("secret, why", [
    ("", "empty"),
    ("testing123", "a well-known default"),
    ("Secret", "a well-known default"),
    ("short-one", "only 9 characters"),
    ("aaaaabbbbbaaaaabbbbb", "too few distinct characters"),
    ("k4#Vq9!zLm2@Xp7$", None),
])
def test_secret_weakness(secret, why):
    got = secret_weakness(secret)
    assert (got is None) if why is None else (why in got)


def test_overrides_apply_over_the_file(tmp_path):
    path = write(tmp_path, "[api]\nlisten = '127.0.0.1:8080'\n")
    config = load(path, overrides={"api": {"listen": "127.0.0.1:9000"}, "log": {"level": "debug"}})
    assert config.api.listen == "127.0.0.1:9000" and config.log.level == "debug"


def test_configuration_is_immutable(tmp_path):
    config = load(write(tmp_path, ""))
    with pytest.raises(ValidationError, match="frozen"):
        config.api.listen = "0.0.0.0:80"  # type: ignore[misc]
    assert cfgmod.DEFAULT_PATH == "conf/ocs.toml"


def test_radius_sessions_go_stale_after_missed_interims_when_asked(tmp_path):
    """[radius] stale_after_intervals: that many Acct-Interim-Intervals, plus the minute
    a session's record may lag, is the silence after which supervision closes a
    RADIUS session; 0 (the default) leaves every session to [charging] idle_timeout."""
    from ocs.components import Context, Supervision
    from ocs.metrics import Metrics

    def idle(**radius) -> dict:
        config = load(str(DOCUMENTED), overrides={"radius": radius} if radius else None)
        return Supervision(Context(config=config, config_path="", metrics=Metrics()))._idle()
    assert idle() == {}
    assert idle(stale_after_intervals=3) == {"radius": 3 * 300 + 60}
    assert idle(stale_after_intervals=3, acct_interim_interval=0) == {}
    assert idle(stale_after_intervals=3, enabled=False) == {}


def test_a_policy_lease_shorter_than_one_attempt_is_named():
    from ocs.config import from_dict, lease_warning
    # [diameter] 10 s x 5 tries (+2 when another node sends it) + 5, and 2 s to hand
    # the attempt to the NAS's policy_node: 59 s.
    slow = {"diameter": {"request_timeout": 10, "request_attempts": 5}}
    assert lease_warning(from_dict({**slow, "policy": {"lease": 59}})) == (
        "policy.lease (59 s) is not longer than one enforcement attempt may take (59 s, from "
        "coa_max_duration, control_timeout and [diameter] request_timeout x "
        "request_attempts, and 2 s to hand it to another node): a second worker may take "
        "an action while the first is still carrying it out")
    assert lease_warning(from_dict({**slow, "policy": {"lease": 60}})) is None
    assert lease_warning(from_dict({**slow, "policy": {"enabled": False, "lease": 5}})) is None
    assert "(37 s" in lease_warning(from_dict({"policy": {"lease": 30}}))  # CoA 30 + 5 + 2
    assert lease_warning(from_dict({})) is None  # the defaults agree
