"""RADIUS front-end (RFC 2865/2866/5176/5997): sans-I/O codec, dictionaries,
duplicate cache, asyncio transport, and the table that maps charging
outcomes to replies.

* `radius.wire` / `cext.radius_codec`: the decoder (pure-Python twin and
  compiled), `radius.codec`: packets, encoding, authenticators, hiding;
* `radius.dictionary`: FreeRADIUS-format dictionaries (conf/dictionaries);
* `radius.auth`, `radius.mschap`: PAP, CHAP, MS-CHAPv2 and MPPE keys;
* `radius.profiles`: per-vendor speed, quota and walled-garden attributes;
* `radius.accounting`: Accounting-Request -> charging request mapping;
* `radius.outcomes`: charging outcome -> reply table;
* `radius.handler`: one request through the charging core;
* `radius.server`: the UDP transport (NAS lookup, signatures, RFC 5080
  duplicates, bounded concurrency); `radius.component`: the daemon component.

Imports from `ocs` its model, errors, password checks and the charging
core's protocol-neutral types.
"""
