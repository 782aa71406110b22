"""The outcome table: what each charging outcome becomes on the RADIUS wire.

The third layer of the front-end (codec, transport, this table), the analogue
of FreeRADIUS's process state table: the handler decides nothing about the
wire by itself, it looks the outcome up here.

Access-Request (RFC 2865 §4.2-4.4). Reply-Message tells the subscriber's
equipment why; the walled garden applies where the plan's final-unit action
is "redirect" or "restrict" (the same rule Diameter applies with the
Final-Unit-Indication, RFC 8506 §5.6).

======================  =====================================================
outcome                 reply
======================  =====================================================
success                 Access-Accept with the plan's attributes
unknown subscriber      Access-Reject "Unknown subscriber"
wrong credentials       Access-Reject "Wrong password" (also a bad secret)
EAP (802.1X, WPA-Ent.)  Access-Reject "EAP is not supported ..." with an
                        EAP-Failure (RFC 3579, RFC 3748 §4.2)
suspended / closed      Access-Reject "Account suspended", or walled garden
no balance              Access-Reject "No balance left", or walled garden
rating failed           Access-Reject "Service not available on your plan"
simultaneous use        Access-Reject "Too many sessions (limit N)"
store unavailable       no answer: the NAS retries or fails over
======================  =====================================================

Accounting-Request (RFC 2866 §4.1): every outcome of the charge, once it is
durable, is an Accounting-Response (accounting cannot be refused; the
consequence of no balance is the event policy/ acts on); a store that is
unavailable gets no answer, so the NAS keeps the record and retries.
"""

from __future__ import annotations

from ocs.charging import ResultCode

from .codec import Code

#: ResultCode of an authorisation -> (reply code, Reply-Message, walled garden possible)
ACCESS: dict[ResultCode, tuple[Code, str, bool]] = {
    ResultCode.SUCCESS: (Code.ACCESS_ACCEPT, "", False),
    ResultCode.UNKNOWN_SUBSCRIBER: (Code.ACCESS_REJECT, "Unknown subscriber", False),
    ResultCode.SERVICE_DENIED: (Code.ACCESS_REJECT, "Account suspended", True),
    ResultCode.CREDIT_LIMIT_REACHED: (Code.ACCESS_REJECT, "No balance left", True),
    ResultCode.RATING_FAILED: (Code.ACCESS_REJECT, "Service not available on your plan", False),
    ResultCode.UNKNOWN_SESSION: (Code.ACCESS_REJECT, "Unknown session", False),
}
WRONG_CREDENTIALS = "Wrong password"
EAP_UNSUPPORTED = "EAP is not supported; use PAP, CHAP or MS-CHAPv2"
NO_USER_NAME = "No User-Name"
TOO_MANY_SESSIONS = "Too many sessions (limit {limit})"
#: Final-unit actions that turn a refusal into a walled-garden accept.
WALLED_GARDEN_ACTIONS = frozenset({"redirect", "restrict"})


def access(result: ResultCode) -> tuple[Code, str, bool]:
    return ACCESS.get(result, (Code.ACCESS_REJECT, "Refused", False))
