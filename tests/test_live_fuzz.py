"""Randomised but well-formed requests against a running ocsd: what a sloppy NAS,
softswitch or PGW may send (odd attribute lengths, counters near their limits,
unknown subscribers, calls mixed with data, repeated request numbers with other
content, several rating groups). Each request must get the protocol's answer
or a counted drop; none may end in an internal error.

The codec fuzz tests (test_radius_codec, test_diameter_fuzz) mutate bytes; these
exercise the layers above it: the handlers, the charging core and the store.
A fixed seed keeps a failure reproducible; the seed is in the failure message."""

from __future__ import annotations

import asyncio
import os
import random
import re
import socket

from diameter import tables as T
from diameter.client import EVENT, INITIAL, TERMINATION, UPDATE, ims_information, mscc, \
    sms_information
from diameter.codec import value
from diameter.gy import CONTEXT_SMS, CONTEXT_VOICE
from radius.auth import MS_CHAP2_RESPONSE, MS_CHAP_CHALLENGE, MS_CHAP_RESPONSE
from tests.radius_harness import A, Code, RadiusOcsd, SECRET, acct_packet, codec
from tests.test_diameter_daemon import client, scenario_daemon
from tests.test_radius_daemon import seed as seed_radius

SEED = 20261126
REQUESTS = 600


def _no_errors(log: str) -> None:
    errors = [line for line in log.splitlines() if " ERROR " in line or "Traceback" in line]
    assert not errors, f"seed {SEED}:\n" + "\n".join(errors[:20])


# ---------------------------------------------------------------------- RADIUS
_INT = [A.ACCT_SESSION_TIME, A.ACCT_INPUT_OCTETS, A.ACCT_OUTPUT_OCTETS, A.EVENT_TIMESTAMP,
        A.ACCT_DELAY_TIME, A.SERVICE_TYPE, A.NAS_PORT, A.ACCT_TERMINATE_CAUSE,
        A.FRAMED_IP_ADDRESS, A.NAS_IP_ADDRESS, A.ACCT_INPUT_GIGAWORDS, A.ACCT_OUTPUT_GIGAWORDS]
_TEXT = [A.USER_NAME, A.CALLED_STATION_ID, A.CALLING_STATION_ID, A.CLASS, A.NAS_IDENTIFIER,
         A.ACCT_MULTI_SESSION_ID, A.FRAMED_IPV6_PREFIX, A.STATE, A.NAS_PORT_ID]
_VSA = [codec.vsa(27880, t) for t in (4, 5, 13, 15)] + \
    [codec.vsa(22736, t) for t in (102, 103, 114, 117)] + \
    [codec.vsa(9, 1), codec.vsa(9, 24), codec.vsa(14988, 8), codec.vsa(2011, 1),
     codec.vsa(70_000, 1), 227]
_USERS = [b"acct1", b"acct2", b"timed1", b"tiny1", b"suspended1", b"garden1", b"empty1",
          b"single", b"fs", b"sip-fs", b"nobody", b"", b"\xff\xfe", b"x" * 253]


def _integer(rnd: random.Random, attr: int) -> bytes:
    if rnd.random() < 0.15:  # a length no integer has
        return os.urandom(rnd.choice([0, 1, 3, 5, 8]))
    if attr in (A.ACCT_INPUT_GIGAWORDS, A.ACCT_OUTPUT_GIGAWORDS) and rnd.random() < 0.8:
        return codec.u32(rnd.randrange(0, 4))
    return codec.u32(rnd.choice([0, 1, 2**31 - 1, 2**32 - 1, rnd.randrange(2**32)]))


def _text(rnd: random.Random) -> bytes:
    return rnd.choice([b"", b"+41791234567", b"sip:+4420@host;user=phone", b"\xff\x80\xfe",
                       b"0" * 200, os.urandom(rnd.randrange(60))])


def _radius_accounting(rnd: random.Random, i: int) -> bytes:
    attrs = [(A.USER_NAME, rnd.choice(_USERS)), (A.ACCT_SESSION_ID, b"z%d" % rnd.randrange(40)),
             (A.ACCT_STATUS_TYPE, codec.u32(rnd.choice([1, 2, 3, 3, 3, 7, 8, 15, 0xFFFFFFFF])))]
    for _ in range(rnd.randrange(10)):
        r = rnd.random()
        if r < 0.5:
            attr = rnd.choice(_INT)
            attrs.append((attr, _integer(rnd, attr)))
        else:
            attrs.append((rnd.choice(_TEXT if r < 0.8 else _VSA), _text(rnd)))
    rnd.shuffle(attrs)
    return acct_packet(attrs, ident=i % 256)


def _radius_access(rnd: random.Random, i: int) -> bytes:
    secret, auth = SECRET.encode(), os.urandom(16)
    attrs = [(A.USER_NAME, rnd.choice(_USERS))]
    r = rnd.random()
    if r < 0.4:
        password = rnd.choice([b"pw-acct1", b"", b"x" * 128, os.urandom(20)])
        attrs.append((A.USER_PASSWORD, codec.hide_password(password, secret, auth)
                      if rnd.random() < 0.8 else os.urandom(rnd.choice([1, 15, 17, 144]))))
    elif r < 0.65:
        attrs.append((A.CHAP_PASSWORD, os.urandom(rnd.choice([1, 16, 17, 18, 40]))))
        if rnd.random() < 0.5:
            attrs.append((A.CHAP_CHALLENGE, os.urandom(rnd.choice([1, 16, 64]))))
    elif r < 0.9:
        attrs.append((MS_CHAP_CHALLENGE, os.urandom(rnd.choice([1, 8, 16, 17]))))
        response = os.urandom(rnd.choice([2, 49, 50, 51]))  # v2 or v1, any flags
        attrs.append((rnd.choice([MS_CHAP2_RESPONSE, MS_CHAP_RESPONSE]), response))
    for _ in range(rnd.randrange(4)):
        attrs.append((rnd.choice(_TEXT + _VSA), _text(rnd)))
    rnd.shuffle(attrs)
    attrs = [(k, v[:247] if k > 255 else v) for k, v in attrs]
    return codec.encode_request(Code.ACCESS_REQUEST, i % 256, attrs, secret, authenticator=auth,
                                message_authenticator=True)


def _drops(d: RadiusOcsd) -> dict[str, float]:
    return {m[0]: float(m[1]) for m in re.findall(
        r'^ocs_radius_dropped_total\{reason="(\w+)"\} (\S+)$', d.metrics_text(), re.M)}


def _answered(d: RadiusOcsd, data: bytes, port: str, dropped: float) -> bool:
    """Whether the daemon answered. A drop is counted at once, so an answer not here
    within a second and not counted as dropped is waited for longer: a slow disk
    may stall a commit that long (seen once in some 10,000 requests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.sendto(data, ("127.0.0.1", d.auth_port if port == "auth" else d.acct_port))
        for wait in (1.0, 10.0):
            s.settimeout(wait)
            try:
                s.recv(5000)
                return True
            except socket.timeout:
                if sum(_drops(d).values()) > dropped:
                    return False
        return False


def test_random_well_formed_radius_requests_never_end_in_an_internal_error(tmp_path):
    d = RadiusOcsd(tmp_path)
    d.ids = d.seed(seed_radius)
    d.start()
    try:
        rnd = random.Random(SEED)
        silent = 0
        for i in range(REQUESTS):
            access = rnd.random() < 0.3
            data = (_radius_access if access else _radius_accounting)(rnd, i)
            if not _answered(d, data, "auth" if access else "acct", silent):
                silent += 1
        drops = _drops(d)
        # Unanswered means dropped for a reason a NAS can act on, never the server's fault.
        assert sum(drops.values()) == silent, (SEED, drops, silent)
        assert set(drops) <= {"invalid_attribute", "missing_attribute"}, (SEED, drops)
        assert silent < REQUESTS // 4, (SEED, drops)
        assert d.radclient("status", "Message-Authenticator = 0x00")[0] == "Accounting-Response"
    finally:
        d.stop()
    _no_errors(d.log())


# ---------------------------------------------------------------------- Diameter
def _units(rnd: random.Random) -> dict:
    big = 2**32 if rnd.random() < 0.5 else 2**40  # CC-Time is Unsigned32, the rest 64
    return {k: rnd.choice([0, 1, 60, 10**6, 2**31, 2**32 - 1, rnd.randrange(big)])
            for k in ("time", "total", "input", "output", "units") if rnd.random() < 0.3
            and (k != "time" or big == 2**32)}


def _ccr(c, rnd: random.Random):
    kind = rnd.choice([INITIAL, UPDATE, UPDATE, UPDATE, TERMINATION, EVENT])
    context = rnd.choice(["32251@3gpp.org", CONTEXT_VOICE, CONTEXT_SMS, "other@example"])
    msccs = [mscc(rnd.choice([None, 10, 20, 0, 2**32 - 1]),
                  service_id=rnd.choice([None, 1, 400]),
                  requested=rnd.choice([None, {}, _units(rnd)]),
                  used=[_units(rnd) for _ in range(rnd.randrange(3))],
                  reporting_reason=rnd.choice([None, 0, 2, 3, 99]))
             for _ in range(rnd.randrange(4))]
    extra = []
    if context == CONTEXT_VOICE and rnd.random() < 0.8:
        extra.append(ims_information(rnd.choice(["tel:+41791234567", "sip:+4420@x;user=phone",
                                                 "sip:", "x"]),
                                     rnd.choice([None, "sip:alice@ims.example"])))
    if context == CONTEXT_SMS and rnd.random() < 0.8:
        extra.append(sms_information(rnd.choice(["+41791234567", "abc", "0"])))
    return c.ccr(f"z{rnd.randrange(30)}", kind, rnd.randrange(6), context=context,
                 msisdn=rnd.choice(["41790000001", "41790000002", "41790000003", "41790000004",
                                    "41790000006", "41799999999"]),
                 msccs=msccs,
                 requested_action=rnd.choice([0, 1, 2, 3, 7]) if kind == EVENT else None,
                 extra=extra)


async def test_random_well_formed_ccrs_never_end_in_an_internal_error(tmp_path):
    d = await asyncio.to_thread(scenario_daemon, tmp_path)
    await asyncio.to_thread(d.start)
    try:
        c = await client(d)
        rnd = random.Random(SEED)
        codes: dict[int, int] = {}
        try:
            for _ in range(REQUESTS):
                answer = await asyncio.wait_for(c.request(_ccr(c, rnd)), 5)
                code = value(answer.avps, T.RESULT_CODE)
                codes[code] = codes.get(code, 0) + 1
        finally:
            await c.close()
        assert codes.get(T.DIAMETER_UNABLE_TO_COMPLY, 0) == 0, (SEED, codes)
        assert codes.get(T.DIAMETER_SUCCESS, 0) > 0 and sum(codes.values()) > REQUESTS // 2
    finally:
        await asyncio.to_thread(d.stop)
    _no_errors(d.log())
