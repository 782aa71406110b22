"""Prometheus metrics of ocsd, with conventional names and no per-subscriber labels.

One `Metrics` object per process owns a registry; components get it from the
daemon and update the families they own. Label values are bounded sets
(NAS names, peers, commands, result codes, routes), never subscriber
identities or session ids.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry()
        self.build = Info("ocs_build", "Version and active implementation", registry=r)
        self.up = Gauge("ocs_up", "1 while the daemon serves requests", registry=r)
        self.config_reloads = Counter(
            "ocs_config_reloads_total", "SIGHUP reloads by result", ["result"], registry=r)
        # Protocols (filled by radius/ and diameter/).
        self.unpaid_units = Counter(
            "ocs_charging_unpaid_units_total", "Units sessions reported that nothing could "
            "pay (no bucket held them and the plan has no price for them), by kind: usage "
            "that went on before enforcement took effect", ["kind"], registry=r)
        self.counter_resets = Counter(
            "ocs_charging_counter_resets_total", "Reports whose cumulative counters were "
            "below what their session had already reported (a NAS that reset them "
            "mid-session), by protocol", ["proto"], registry=r)
        self.radius_requests = Counter(
            "ocs_radius_requests_total", "RADIUS requests by NAS and code",
            ["nas", "code"], registry=r)
        self.radius_dropped = Counter(
            "ocs_radius_dropped_total", "RADIUS packets dropped, by reason",
            ["reason"], registry=r)
        self.radius_replies = Counter(
            "ocs_radius_replies_total", "RADIUS replies sent, by NAS and code",
            ["nas", "code"], registry=r)
        self.radius_bad_secret = Counter(
            "ocs_radius_bad_secret_total", "RADIUS packets dropped because their "
            "Authenticator or Message-Authenticator does not verify with the NAS's stored "
            "secret (a shared secret that differs), by NAS", ["nas"], registry=r)
        self.radius_duplicates = Counter(
            "ocs_radius_duplicates_total", "RADIUS retransmissions answered from the "
            "duplicate cache (RFC 5080)", ["nas"], registry=r)
        self.radius_unmatched = Counter(
            "ocs_radius_unmatched_accounting_total", "Accounting reports for subscribers "
            "nobody knows, kept as unmatched accounting (GET /v1/accounting/unmatched)",
            ["nas"], registry=r)
        self.radius_nas_without_ma = Gauge(
            "ocs_radius_nas_without_message_authenticator", "1 for a NAS whose last "
            "Access-Request had no Message-Authenticator (BlastRADIUS exposure)", ["nas"],
            registry=r)
        self.radius_tls_connections = Gauge(
            "ocs_radius_tls_connections", "Open RADIUS/TLS (RFC 6614) connections, by NAS",
            ["nas"], registry=r)
        self.diameter_messages = Counter(
            "ocs_diameter_messages_total", "Diameter messages by peer, command and result",
            ["peer", "cmd", "result_code"], registry=r)
        self.diameter_connections = Gauge(
            "ocs_diameter_connections", "Diameter peer connections past the capabilities "
            "exchange", registry=r)
        self.diameter_errors = Counter(
            "ocs_diameter_errors_total", "Diameter problems by reason (framing, bad-request, "
            "peer-refused, watchdog, overload, duplicate, store-unavailable, ...)",
            ["reason"], registry=r)
        self.sessions_active = Gauge(
            "ocs_sessions_active", "Open charging sessions by protocol", ["proto"], registry=r)
        self.request_duration = Histogram(
            "ocs_request_duration_seconds", "Time to answer a request",
            ["proto", "op"], buckets=LATENCY_BUCKETS, registry=r)
        self.gc_pause = Histogram(
            "ocs_gc_pause_seconds", "Pauses of the cyclic garbage collector (ocs.collector)",
            ["generation"], buckets=LATENCY_BUCKETS, registry=r)
        # Store.
        self.store_batches = Histogram(
            "ocs_store_batch_size", "Balance operations per group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=r)
        self.store_commit_duration = Histogram(
            "ocs_store_commit_duration_seconds", "Duration of one group commit",
            buckets=LATENCY_BUCKETS, registry=r)
        self.store_errors = Counter(
            "ocs_store_errors_total", "Store operations that failed, by error",
            ["error"], registry=r)
        self.reservations_expired = Counter(
            "ocs_reservations_expired_units_total",
            "Units released by supervision because their session went silent", registry=r)
        # Policy (filled by policy/).
        self.policy_events = Counter(
            "ocs_policy_events_total", "Charging events seen by enforcement, by type and "
            "decision (act, unchanged, none, ignored)", ["type", "decision"], registry=r)
        self.policy_actions = Counter(
            "ocs_policy_actions_total", "Enforcement attempts by action, backend and result",
            ["action", "backend", "result"], registry=r)
        self.policy_attempt_duration = Histogram(
            "ocs_policy_attempt_duration_seconds", "Duration of one enforcement attempt",
            ["backend"], buckets=LATENCY_BUCKETS + (10.0, 30.0), registry=r)
        self.policy_queue = Gauge(
            "ocs_policy_queue_actions", "Enforcement actions waiting or running, by state",
            ["state"], registry=r)
        self.policy_dead_letters = Gauge(
            "ocs_policy_dead_letters", "Enforcement actions dead-lettered and not retried "
            "(alert when above 0)", registry=r)
        self.policy_dead_lettered = Counter(
            "ocs_policy_dead_lettered_total", "Enforcement actions given up after "
            "policy.max_attempts or a final refusal", ["action", "backend"], registry=r)
        self.policy_error_causes = Counter(
            "ocs_policy_error_causes_total", "RFC 5176 Error-Cause values received in "
            "CoA/Disconnect NAKs, by NAS and cause", ["nas", "cause"], registry=r)
        self.policy_confirmations = Counter(
            "ocs_policy_confirmations_total", "Disconnects confirmed by the session's Stop "
            "within policy.confirm_timeout, or not", ["result"], registry=r)
        # API.
        self.api_requests = Counter(
            "ocs_api_requests_total", "REST API requests by method, route and status",
            ["method", "route", "status"], registry=r)
        self.api_auth_failures = Counter(
            "ocs_api_auth_failures_total", "REST API requests refused for authentication",
            ["reason"], registry=r)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.store_batches.observe(size)
        self.store_commit_duration.observe(seconds)
