"""Reading untrusted HTTP answers from ModelArts and IAM: every body capped and under a deadline.

Whatever the status, a body is read in pieces with a size cap and a total deadline, so a huge or
slowloris answer (a 503 as much as a 200) can neither exhaust memory nor hold a poller forever.
"""

from __future__ import annotations

import email.utils
import math
from datetime import UTC

import requests
import urllib3

from agent.clock import Clock
from agent.errors import DiscoveryError

# Error bodies only feed a short message; a few KiB is plenty, the rest is never read.
ERROR_BODY_CAP = 64 * 1024
# A Retry-After beyond this is treated as this: a gateway asking for a day is broken, not precise.
RETRY_AFTER_MAX_SECONDS = 3600.0


def read_capped(resp: requests.Response, cap: int, deadline: float, clock: Clock) -> bytes:
    """The whole body, or DiscoveryError(oversized / timeout / connection). Always closes `resp`."""
    try:
        declared = resp.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > cap:
            raise DiscoveryError(f"response body of {declared} bytes exceeds the {cap}-byte cap", kind="oversized")
        chunks: list[bytes] = []
        size = 0
        while True:
            if clock.monotonic() > deadline:
                raise DiscoveryError("response body took too long to arrive", kind="timeout")
            # read1 returns as soon as any bytes arrive, so a server dribbling a byte at a time
            # (slowloris) hits the total deadline instead of holding the caller forever.
            chunk = resp.raw.read1(64 * 1024, decode_content=True)
            if not chunk:
                break
            size += len(chunk)
            if size > cap:
                raise DiscoveryError(f"response body exceeds the {cap}-byte cap", kind="oversized")
            chunks.append(chunk)
        if clock.monotonic() > deadline:
            raise DiscoveryError("response body took too long to arrive", kind="timeout")
        return b"".join(chunks)
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
        raise DiscoveryError(f"connection broke while reading: {type(exc).__name__}", kind="connection") from None
    finally:
        resp.close()


def read_error_body(resp: requests.Response, deadline: float, clock: Clock, cap: int = ERROR_BODY_CAP) -> bytes:
    """Up to `cap` bytes of an error answer, or b"" if it is too big, too slow or broken.

    Never raises: the status code is the answer; the body only adds detail to the message.
    """
    try:
        return read_capped(resp, cap, deadline, clock)
    except DiscoveryError:
        return b""


def parse_retry_after(raw: str | None, now_wall: float) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or an HTTP-date), clamped to
    [0, RETRY_AFTER_MAX_SECONDS]; None when absent or unusable (`soon`, `1.5`, `-5`, empty), so the
    caller falls back to its own backoff. Never raises."""
    if raw is None:
        return None
    value = raw.strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():
        return min(float(value), RETRY_AFTER_MAX_SECONDS) if len(value) < 12 else RETRY_AFTER_MAX_SECONDS
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:  # "-0000" or no zone: RFC 9110 dates are GMT
        parsed = parsed.replace(tzinfo=UTC)
    try:
        delay = parsed.timestamp() - now_wall
    except (OverflowError, OSError, ValueError):
        return None
    if not math.isfinite(delay):
        return None
    return min(max(0.0, delay), RETRY_AFTER_MAX_SECONDS)
