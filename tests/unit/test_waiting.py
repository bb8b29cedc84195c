"""tests/waiting.py, the poll the kube and e2e suites share: it returns the first truthy value, keeps
polling through exceptions, and a timeout names the wait, the last value and the diagnostics."""

from __future__ import annotations

import pytest

from tests.waiting import unchanged_for, wait_until


def test_returns_the_first_truthy_value_polling_through_exceptions() -> None:
    calls = iter([ValueError("not yet"), 0, "ready"])

    def check() -> object:
        value = next(calls)
        if isinstance(value, Exception):
            raise value
        return value

    assert wait_until(check, 5, "ready", interval=0.01) == "ready"


def test_timeout_names_the_wait_the_last_value_and_the_diagnostics() -> None:
    with pytest.raises(pytest.fail.Exception) as failed:
        wait_until(lambda: [], 0.05, "the pod", interval=0.01, diagnostics=lambda: "agent log tail")
    assert "waiting for the pod (last: [])" in str(failed.value)
    assert str(failed.value).endswith("agent log tail")


def test_a_failing_diagnostics_is_reported_not_raised() -> None:
    def broken() -> str:
        raise RuntimeError("no logs")

    with pytest.raises(pytest.fail.Exception) as failed:
        wait_until(lambda: None, 0.05, "x", interval=0.01, diagnostics=broken)
    assert "diagnostics failed: RuntimeError('no logs')" in str(failed.value)


def test_unchanged_for_waits_until_the_value_stops_moving() -> None:
    values = iter([1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3])
    seen: list[int] = []

    def read() -> int:
        seen.append(next(values))
        return seen[-1]

    assert wait_until(unchanged_for(read, 0.05), 5, "settled", interval=0.01)
    assert seen[:3] == [1, 2, 3] and len(seen) >= 5  # not done before the value stopped changing


def test_unchanged_for_times_out_while_the_value_keeps_changing() -> None:
    counter = iter(range(10_000))
    with pytest.raises(pytest.fail.Exception):
        wait_until(unchanged_for(lambda: next(counter), 0.2), 0.1, "never settles", interval=0.01)
