"""The outcome table: every charging outcome and failure, as it goes on the wire.

One place answers "what does the client see when ...". The charging core's
`ResultCode` (per service and per request) maps to a Result-Code; failures
of the machinery behind it map to protocol errors that make the client fail
over or retry (RFC 8506 section 5.5, Credit-Control-Failure-Handling), never
to an answer that grants or acknowledges something not durable.
"""

from __future__ import annotations

from types import MappingProxyType

from ocs.charging.types import ResultCode

from . import tables as T

#: Charging outcome -> Result-Code (per MSCC and at command level).
RESULT_CODES = MappingProxyType({
    ResultCode.SUCCESS: T.DIAMETER_SUCCESS,                                # 2001
    ResultCode.CREDIT_LIMIT_REACHED: T.DIAMETER_CREDIT_LIMIT_REACHED,      # 4012
    ResultCode.SERVICE_DENIED: T.DIAMETER_END_USER_SERVICE_DENIED,         # 4010 suspended/closed
    ResultCode.UNKNOWN_SUBSCRIBER: T.DIAMETER_USER_UNKNOWN,                # 5030
    ResultCode.RATING_FAILED: T.DIAMETER_RATING_FAILED,                    # 5031
    ResultCode.UNKNOWN_SESSION: T.DIAMETER_UNKNOWN_SESSION_ID,             # 5002
})

#: The store (or the shared cluster state) did not commit: nothing is promised.
#: A protocol error (E bit) so the client resends to an alternate server.
STORE_UNAVAILABLE = T.DIAMETER_UNABLE_TO_DELIVER                           # 3002
#: More requests in flight than `diameter.max_in_flight`: retry elsewhere.
OVERLOADED = T.DIAMETER_TOO_BUSY                                           # 3004
#: A failure of ours that is not the request's fault (logged with its trace).
INTERNAL = T.DIAMETER_UNABLE_TO_COMPLY                                     # 5012
#: A request of an application we do not serve / a command it lacks.
APPLICATION_UNSUPPORTED = T.DIAMETER_APPLICATION_UNSUPPORTED               # 3007
COMMAND_UNSUPPORTED = T.DIAMETER_COMMAND_UNSUPPORTED                       # 3001

#: Plan final-unit action -> Final-Unit-Action (RFC 8506 section 8.35).
FINAL_UNIT_ACTIONS = MappingProxyType({"terminate": 0, "redirect": 1, "restrict": 2})


def result_code(outcome: ResultCode) -> int:
    return RESULT_CODES[outcome]
