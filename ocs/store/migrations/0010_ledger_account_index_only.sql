-- Every charge inserts a ledger row, and each secondary index of the ledger
-- costs that insert a write into a page of its own, at a random place in the
-- index: on SQLite a whole page appended to the write-ahead log per index and
-- per charge, on PostgreSQL an index tuple and its WAL. The ledger is read by
-- account (statements, balance checks, the API), which ledger_account serves;
-- a session's entries are found through the session's account (Store.ledger).
-- Buckets are never deleted, so the foreign key from ledger.bucket_id needs no
-- index to be checked.
DROP INDEX ledger_bucket;
DROP INDEX ledger_session;
