"""Diameter front-end (RFC 6733 base, RFC 8506 credit control, 3GPP Gy/Ro):
codec, dictionary, framing, peer state machine, transport and the Gy/Ro
application. Imports from `ocs` only its model and errors."""
