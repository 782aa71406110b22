-- Initial schema. Shared by SQLite and PostgreSQL: {ID} becomes each backend's
-- auto-increment primary key. Money columns are micro-units, instants are
-- microseconds since the epoch (UTC), JSON columns are text.

CREATE TABLE accounts (
    id                    {ID},
    name                  TEXT NOT NULL UNIQUE,
    currency              TEXT NOT NULL,
    billing               TEXT NOT NULL CHECK (billing IN ('prepaid', 'postpaid')),
    credit_limit          BIGINT NOT NULL DEFAULT 0 CHECK (credit_limit >= 0),
    status                TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'closed')),
    parent_id             BIGINT REFERENCES accounts (id),
    language              TEXT NOT NULL DEFAULT 'en',
    tax_profile           TEXT,
    low_balance_threshold BIGINT,
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL
);

CREATE TABLE plans (
    id            {ID},
    name          TEXT NOT NULL UNIQUE,
    currency      TEXT NOT NULL,
    recurring_fee BIGINT NOT NULL DEFAULT 0 CHECK (recurring_fee >= 0),
    period        TEXT NOT NULL DEFAULT 'month' CHECK (period IN ('day', 'week', 'month')),
    allowances    TEXT NOT NULL DEFAULT '[]',
    tariff        TEXT,
    speed_profile TEXT,
    fair_usage    TEXT,
    description   TEXT NOT NULL DEFAULT '',
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE subscribers (
    id            {ID},
    account_id    BIGINT NOT NULL REFERENCES accounts (id),
    plan_id       BIGINT REFERENCES plans (id),
    username      TEXT UNIQUE,
    msisdn        TEXT UNIQUE,
    imsi          TEXT UNIQUE,
    sip_user      TEXT UNIQUE,
    password_hash TEXT,
    nt_hash       TEXT,
    cleartext     TEXT,
    framed_ip     TEXT,
    max_sessions  INTEGER NOT NULL DEFAULT 1,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX subscribers_account ON subscribers (account_id);
CREATE INDEX subscribers_framed_ip ON subscribers (framed_ip);

CREATE TABLE buckets (
    id         {ID},
    account_id BIGINT NOT NULL REFERENCES accounts (id),
    kind       TEXT NOT NULL CHECK (kind IN ('money', 'octets', 'seconds', 'events')),
    service    TEXT,
    balance    BIGINT NOT NULL DEFAULT 0,
    reserved   BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    priority   INTEGER NOT NULL DEFAULT 10,
    valid_from BIGINT,
    valid_to   BIGINT,
    main       SMALLINT NOT NULL DEFAULT 0,
    name       TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL
);
CREATE INDEX buckets_account ON buckets (account_id);
CREATE UNIQUE INDEX buckets_one_main ON buckets (account_id) WHERE main = 1;

-- Units held for one service of one session. holds: JSON [[bucket_id, amount], ...].
CREATE TABLE reservations (
    session    TEXT NOT NULL,
    service    TEXT NOT NULL DEFAULT '',
    account_id BIGINT NOT NULL REFERENCES accounts (id),
    kind       TEXT NOT NULL,
    units      BIGINT NOT NULL,
    holds      TEXT NOT NULL,
    seq        BIGINT NOT NULL DEFAULT 0,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (session, service)
);
CREATE INDEX reservations_expiry ON reservations (expires_at);
CREATE INDEX reservations_account ON reservations (account_id);

-- Immutable: rows are only ever inserted. balance = sum(amount) per bucket.
CREATE TABLE ledger (
    id            {ID},
    account_id    BIGINT NOT NULL REFERENCES accounts (id),
    bucket_id     BIGINT NOT NULL REFERENCES buckets (id),
    kind          TEXT NOT NULL,
    amount        BIGINT NOT NULL,
    balance_after BIGINT NOT NULL,
    entry_type    TEXT NOT NULL CHECK (entry_type IN ('debit', 'credit', 'adjust', 'expire')),
    session       TEXT,
    op_key        TEXT,
    reason        TEXT,
    actor         TEXT,
    created_at    BIGINT NOT NULL
);
CREATE INDEX ledger_account ON ledger (account_id, id);
CREATE INDEX ledger_bucket ON ledger (bucket_id);
CREATE INDEX ledger_session ON ledger (session);

-- Idempotency: the first result of every keyed balance operation.
CREATE TABLE operations (
    op_key     TEXT PRIMARY KEY,
    account_id BIGINT NOT NULL,
    op_type    TEXT NOT NULL,
    result     TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX operations_created ON operations (created_at);

CREATE TABLE sessions (
    id             TEXT PRIMARY KEY,
    account_id     BIGINT NOT NULL REFERENCES accounts (id),
    subscriber_id  BIGINT NOT NULL REFERENCES subscribers (id),
    proto          TEXT NOT NULL,
    nas            TEXT,
    nas_session_id TEXT,
    framed_ip      TEXT,
    status         TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'closed')),
    last_seq       BIGINT NOT NULL DEFAULT 0,
    started_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    ended_at       BIGINT,
    attrs          TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX sessions_active ON sessions (status, account_id);
CREATE INDEX sessions_subscriber ON sessions (subscriber_id, status);
CREATE INDEX sessions_framed_ip ON sessions (framed_ip);

CREATE TABLE cdrs (
    id            {ID},
    session       TEXT,
    account_id    BIGINT NOT NULL REFERENCES accounts (id),
    subscriber_id BIGINT,
    service       TEXT NOT NULL DEFAULT '',
    kind          TEXT NOT NULL,
    started_at    BIGINT NOT NULL,
    ended_at      BIGINT NOT NULL,
    units         BIGINT NOT NULL,
    cost          BIGINT NOT NULL,
    currency      TEXT NOT NULL,
    details       TEXT NOT NULL DEFAULT '{}',
    created_at    BIGINT NOT NULL
);
CREATE INDEX cdrs_account ON cdrs (account_id, id);
CREATE INDEX cdrs_session ON cdrs (session);

CREATE TABLE nas (
    id                            {ID},
    name                          TEXT NOT NULL UNIQUE,
    kind                          TEXT NOT NULL DEFAULT 'nas' CHECK (kind IN ('nas', 'diameter', 'softswitch')),
    address                       TEXT NOT NULL UNIQUE,
    secret                        TEXT NOT NULL DEFAULT '',
    vendor                        TEXT NOT NULL DEFAULT 'generic',
    coa_port                      INTEGER NOT NULL DEFAULT 3799,
    require_message_authenticator TEXT NOT NULL DEFAULT 'yes' CHECK (require_message_authenticator IN ('yes', 'no', 'auto')),
    control                       TEXT NOT NULL DEFAULT '{}',
    created_at                    BIGINT NOT NULL,
    updated_at                    BIGINT NOT NULL
);

CREATE TABLE audit (
    id      {ID},
    at      BIGINT NOT NULL,
    actor   TEXT NOT NULL,
    role    TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT,
    request TEXT,
    status  INTEGER NOT NULL,
    remote  TEXT
);
CREATE INDEX audit_at ON audit (at);

CREATE TABLE api_tokens (
    id         {ID},
    name       TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL UNIQUE,
    role       TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'read-only')),
    created_at BIGINT NOT NULL
);
