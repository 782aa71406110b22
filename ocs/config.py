"""The typed, validated, immutable configuration of ocsd.

Loaded from TOML (`conf/ocs.toml` documents every key). Unknown keys and bad
values fail at start with the file, the key and the reason. Secrets are never
written in clear in the file when it can be avoided: any secret value may be

* `env:NAME`         read from the environment variable NAME,
* `file:/path`       read from a file (trailing newline stripped),
* `credential:NAME`  read from systemd's `$CREDENTIALS_DIRECTORY/NAME`
                     (LoadCredential= in the unit),

or a literal. Resolved secrets are `SecretStr`, whose repr never shows them.
SIGHUP builds a new `Config` from the same file; if that fails, the old one
stays in force and the error is logged.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import tomllib
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, SecretStr,
                      ValidationError as PydanticValidationError, field_validator,
                      model_validator)

from .errors import ConfigError

DEFAULT_PATH = "conf/ocs.toml"


def resolve_secret(value: Any, *, key: str = "secret") -> Any:
    """Turn `env:`, `file:` and `credential:` references into the secret itself."""
    if isinstance(value, SecretStr):
        return value
    if not isinstance(value, str):
        return value
    if value.startswith("env:"):
        name = value[4:]
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return os.environ[name]
    if value.startswith("file:"):
        path = value[5:]
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read().rstrip("\r\n")
        except OSError as exc:
            raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from None
    if value.startswith("credential:"):
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ValueError("credential: needs systemd's CREDENTIALS_DIRECTORY "
                             "(LoadCredential= in the unit)")
        path = os.path.join(directory, value[len("credential:"):])
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read().rstrip("\r\n")
        except OSError as exc:
            raise ValueError(f"cannot read credential {path}: {exc.strerror}") from None
    return value


Secret = Annotated[SecretStr, BeforeValidator(resolve_secret)]


def _hostport(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not (0 <= int(port) <= 65535):
        raise ValueError(f"{value!r} is not HOST:PORT")
    return value


Listen = Annotated[str, BeforeValidator(_hostport)]

#: The password in a URL ("scheme://user:PASSWORD@host"): group 2.
URL_PASSWORD = re.compile(r"(://[^:@/]*:)([^@/]*)@")


def hide_url_password(text: str) -> str:
    """`text` with the password of any URL in it shown as ***."""
    return URL_PASSWORD.sub(r"\1***@", text)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class DaemonConfig(Section):
    node_name: str = Field(default_factory=socket.gethostname)
    drain_timeout: float = Field(10.0, gt=0, le=600)
    watchdog: bool = True
    gc_interval: float = Field(0.1, ge=0, le=60)
    gc_full_interval: float = Field(600.0, ge=1, le=86_400)


class LogConfig(Section):
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"
    levels: dict[str, Literal["debug", "info", "warning", "error"]] = {}


class StoreConfig(Section):
    url: str = "sqlite:var/ocs.db"
    auto_migrate: bool = True
    schema_: str = Field("", alias="schema")
    pool_min: int = Field(2, ge=1, le=1000)
    pool_max: int = Field(10, ge=1, le=1000)
    command_timeout: float = Field(10.0, gt=0)
    sqlite_synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"
    group_commit_window_ms: float = Field(0.0, ge=0, le=100)
    max_batch: int = Field(512, ge=1, le=100_000)
    reservation_sweep_interval: float = Field(30.0, gt=0)
    operation_retention_hours: float = Field(24.0, gt=0)
    unmatched_retention_days: float = Field(90.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("sqlite:", "postgres://", "postgresql://")):
            raise ValueError("use sqlite:PATH or postgresql://USER@HOST/DB")
        return v

    @field_validator("schema_")
    @classmethod
    def _schema(cls, v: str) -> str:
        if v and not v.replace("_", "").isalnum():
            raise ValueError("a schema name is letters, digits and underscores")
        return v

    def driver_options(self) -> dict[str, Any]:
        return {"schema": self.schema_ or None, "pool_min": self.pool_min,
                "pool_max": self.pool_max, "command_timeout": self.command_timeout,
                "sqlite_synchronous": self.sqlite_synchronous}


class RedisConfig(Section):
    url: str = ""
    sentinels: list[Listen] = []
    sentinel_master: str = ""
    sentinel_password: Secret | None = None
    cluster_nodes: list[Listen] = []
    key_prefix: str = "ocs:"
    dedup_ttl: float = Field(30.0, gt=0)
    dedup_claim_ttl: float = Field(5.0, gt=0)
    event_stream: str = "events"
    stream_maxlen: int = Field(1_000_000, ge=1000)
    timeout: float = Field(3.0, gt=0, le=60)
    # TLS, on with a rediss:// url: the CA bundle the servers' certificates are
    # checked with (empty: the system's), and a client certificate for a Redis
    # with tls-auth-clients.
    tls_ca: str = ""
    tls_certificate: str = ""
    tls_key: str = ""
    tls_check_hostname: bool = True

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("use redis://HOST:PORT/DB, rediss://... or unix://PATH")
        return v

    @model_validator(mode="after")
    def _sentinel(self) -> "RedisConfig":
        if self.sentinels and not self.sentinel_master:
            raise ValueError("sentinels need sentinel_master: the name the Sentinels "
                             "monitor the primary under")
        if self.sentinel_master and not self.sentinels:
            raise ValueError("sentinel_master needs sentinels (HOST:PORT of each)")
        if self.sentinels and self.url and not re.fullmatch(r"rediss?://[^/]*(/\d*)?",
                                                             self.url):
            raise ValueError("with sentinels, url may only be redis[s]://[USER:PASSWORD@]/DB "
                             "(the Sentinels name the host; unix sockets are not supported "
                             "with Sentinel)")
        if self.cluster_nodes and self.sentinels:
            raise ValueError("cluster_nodes or sentinels, not both: a Redis Cluster "
                             "fails over by itself")
        if self.cluster_nodes and self.url and not re.fullmatch(
                r"rediss?://[^/]*(/0?)?", self.url):
            raise ValueError("with cluster_nodes, url may only be redis[s]://[USER:PASSWORD@] "
                             "(database 0; unix sockets are not supported with Redis Cluster)")
        if (self.tls_ca or self.tls_certificate) and not self.tls:
            raise ValueError("tls_ca and tls_certificate need TLS: url = \"rediss://...\"")
        if bool(self.tls_certificate) != bool(self.tls_key):
            raise ValueError("tls_certificate and tls_key go together")
        for name in ("tls_ca", "tls_certificate", "tls_key"):
            path = getattr(self, name)
            if path and not os.access(path, os.R_OK):
                raise ValueError(f"{name}: cannot read {path}")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:  # the files as TLS reads them, so a wrong one is named now, not at connect
            if self.tls_ca:
                what = f"tls_ca: {self.tls_ca} holds no PEM certificate"
                context.load_verify_locations(self.tls_ca)
            if self.tls_certificate:
                what = (f"tls_certificate and tls_key: {self.tls_certificate} and "
                        f"{self.tls_key} are not a PEM certificate and its key")
                context.load_cert_chain(self.tls_certificate, self.tls_key)
        except ssl.SSLError as exc:
            raise ValueError(f"{what} ({exc.reason or exc})") from None
        return self

    @property
    def tls(self) -> bool:
        """Every connection to Redis (and to its Sentinels) is TLS."""
        return self.url.startswith("rediss://")

    @property
    def enabled(self) -> bool:
        """Nodes share state in Redis (else each keeps its own, in process)."""
        return bool(self.url or self.sentinels or self.cluster_nodes)

    def describe(self) -> str:
        """Where Redis is, for logs: the URL without its password, the Sentinels, or
        the cluster's seed nodes."""
        tls = " over TLS" if self.tls else ""
        if self.sentinels:
            return (f"sentinel primary {self.sentinel_master!r} via "
                    f"{','.join(self.sentinels)}{tls}")
        if self.cluster_nodes:
            return f"cluster via {','.join(self.cluster_nodes)}{tls}"
        return hide_url_password(self.url)


class AuthConfig(Section):
    password_scheme: Literal["ssha256", "pbkdf2-sha256"] = "ssha256"
    store_cleartext: bool = True
    store_nt_hash: bool = True


class Quota(Section):
    octets: int = Field(10 * 2**20, ge=1)
    seconds: int = Field(600, ge=1)
    events: int = Field(1, ge=1)

    def of(self, kind: str) -> int:
        return getattr(self, kind)


class ChargingConfig(Section):
    default_quota: Quota = Quota()
    max_quota: Quota = Quota(octets=2**30, seconds=3600, events=100)
    validity_time: int = Field(3600, ge=10, le=86_400 * 7)
    reservation_grace: int = Field(60, ge=0, le=86_400)
    quota_threshold_percent: int = Field(20, ge=0, le=100)
    idle_timeout: int = Field(7200, ge=60)
    fair_usage_period: Literal["day", "week", "month"] = "month"
    cache_ttl: float = Field(5.0, ge=0, le=3600)


class RadiusConfig(Section):
    """RADIUS front-end (radius/). Owned by the RADIUS work; see conf/ocs.toml [radius]."""

    enabled: bool = True
    auth_listen: Listen = "0.0.0.0:1812"
    acct_listen: Listen = "0.0.0.0:1813"
    reuse_port: bool = False
    dictionary: str = ""
    max_in_flight: int = Field(4096, ge=1, le=1_000_000)
    acct_interim_interval: int = Field(300, ge=0, le=86_400)
    session_timeout_max: int = Field(86_400, ge=0)
    send_class: bool = True
    framed_pool: str = ""
    walled_garden_session_timeout: int = Field(600, ge=1)
    replace_stale_sessions: bool = True
    stale_after_intervals: int = Field(0, ge=0, le=1000)
    data_service: str = "data"
    time_service: str = "time"
    voice_service: str = "voice"
    log_accounting: bool = False
    log_accepts: bool = False
    strip_realms: list[str] = []
    # RADIUS over TLS (RFC 6614, "RadSec"): off unless set, e.g. "0.0.0.0:2083".
    tls_listen: Listen | None = None
    tls_certificate: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    tls_idle_timeout: int = Field(0, ge=0, le=86_400)

    @field_validator("strip_realms")
    @classmethod
    def _realms(cls, v: list[str]) -> list[str]:
        for realm in v:
            if realm != "*" and (not realm or "@" in realm or "\\" in realm
                                 or realm != realm.strip()):
                raise ValueError(f"strip_realms: {realm!r} is not a realm (the part after "
                                 "'@' or before '\\', e.g. \"isp.example\"; \"*\" for any)")
        return [realm.lower() for realm in v]

    @field_validator("tls_ca")
    @classmethod
    def _tls(cls, v: str, info) -> str:
        data = info.data
        if data.get("tls_listen") and not (data.get("tls_certificate") and data.get("tls_key")
                                           and v):
            # RFC 6614 §2.3: both ends authenticate; NAS certificates are checked with tls_ca.
            raise ValueError("tls_listen needs tls_certificate, tls_key and tls_ca")
        return v


class DiameterConfig(Section):
    """Diameter front-end (diameter/). Owned by the Diameter work; see conf/ocs.toml [diameter]."""

    class RatingGroup(Section):
        """Per rating group: the unit kind it is charged in and the quota granted when
        the client does not ask for an amount."""

        kind: Literal["octets", "seconds", "events"] | None = None
        quota: int | None = Field(None, ge=1)

    enabled: bool = True
    listen: Listen = "0.0.0.0:3868"
    origin_host: str = Field(default_factory=lambda: f"ocs.{socket.gethostname()}.localdomain")
    origin_realm: str = "localdomain"
    host_ip_addresses: list[str] = []
    tls_listen: Listen | None = None
    tls_certificate: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    allowed_hosts: list[str] = []
    allowed_realms: list[str] = []
    allowed_addresses: list[str] = []
    watchdog_interval: float = Field(30.0, ge=1, le=3600)
    cer_timeout: float = Field(10.0, gt=0, le=300)
    disconnect_timeout: float = Field(2.0, gt=0, le=60)
    request_timeout: float = Field(5.0, gt=0, le=120)
    request_attempts: int = Field(3, ge=1, le=10)
    close_sessions_on_peer_restart: bool = True
    duplicate_ttl: float = Field(240.0, ge=240, le=86_400)
    max_message_size: int = Field(65536, ge=4096, le=16_777_215)
    max_in_flight: int = Field(4096, ge=1, le=1_000_000)
    quota_holding_time: int = Field(0, ge=0, le=86_400)
    exhausted_validity_time: int = Field(300, ge=0, le=86_400)
    log_credit_control: bool = False
    rating_groups: dict[str, RatingGroup] = {}

    @field_validator("host_ip_addresses")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        import ipaddress
        for a in v:
            try:
                ipaddress.ip_address(a)
            except ValueError:
                raise ValueError(f"{a!r} is not an IP address") from None
        return v

    @field_validator("allowed_addresses")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        import ipaddress
        for a in v:
            try:
                ipaddress.ip_network(a, strict=False)
            except ValueError:
                raise ValueError(f"{a!r} is not an IP address or CIDR prefix") from None
        return v

    @field_validator("rating_groups")
    @classmethod
    def _rating_groups(cls, v: dict) -> dict:
        for key in v:
            if not key.isdigit() or int(key) > 0xFFFFFFFF:
                raise ValueError(f"rating group {key!r} is not an Unsigned32 number")
        return v

    @field_validator("tls_key")
    @classmethod
    def _tls(cls, v: str, info) -> str:
        data = info.data
        if data.get("tls_listen") and not (data.get("tls_certificate") and v):
            raise ValueError("tls_listen needs tls_certificate and tls_key")
        return v


class PolicyConfig(Section):
    """Enforcement (policy/): the action queue and its actuators; see conf/ocs.toml [policy]."""

    enabled: bool = True
    queue: Literal["auto", "store", "redis"] = "auto"
    max_attempts: int = Field(8, ge=1, le=1000)
    backoff_initial: float = Field(1.0, gt=0, le=3600)
    backoff_max: float = Field(300.0, gt=0, le=86_400)
    per_nas_concurrency: int = Field(4, ge=1, le=10_000)
    max_in_flight: int = Field(64, ge=1, le=100_000)
    lease: float = Field(60.0, ge=1, le=86_400)
    poll_interval: float = Field(1.0, gt=0, le=60)
    confirm_timeout: float = Field(30.0, ge=0, le=3600)
    retention_hours: float = Field(168.0, gt=0)
    coa_timeout: float = Field(2.0, gt=0, le=60)
    coa_max_timeout: float = Field(16.0, gt=0, le=600)
    coa_retransmissions: int = Field(4, ge=0, le=20)
    coa_max_duration: float = Field(30.0, gt=0, le=600)
    coa_profiles: str = ""
    control_timeout: float = Field(5.0, gt=0, le=120)
    tc_interface: str = ""
    tc_rate_kbit: int = Field(10_000_000, ge=8, le=1_000_000_000)
    tc_cleanup: bool = True


class ApiConfig(Section):
    enabled: bool = True
    listen: Listen = "127.0.0.1:8080"
    bootstrap_token: Secret | None = None
    max_body_mb: int = Field(64, ge=1, le=4096)
    shutdown_timeout: float = Field(5.0, gt=0)


class MetricsConfig(Section):
    listen: Listen | None = None


class Config(BaseModel):
    """The whole configuration. `source` is the file it came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    daemon: DaemonConfig = DaemonConfig()
    log: LogConfig = LogConfig()
    store: StoreConfig = StoreConfig()
    redis: RedisConfig = RedisConfig()
    auth: AuthConfig = AuthConfig()
    charging: ChargingConfig = ChargingConfig()
    radius: RadiusConfig = RadiusConfig()
    diameter: DiameterConfig = DiameterConfig()
    policy: PolicyConfig = PolicyConfig()
    api: ApiConfig = ApiConfig()
    metrics: MetricsConfig = MetricsConfig()
    source: str | None = Field(None, exclude=True)


#: Seconds a node waits for another to send a RAR/ASR, beyond that node's own tries.
ASK_NODE_MARGIN = 2.0


def diameter_request_budget(diameter: DiameterConfig) -> float:
    """Seconds one RAR or ASR may take, its resends included, also when another
    node is asked to send it (the client is connected there)."""
    return diameter.request_timeout * diameter.request_attempts + ASK_NODE_MARGIN


def attempt_bound(policy: PolicyConfig, backend_budget: float = 0.0) -> float:
    """Seconds the policy worker gives one attempt of an action: the longest its
    back-end may take by its own settings (`backend_budget`: a Diameter RAR's), and
    five more."""
    return max(policy.coa_max_duration, policy.control_timeout, backend_budget) + 5


def handed_over_bound(policy: PolicyConfig, backend_budget: float = 0.0) -> float:
    """Seconds a worker waits for an attempt it handed to another node (the NAS's
    `control.policy_node`): that node's own bound, and the time to ask it."""
    return attempt_bound(policy, backend_budget) + ASK_NODE_MARGIN


def lease_warning(cfg: Config) -> str | None:
    """Why `[policy] lease` is too short, or None: a lease that can end while an
    attempt is still under way, here or handed to another node, lets a second
    worker take the action meanwhile (a short lease is still the operator's
    choice, for a fast takeover after a crash: the actions are safe to carry out
    twice)."""
    policy = cfg.policy
    if not policy.enabled:
        return None
    bound = handed_over_bound(policy, diameter_request_budget(cfg.diameter)
                              if cfg.diameter.enabled else 0.0)
    if policy.lease > bound:
        return None
    return (f"policy.lease ({policy.lease:g} s) is not longer than one enforcement attempt "
            f"may take ({bound:g} s, from coa_max_duration, control_timeout and [diameter] "
            f"request_timeout x request_attempts, and {ASK_NODE_MARGIN:g} s to hand it to "
            "another node): a second worker may take an action while the first is still "
            "carrying it out")


def load(path: str | None = None, *, overrides: dict[str, Any] | None = None) -> Config:
    """Read and validate `path` (TOML). Raises ConfigError naming file, key, reason."""
    path = path or DEFAULT_PATH
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("file not found", file=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=path) from None
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)
    return from_dict(data, source=path)


def from_dict(data: dict[str, Any], *, source: str | None = None) -> Config:
    if "source" in data:
        raise ConfigError("unknown key", file=source, key="source")
    try:
        return Config.model_validate({**data, "source": source})
    except PydanticValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]).replace("schema_", "schema")
        reason = err["msg"]
        if err["type"] == "extra_forbidden":
            reason = "unknown key"
        elif reason.startswith("Value error, "):
            reason = reason[len("Value error, "):]
        more = len(exc.errors()) - 1
        if more:
            reason += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise ConfigError(reason, file=source, key=key) from None


WEAK_SECRETS = {"testing123", "secret", "password", "radius", "changeme", "123456", "admin"}


def secret_weakness(secret: str) -> str | None:
    """Why a shared secret is weak, or None. RFC 2865 §3 asks for at least 16 octets."""
    if not secret:
        return "empty"
    if secret.lower() in WEAK_SECRETS:
        return "a well-known default"
    if len(secret) < 16:
        return f"only {len(secret)} characters (use at least 16, RFC 2865 §3)"
    if len(set(secret)) < 6:
        return "too few distinct characters"
    return None
