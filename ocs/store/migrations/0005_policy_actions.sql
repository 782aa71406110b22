-- Enforcement (policy/). Shared by SQLite and PostgreSQL: {ID} becomes each
-- backend's auto-increment primary key; instants are microseconds since the
-- epoch, JSON columns are text.

-- What enforcement last decided for each session: the state the network
-- element should be in. `generation` grows with every decision, so an action
-- of an older decision is known to be superseded; `event_at` is the instant
-- of the charging event behind it, so a late redelivery of an older event
-- cannot undo a newer decision.
CREATE TABLE policy_sessions (
    session    TEXT PRIMARY KEY,
    account_id BIGINT NOT NULL,
    action     TEXT NOT NULL,
    reason     TEXT NOT NULL,
    generation BIGINT NOT NULL,
    event_at   BIGINT NOT NULL,
    params     TEXT NOT NULL DEFAULT '{}',
    updated_at BIGINT NOT NULL
);
CREATE INDEX policy_sessions_account ON policy_sessions (account_id);

-- The durable action queue of the embedded mode ([policy] queue = "store").
-- One row per (session, action, generation, backend): inserting it again is a
-- no-op, which makes enqueueing idempotent. A worker takes a row by setting
-- it running with a lease; a lease that runs out (the worker died) puts it
-- back. Finished rows stay for policy.retention_hours.
CREATE TABLE policy_actions (
    id          {ID},
    action_key  TEXT NOT NULL UNIQUE,
    session     TEXT NOT NULL,
    account_id  BIGINT NOT NULL,
    nas         TEXT,
    backend     TEXT NOT NULL,
    action      TEXT NOT NULL,
    generation  BIGINT NOT NULL,
    reason      TEXT NOT NULL,
    params      TEXT NOT NULL DEFAULT '{}',
    status      TEXT NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'running', 'done', 'dead', 'superseded', 'replaced')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_at     BIGINT NOT NULL,
    lease_until BIGINT,
    owner       TEXT,
    result      TEXT,
    last_error  TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX policy_actions_due ON policy_actions (status, next_at);
CREATE INDEX policy_actions_session ON policy_actions (session, status);
