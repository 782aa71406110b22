-- What enforcement a plan asks for on each charging event, e.g.
-- {"on_exhausted": "throttle", "on_fair_usage": "throttle", "on_suspended": "disconnect",
--  "on_restored": "restore", "throttle_profile": {"down_kbps": 256, "up_kbps": 128},
--  "redirect_url": "http://topup.example/", "fallback_disconnect": true}
ALTER TABLE plans ADD COLUMN policy TEXT;
