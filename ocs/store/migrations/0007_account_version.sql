-- Bumped by every transaction that changes an account's balance state (its
-- buckets, its sessions' reservations and charges, its terms): a node trusts
-- the balance state it cached for an account only while the version is the
-- one it committed last (ocs/store/cache.py).
ALTER TABLE accounts ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
