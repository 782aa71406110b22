"""RADIUS front-end (RFC 2865/2866/5176): sans-I/O codec, dictionaries,
duplicate cache, asyncio transport, and the table that maps charging
outcomes to replies. Imports from `ocs` only its model and errors."""
