-- Interims rewrite an open session's charging row every time. With
-- updated_at in an index, each rewrite also rewrote an index entry (and
-- PostgreSQL could never update those rows in place, HOT). The purge only
-- looks for closed rows, so only closed rows are indexed, by a column an
-- open row's update leaves alone.
DROP INDEX session_charges_closed;
CREATE INDEX session_charges_closed ON session_charges (closed) WHERE closed = 1;
