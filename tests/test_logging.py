"""Logging: module loggers under "geviso", a NullHandler, masked content at DEBUG, link
events at INFO and nothing per message above DEBUG."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import gevent
import pytest
from iso8583.specs import default as spec

import geviso

PAN = "4111111111111111"
TRACK2 = "4111111111111111=25121011234567890"
TRACK1 = "B4111111111111111^CARDHOLDER/TEST^2512101000000000"
PIN = "9A3F5C7E1B2D4F60"
PACKAGE = Path(geviso.__file__).parent


def card_request() -> dict:
    return {"t": "0200", "2": PAN, "3": "000000", "4": "000000001000", "35": TRACK2, "45": TRACK1, "52": PIN}


def test_package_logger_has_a_null_handler():
    handlers = logging.getLogger("geviso").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


def test_every_module_logs_through_its_own_module_logger():
    root_calls = re.compile(r"\blogging\.(debug|info|warning|error|exception|critical|log)\(")
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert not root_calls.search(text), f"{path.name} logs through the root logger"
        for match in re.finditer(r"^\w+ = logging\.getLogger\(([^)]*)\)", text, re.M):
            assert match.group(1) == "__name__", f"{path.name}: getLogger({match.group(1)})"


def _messages(caplog) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


def test_debug_logs_show_messages_masked(echo_host, caplog):
    caplog.set_level(logging.DEBUG, logger="geviso")
    with geviso.Connection(echo_host.address, spec, send_timeout=5) as conn:
        response = conn.send(card_request())
    assert response["2"] == PAN
    text = _messages(caplog)
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG and r.name.startswith("geviso")]
    assert debug, "no DEBUG record of the traffic"
    assert "411111******1111" in text  # the masked PAN is there...
    assert PAN not in text  # ...the PAN, track data and PIN are not
    assert "CARDHOLDER" not in text and "=2512" not in text
    assert PIN not in text.upper()


def test_each_send_is_logged_at_debug_as_soon_as_the_level_allows_it(echo_host, caplog):
    """Levels changed while a link runs take effect at the next send, both ways."""

    def sends_logged() -> int:
        return sum(r.name == "geviso.connection" and r.getMessage().startswith("send ") for r in caplog.records)

    caplog.set_level(logging.INFO, logger="geviso")
    with geviso.Connection(echo_host.address, spec, send_timeout=5) as conn:
        conn.send({"t": "0800", "11": "000001", "70": "301"})
        assert sends_logged() == 0
        caplog.set_level(logging.DEBUG, logger="geviso")
        conn.send({"t": "0800", "11": "000002", "70": "301"})
        assert sends_logged() == 1
        caplog.set_level(logging.INFO, logger="geviso")
        conn.send({"t": "0800", "11": "000003", "70": "301"})
        assert sends_logged() == 1
        logging.getLogger("geviso.connection").disabled = True
        caplog.set_level(logging.DEBUG, logger="geviso")
        try:
            conn.send({"t": "0800", "11": "000004", "70": "301"})
        finally:
            logging.getLogger("geviso.connection").disabled = False
        assert sends_logged() == 1
        conn.send({"t": "0800", "11": "000005", "70": "301"})
        assert sends_logged() == 2


def test_link_events_are_logged_at_info(echo_host, caplog):
    caplog.set_level(logging.INFO, logger="geviso")
    conn = geviso.Connection(echo_host.address, spec, send_timeout=5).connect()
    conn.send({"t": "0800", "70": "301"})
    conn.close()
    client = [r for r in caplog.records if r.name == "geviso.connection" and r.levelno == logging.INFO]
    assert any("open" in r.getMessage() for r in client)
    assert any("clos" in r.getMessage() for r in client)


def test_no_record_per_message_above_debug(echo_host, caplog):
    with geviso.Connection(echo_host.address, spec, send_timeout=5) as conn:
        conn.send({"t": "0800", "70": "301"})
        caplog.clear()
        caplog.set_level(logging.DEBUG, logger="geviso")
        jobs = [gevent.spawn(conn.send, card_request()) for _ in range(200)]
        gevent.joinall(jobs, raise_error=True)
        above_debug = [r for r in caplog.records if r.levelno > logging.DEBUG]
        per_message = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert above_debug == []
    assert len(per_message) >= 200  # the traffic is there at DEBUG (client and host side)


@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING])
def test_nothing_is_logged_per_message_at_production_levels(echo_host, caplog, level):
    caplog.set_level(level, logger="geviso")
    with geviso.Connection(echo_host.address, spec, send_timeout=5) as conn:
        before = len(caplog.records)
        for _ in range(50):
            conn.send({"t": "0800", "70": "301"})
        assert len(caplog.records) == before


def test_late_responses_are_counted_not_logged_above_debug(echo_host, caplog):
    def answer_late(conn, doc):
        gevent.sleep(0.2)
        conn.reply({k: v for k, v in doc.items() if k not in ("p", "1")} | {"t": "0810", "39": "00"})

    echo_host.answer = answer_late
    caplog.set_level(logging.DEBUG, logger="geviso")
    with geviso.Connection(echo_host.address, spec, send_timeout=5) as conn:
        jobs = [gevent.spawn(conn.send, {"t": "0800", "70": "301"}, timeout=0.05) for _ in range(20)]
        gevent.joinall(jobs)
        assert all(isinstance(job.exception, geviso.SendTimeout) for job in jobs)
        deadline = 5.0
        with gevent.Timeout(deadline):
            while conn.stats.late < 20:
                gevent.sleep(0.01)
    assert [r for r in caplog.records if r.levelno > logging.INFO] == []
    assert sum("late response" in r.getMessage() for r in caplog.records) == 20


def test_pool_and_mock_host_log_link_events_only(caplog):
    caplog.set_level(logging.INFO, logger="geviso")
    with geviso.MockHost(("127.0.0.1", 0), spec) as host:
        pool = geviso.Pool(lambda a: geviso.Connection(a, spec, send_timeout=5), [host.address, host.address])
        with pool.connect():
            opened = len(caplog.records)
            jobs = [gevent.spawn(pool.send, card_request()) for _ in range(200)]
            gevent.joinall(jobs, raise_error=True)
            assert len(caplog.records) == opened  # 200 messages, not one line at INFO
    names = {r.name for r in caplog.records}
    assert {"geviso.pool", "geviso.connection", "geviso.server"} <= names
    assert PAN not in _messages(caplog)
