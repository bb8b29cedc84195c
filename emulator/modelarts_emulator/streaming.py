"""Token streams shared by the SSE, WebSocket and gRPC instances: when each token is due, and what became of it.

A stream is `tokens` tokens: the first `first_token_ms` after the response started, the next ones
`interval_ms` apart. With `reset_after`, the producer stops after that many tokens and the protocol
server fails the stream its own way (SSE/WebSocket: abort the connection; gRPC: UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from modelarts_emulator.config import StreamConfig, describe_validation_error


@dataclass
class StreamCounters:
    """Per instance; read by the admin API. Every stream ends in exactly one of the four outcomes."""

    started: int = 0
    active: int = 0
    completed: int = 0
    cancelled: int = 0  # the client (or Envoy on its behalf) went away, or the instance was killed
    reset: int = 0  # ended by the injected mid-stream failure
    failed: int = 0  # any other error while streaming
    tokens: int = 0  # tokens written, over all streams


class StreamOutcome:
    """Marks how a stream ended when the protocol code knows better than the exception (an injected reset)."""

    def __init__(self) -> None:
        self.reset = False


def plan(defaults: StreamConfig, overrides: Mapping[str, Any]) -> StreamConfig:
    """The instance's stream settings with a request's overrides; ValueError names the bad field."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if not given:
        return defaults
    try:
        return StreamConfig.model_validate({**defaults.model_dump(), **given})
    except ValidationError as exc:
        raise ValueError(describe_validation_error(exc)) from None


@contextlib.contextmanager
def tracked(counters: StreamCounters) -> Iterator[StreamOutcome]:
    """Count one stream from start to end; CancelledError and connection errors (unless reset) are cancels."""
    outcome = StreamOutcome()
    counters.started += 1
    counters.active += 1
    try:
        yield outcome
    except BaseException as exc:
        if outcome.reset:
            counters.reset += 1
        elif isinstance(exc, asyncio.CancelledError | ConnectionError):
            counters.cancelled += 1
        else:
            counters.failed += 1
        raise
    else:
        if outcome.reset:
            counters.reset += 1
        else:
            counters.completed += 1
    finally:
        counters.active -= 1


async def tokens(config: StreamConfig, instance_id: str, counters: StreamCounters,
                 outcome: StreamOutcome) -> AsyncIterator[dict[str, Any]]:
    """Yield token events on schedule; stops early (and marks `outcome.reset`) at `reset_after`."""
    for index in range(config.tokens):
        if config.reset_after is not None and index >= config.reset_after:
            outcome.reset = True
            return
        await asyncio.sleep((config.first_token_ms if index == 0 else config.interval_ms) / 1000.0)
        counters.tokens += 1
        yield {"index": index, "token": f"tok{index}", "instance_id": instance_id}
