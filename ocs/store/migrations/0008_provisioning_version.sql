-- One row, bumped by every change to accounts, subscribers or plans made
-- through the store (API, ocsctl, imports): nodes cache subscriber and account
-- lookups and drop them when they see the version move.
CREATE TABLE provisioning (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO provisioning (id, version) VALUES (1, 0);
