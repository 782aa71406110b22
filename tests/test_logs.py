"""Log lines as an operator reads them: formats, context fields, levels, no secrets."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import time

import pytest

from ocs import logs
from ocs.config import LogConfig


@pytest.fixture
def capture():
    """setup() writing into a buffer; returns (configure(**log), lines())."""
    buf = io.StringIO()

    def configure(**kw):
        logs.setup(LogConfig(**kw), stream=buf)

    def lines():
        return [line for line in buf.getvalue().splitlines() if line]
    yield configure, lines
    logs.teardown()


def test_text_lines_carry_level_logger_and_context(capture):
    configure, lines = capture
    configure(format="text", level="info")
    with logs.log_context(session="acct-77", nas="bras-1", account=42):
        logging.getLogger("ocs.charging").info("interim for %d octets", 1500)
    logging.getLogger("ocs.charging").info("outside")
    first, second = lines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} INFO    ocs\.charging: "
                        r"interim for 1500 octets session=acct-77 nas=bras-1 account=42", first)
    assert second.endswith("ocs.charging: outside")


def test_json_lines_are_objects_with_context_and_extras(capture):
    configure, lines = capture
    configure(format="json", level="debug")
    log = logging.getLogger("ocs.radius")
    with logs.log_context(nas="bras-1"):
        with logs.log_context(session="s-1", account=7):
            log.debug("access-request", extra={"code": 1, "attrs": {"User-Name": "alice"}})
        log.warning("unknown client")
    inner, outer = (json.loads(line) for line in lines())
    assert inner["level"] == "debug" and inner["logger"] == "ocs.radius"
    assert inner["msg"] == "access-request"
    assert (inner["nas"], inner["session"], inner["account"]) == ("bras-1", "s-1", 7)
    assert inner["code"] == 1 and inner["attrs"] == {"User-Name": "alice"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", inner["ts"])
    assert outer["nas"] == "bras-1" and "session" not in outer and outer["level"] == "warning"


async def test_concurrent_tasks_keep_their_own_context(capture):
    configure, lines = capture
    configure(format="json", level="info")
    log = logging.getLogger("ocs.diameter")

    async def session(name: str):
        with logs.log_context(session=name):
            for _ in range(3):
                log.info("ccr-u")
                await asyncio.sleep(0)
    await asyncio.gather(session("a"), session("b"))
    got = [json.loads(line)["session"] for line in lines()]
    assert sorted(got) == ["a", "a", "a", "b", "b", "b"]
    assert got[:2] == ["a", "b"]  # really interleaved


def test_fields_named_like_secrets_are_redacted(capture):
    configure, lines = capture
    configure(format="json", level="info")
    with logs.log_context(nas="bras-1", secret="s3cr3t-value"):
        logging.getLogger("ocs.api").info("token created", extra={
            "token": "abc-def-ghi", "password": "pw-123456",
            "peer": {"name": "pgw", "shared_secret": "xyz-987"}})
    (entry,) = [json.loads(line) for line in lines()]
    assert entry["secret"] == entry["token"] == entry["password"] == logs.REDACTED
    assert entry["peer"] == {"name": "pgw", "shared_secret": logs.REDACTED}
    assert entry["nas"] == "bras-1"
    raw = "\n".join(lines())
    for value in ("s3cr3t-value", "abc-def-ghi", "pw-123456", "xyz-987"):
        assert value not in raw


def test_registered_secrets_are_scrubbed_everywhere(capture):
    configure, lines = capture
    configure(format="text", level="debug")
    secret = "Zr7-unique-registered-secret"
    logs.register_secret(secret)
    # From any logger, in arguments, extras and tracebacks alike.
    logging.getLogger("aiohttp.server").info("dsn=postgresql://u:%s@db/ocs", secret)
    logging.getLogger("ocs.policy").info("coa", extra={"detail": f"key {secret}"})
    try:
        raise ValueError(f"bad secret {secret}")
    except ValueError:
        logging.getLogger("ocs.radius").exception("decode failed")
    out = "\n".join(lines())
    assert secret not in out
    assert out.count(logs.REDACTED) == 3
    assert "ValueError: bad secret [redacted]" in out


def test_reload_changes_format_and_levels_live(capture):
    configure, lines = capture
    configure(format="text", level="info", levels={"ocs.store": "debug"})
    logging.getLogger("ocs.store").debug("store debug 1")
    logging.getLogger("ocs.api").debug("api debug 1")
    configure(format="json", level="warning")  # ocs.store no longer listed: back to inherit
    logging.getLogger("ocs.store").debug("store debug 2")
    logging.getLogger("ocs.api").info("api info 2")
    logging.getLogger("ocs.api").warning("api warning 2")
    got = lines()
    assert len(got) == 2, got
    assert got[0].endswith("ocs.store: store debug 1")
    assert json.loads(got[1])["msg"] == "api warning 2"


def test_journald_stream_gets_syslog_priorities(tmp_path, monkeypatch):
    path = tmp_path / "journal"
    with open(path, "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        try:
            logs.setup(LogConfig(format="text", level="info"), stream=stream)
            logging.getLogger("ocs.daemon").info("ready")
            logging.getLogger("ocs.daemon").error("cannot start")
        finally:
            logs.teardown()
    assert path.read_text().splitlines() == ["<6>ocs.daemon: ready",
                                             "<3>ocs.daemon: cannot start"]


def test_bad_format_string_does_not_lose_the_line():
    # Driven through the filter directly: pytest's own capture handler would
    # raise on this record before ours sees it.
    record = logging.LogRecord("ocs.api", logging.INFO, __file__, 1, "%d requests",
                               ("many",), None)
    logs.ContextFilter().filter(record)
    assert logs.RedactFilter().filter(record)
    line = logs.TextFormatter().format(record)
    assert "log formatting failed" in line and "%d requests" in line


def test_throttled_warnings_come_once_per_interval_per_key_with_the_count_left_out(caplog):
    logger = logging.getLogger("ocs.test.throttled")
    throttled = logs.Throttled(logger, every=0.2, keys=3)
    with caplog.at_level(logging.WARNING, logger="ocs.test.throttled"):
        assert throttled.warning("a", "store down: %s", "one") is True
        assert throttled.warning("a", "store down: %s", "two") is False
        assert throttled.warning("a", "store down: %s", "three") is False
        assert throttled.warning("b", "secret wrong for %s", "nas1") is True  # its own key
        time.sleep(0.25)
        assert throttled.warning("a", "store down: %s", "four") is True
    assert [r.getMessage() for r in caplog.records] == [
        "store down: one", "secret wrong for nas1",
        "store down: four (2 more since the last warning)"]
    for n in range(5):  # keys beyond the bound (a scan from many addresses) start afresh
        throttled.warning(("scan", n), "from %s", n)
    assert len(throttled._last) <= 3
