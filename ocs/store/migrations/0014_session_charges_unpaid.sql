-- Units a session reported that nothing could pay: no bucket held them and the
-- plan has no price for them (a prepaid allowance used up before the NAS was
-- disconnected). They stay in `units`, and are counted here, so the session's
-- CDR can say how much of its usage went unbilled.
ALTER TABLE session_charges ADD COLUMN unpaid BIGINT NOT NULL DEFAULT 0;
