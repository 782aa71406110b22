-- Every Access-Request (and every balance batch that reads an account afresh)
-- reads the account's buckets in paying order: main last, then by priority,
-- then oldest first. An index in that order serves the lookup and the order at
-- once, where the index on account_id alone left a sort to do per read. It
-- starts with account_id, so it serves every lookup the old index did.
CREATE INDEX buckets_paying_order ON buckets (account_id, main, priority, id);
DROP INDEX buckets_account;
