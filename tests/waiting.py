"""The one poll-until-true helper of the kube and e2e suites (each conftest gives it its scale and interval).

Waits are upper bounds for things that normally take a few seconds; timing properties are asserted on
measured times after a wait, never by a wait's timeout alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest


def wait_until(check: Callable[[], Any], timeout: float, what: str, *, interval: float,
               diagnostics: Callable[[], str] | None = None) -> Any:
    """Poll ``check`` until it returns something truthy and return that; after ``timeout`` seconds fail the
    test with the last value (or exception) and, if given, ``diagnostics()`` (a failing one is reported)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except Exception as exc:  # keep polling; report the last failure
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            extra = ""
            if diagnostics is not None:
                try:
                    extra = "\n" + diagnostics()
                except Exception as exc:
                    extra = f"\n(diagnostics failed: {exc!r})"
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})"[:4000] + extra[-8000:],
                        pytrace=False)
        time.sleep(interval)


def unchanged_for(read: Callable[[], Any], seconds: float) -> Callable[[], bool]:
    """A check for `wait_until`: true once ``read()`` has returned the same value for ``seconds`` (a settle
    that ends as soon as things are quiet, instead of a fixed sleep that is too short on a stalled machine)."""
    state: dict[str, Any] = {"value": read(), "since": time.monotonic()}

    def check() -> bool:
        value = read()
        if value != state["value"]:
            state.update(value=value, since=time.monotonic())
        return time.monotonic() - state["since"] >= seconds

    return check
