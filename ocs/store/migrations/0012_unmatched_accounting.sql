-- Accounting a NAS reported for a subscriber nobody knows (not provisioned yet,
-- a typo in a username, a roaming partner's user). RADIUS acknowledges a
-- report only once it is stored (RFC 2866), and the NAS then forgets it, so
-- such a report is kept here for the operator to reconcile: one row per
-- session with its latest cumulative usage (`units`: JSON service -> units).
CREATE TABLE unmatched_accounting (
    session        TEXT PRIMARY KEY,
    proto          TEXT NOT NULL,
    nas            TEXT,
    nas_session_id TEXT,
    identity       TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('active', 'closed')),
    units          TEXT NOT NULL,
    attrs          TEXT NOT NULL DEFAULT '{}',
    seq            BIGINT NOT NULL,
    reports        INTEGER NOT NULL DEFAULT 1,
    first_at       BIGINT NOT NULL,
    last_at        BIGINT NOT NULL
);
CREATE INDEX unmatched_accounting_last ON unmatched_accounting (last_at);
