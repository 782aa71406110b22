"""Diameter front-end: RFC 6733 base protocol, RFC 8506 credit control, 3GPP Gy/Ro.

Layers, each usable on its own:

* `diameter.tables` (generated from `diameter/tools/dictionary.txt` by
  `diameter/tools/gen_dictionary.py`) and `diameter.dictionary`: AVP codes,
  types, flags, enumerations, commands, result codes;
* `diameter.codec`: bytes <-> frozen `Message`/`Avp` dataclasses, typed
  errors carrying the Result-Code and Failed-AVP the RFC prescribes;
* `diameter.framing`: a byte stream -> whole messages;
* `diameter.base` and `diameter.peer`: CER/CEA, DWR/DWA, DPR/DPA and the
  sans-I/O peer state machine with the RFC 3539 watchdog;
* `diameter.gy` and `diameter.outcomes`: CCR -> `ocs.charging.ChargeRequest`,
  `ChargeDecision` -> CCA, through one table of outcomes -> Result-Codes;
* `diameter.transport`, `diameter.server`, `diameter.component`: the asyncio
  connection, the server behind the listeners (dispatch, admission, overload,
  duplicates, RAR/ASR) and the daemon component;
* `diameter.client`: a client on the same codec for tests and benchmarks.

Imports from `ocs` only its model, errors and the protocol-neutral charging
request/decision types.
"""
