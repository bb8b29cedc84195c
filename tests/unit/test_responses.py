"""Retry-After parsing and the capped, deadlined body reader: never a raise that could kill a poller."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.clock import ManualClock
from agent.errors import DiscoveryError
from agent.modelarts.responses import RETRY_AFTER_MAX_SECONDS, parse_retry_after, read_capped, read_error_body
from tests.unit.fakes import make_response

NOW = 1_700_000_000.0


@pytest.mark.parametrize(("raw", "expected"), [
    (None, None), ("", None), ("   ", None), ("soon", None), ("1.5", None), ("-5", None), ("+5", None),
    ("0x10", None), ("\uff15", None), ("7", 7.0), (" 12 ", 12.0), ("0", 0.0),
    ("4000", RETRY_AFTER_MAX_SECONDS), ("99999999999999999999999", RETRY_AFTER_MAX_SECONDS),
    (email.utils.formatdate(NOW + 30, usegmt=True), 30.0),
    (email.utils.formatdate(NOW - 30, usegmt=True), 0.0),
    (email.utils.formatdate(NOW + 30, usegmt=False).replace("+0000", "-0000"), 30.0),  # zone-less: GMT
    ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),
    ("Fri, 31 Dec 9999 23:59:59 GMT", RETRY_AFTER_MAX_SECONDS),
    ("Wed, 32 Foo 2015 99:99:99 GMT", None),
])
def test_retry_after(raw: str | None, expected: float | None) -> None:
    assert parse_retry_after(raw, NOW) == (pytest.approx(expected, abs=1.0) if expected is not None else None)


@given(st.text(max_size=64))
def test_retry_after_never_raises(raw: str) -> None:
    value = parse_retry_after(raw, NOW)
    assert value is None or 0.0 <= value <= RETRY_AFTER_MAX_SECONDS


def test_error_bodies_are_capped() -> None:
    clock = ManualClock()
    huge = make_response(503, b"x" * (1 << 20))
    assert read_error_body(huge, clock.monotonic() + 10, clock) == b""
    declared = make_response(503, b"{}", {"Content-Length": str(1 << 40)})
    assert read_error_body(declared, clock.monotonic() + 10, clock) == b""
    small = make_response(503, {"error_code": "E", "error_msg": "m"})
    assert b"error_code" in read_error_body(small, clock.monotonic() + 10, clock)


def test_a_body_past_its_deadline_is_refused() -> None:
    clock = ManualClock()
    resp = make_response(200, {"endpoints": []})
    with pytest.raises(DiscoveryError) as info:
        read_capped(resp, 1 << 20, clock.monotonic() - 1, clock)
    assert info.value.kind == "timeout"
