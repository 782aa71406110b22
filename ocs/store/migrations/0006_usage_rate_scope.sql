-- Whether a usage rate's tiers count the session's usage ('session') or the
-- subscriber's usage of that service in the billing period ('period').
ALTER TABLE tariff_usage_rates ADD COLUMN tier_scope TEXT NOT NULL DEFAULT 'session';
