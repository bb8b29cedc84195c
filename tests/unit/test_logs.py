"""The log formatters never print a registered secret, whatever characters it holds; bounded registry."""

from __future__ import annotations

import json
import logging
import sys
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agent import logs
from agent.logs import JsonFormatter, TextFormatter, redact, register_secret, secret_count


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(logs, "_SECRETS", OrderedDict())
    monkeypatch.setattr(logs, "_SLOTS", OrderedDict())
    yield


def make_record(secret: str, prefix: str, suffix: str, with_exc: bool) -> logging.LogRecord:
    exc_info: Any = None
    if with_exc:
        try:
            raise ValueError(f"bad value {prefix}{secret}{suffix}")
        except ValueError:
            exc_info = sys.exc_info()
    message = "login %s failed: " + secret.replace("%", "%%")
    record = logging.LogRecord("agent.test", logging.ERROR, __file__, 1, message, (prefix + secret + suffix,), exc_info)
    record.created, record.msecs = 1_700_000_000.0, 0.0
    record.detail = {"field": [prefix + secret, {"nested": secret + suffix}], "n": 3}
    record.raw = secret.encode("utf-8", "surrogatepass")  # a non-str value, rendered with str()
    return record


def forms(secret: str) -> list[str]:
    """The secret raw, as JSON escapes it (with and without ensure_ascii), and as repr() of a str or bytes does."""
    return [secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1], repr(secret)[1:-1],
            repr(secret.encode())[2:-1]]


SECRETS = st.text(min_size=logs._MIN_SECRET_LEN, max_size=40)
TEXT = st.text(max_size=20)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(secret=SECRETS, prefix=TEXT, suffix=TEXT, with_exc=st.booleans(),
       formatter=st.sampled_from([JsonFormatter(), TextFormatter()]))
def test_no_secret_in_any_form_in_any_formatter(secret: str, prefix: str, suffix: str, with_exc: bool,
                                                 formatter: logging.Formatter) -> None:
    logs._SECRETS.clear()
    # What a line with no secret at all looks like: if the secret is part of that (say "level"), it
    # is the line's own text, not a leak.
    baseline = formatter.format(make_record("***", prefix, suffix, with_exc))
    assume(not any(form in baseline for form in forms(secret)))
    register_secret(secret)
    line = formatter.format(make_record(secret, prefix, suffix, with_exc))
    for form in forms(secret):
        assert form not in line
    if isinstance(formatter, JsonFormatter):
        entry = json.loads(line)  # still one valid JSON object
        assert entry["level"] == "error"
        if with_exc:
            assert entry["traceback"].startswith("Traceback") and "make_record" in entry["traceback"]


@pytest.mark.parametrize("secret", ['pa"ss\\word', "tab\there", "new\nline", "é-ünïcødé-密码", "ctl\x01\x1f"])
def test_json_escaping_does_not_hide_a_secret(secret: str) -> None:
    register_secret(secret)
    line = JsonFormatter().format(make_record(secret, "", "", True))
    for form in forms(secret):
        assert form not in line, line


def test_json_logs_keep_the_traceback() -> None:
    logger = logging.getLogger("agent.test.traceback")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logger.addHandler(handler)
    try:
        try:
            empty: dict[str, int] = {}
            empty["missing"]
        except KeyError:
            logger.exception("lookup failed")
    finally:
        logger.removeHandler(handler)
    entry = json.loads(JsonFormatter().format(records[0]))
    assert entry["error"] == "KeyError: 'missing'"
    assert "Traceback (most recent call last)" in entry["traceback"]
    assert "test_json_logs_keep_the_traceback" in entry["traceback"]


def test_a_replacement_that_rebuilds_the_secret_is_redacted_again() -> None:
    register_secret("a***b")
    assert "a***b" not in redact("aa***bb")


def test_tokens_of_one_slot_do_not_accumulate() -> None:
    for i in range(5000):
        register_secret(f"iam-token-{i:06d}", slot="iam-token:domain/user")
    assert secret_count() == logs._SLOT_KEEP
    # The current token and the one before it (still in use by a request in flight) stay redacted.
    assert redact("iam-token-004999 iam-token-004998 iam-token-004997") == "*** *** iam-token-004997"


def test_the_registry_is_bounded() -> None:
    for i in range(logs._MAX_SECRETS * 3):
        register_secret(f"distinct-secret-{i:06d}")
    assert secret_count() == logs._MAX_SECRETS
    # Least recently registered go first; a secret registered again counts as recent.
    assert redact(f"distinct-secret-{logs._MAX_SECRETS * 3 - 1:06d}") == "***"


def test_a_value_still_held_by_another_slot_stays() -> None:
    register_secret("shared-secret-value", slot="a")
    register_secret("shared-secret-value", slot="b")
    register_secret("next-1-value", slot="a")
    register_secret("next-2-value", slot="a")
    assert redact("shared-secret-value") == "***"
