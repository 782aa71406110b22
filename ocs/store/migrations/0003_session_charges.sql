-- What each (session, service) has been charged so far, so cumulative usage
-- reports (RADIUS interims) charge only what is new and prices see the whole
-- session's usage. Closed rows are purged after the operation retention.
CREATE TABLE session_charges (
    session    TEXT NOT NULL,
    service    TEXT NOT NULL DEFAULT '',
    account_id BIGINT NOT NULL REFERENCES accounts (id),
    kind       TEXT NOT NULL,
    units      BIGINT NOT NULL DEFAULT 0,
    cost       BIGINT NOT NULL DEFAULT 0,
    seq        BIGINT NOT NULL DEFAULT 0,
    closed     SMALLINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (session, service)
);
CREATE INDEX session_charges_closed ON session_charges (closed, updated_at);

-- Usage counters (e.g. a subscriber's octets in the current fair-usage period),
-- advanced in the same transaction as the charge.
CREATE TABLE usage_counters (
    key        TEXT PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES accounts (id),
    units      BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL
);
CREATE INDEX usage_counters_account ON usage_counters (account_id);

-- Transactional outbox: charging events written in the same transaction as the
-- charge that caused them, relayed to the event stream (Redis or in-process)
-- and marked published. Event ids are deterministic, so consumers de-duplicate.
CREATE TABLE outbox (
    id           {ID},
    event_id     TEXT NOT NULL UNIQUE,
    account_id   BIGINT NOT NULL,
    type         TEXT NOT NULL,
    payload      TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    published_at BIGINT
);
CREATE INDEX outbox_unpublished ON outbox (published_at, id);

-- What the network does when a plan's balance cannot grant more:
-- {"action": "terminate" | "redirect" | "restrict", "redirect_url": ..., "filter_id": ...}
ALTER TABLE plans ADD COLUMN final_unit TEXT;
