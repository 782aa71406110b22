-- The Origin-State-Id each Diameter client sent in its last CER (RFC 6733
-- section 8.16). A client that connects again with another value restarted and
-- lost its sessions. Kept in the store, not in a node's memory, so a restart is
-- seen by whichever node the client reconnects to, also after ocsd restarted.
CREATE TABLE diameter_peer_states (
    origin_host     TEXT PRIMARY KEY,
    origin_state_id BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
