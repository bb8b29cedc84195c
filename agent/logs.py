"""Structured JSON logs with a last line of defence against leaking secrets.

Every secret the agent reads is registered here; the formatters replace any occurrence with `***`
in every value of a log line (message, arguments, extra fields, traceback) before the line is
serialized, so that JSON escaping can never turn a secret into a form the redactor misses.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import OrderedDict
from typing import Any

_MIN_SECRET_LEN = 4
# Bounds: a long-running agent registers a new IAM token per refresh and re-reads rotated files.
_MAX_SECRETS = 1024
_SLOT_KEEP = 2  # per slot: the current value and the one before it (still valid while in flight)
_MAX_SLOTS = 256
_MASK = "***"

# Insertion order is recency: the least recently registered secret is forgotten first.
_SECRETS: OrderedDict[str, tuple[str, ...]] = OrderedDict()  # value -> its forms
_SLOTS: OrderedDict[str, list[str]] = OrderedDict()
_SECRETS_LOCK = threading.Lock()
_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _forms(value: str) -> tuple[str, ...]:
    """The secret and the escaped forms it takes when a container is printed (JSON, repr, bytes)."""
    forms = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1], repr(value)[1:-1],
             repr('"' + value)[2:-1],  # inside a string that holds both quote kinds, repr escapes '
             repr(value.encode("utf-8", "surrogatepass"))[2:-1]}
    return tuple(sorted(forms, key=len, reverse=True))


def register_secret(value: str, slot: str | None = None) -> None:
    """Redact `value` from now on. With `slot` (e.g. "iam-token:<user>"), a new value replaces the
    ones that slot held before, beyond the last `_SLOT_KEEP`; the whole set never exceeds `_MAX_SECRETS`."""
    if len(value) < _MIN_SECRET_LEN:
        return
    forms = _forms(value)
    with _SECRETS_LOCK:
        _SECRETS[value] = forms
        _SECRETS.move_to_end(value)
        if slot is not None:
            history = _SLOTS.setdefault(slot, [])
            _SLOTS.move_to_end(slot)
            if value in history:
                history.remove(value)
            history.append(value)
            while len(history) > _SLOT_KEEP:
                _forget(history.pop(0))
            while len(_SLOTS) > _MAX_SLOTS:
                _SLOTS.popitem(last=False)  # its values stay until the size bound drops them
        while len(_SECRETS) > _MAX_SECRETS:
            _SECRETS.popitem(last=False)


def _forget(value: str) -> None:
    """Drop a replaced value unless another slot still holds it (caller holds the lock)."""
    if not any(value in held for held in _SLOTS.values()):
        _SECRETS.pop(value, None)


def secret_count() -> int:
    with _SECRETS_LOCK:
        return len(_SECRETS)


def redact(text: str) -> str:
    with _SECRETS_LOCK:
        secrets = sorted({form for forms in _SECRETS.values() for form in forms}, key=len, reverse=True)
    for secret in secrets:
        # A replacement can join its neighbours into the secret again ("ab" + secret + "cd" with a
        # secret around "***"): repeat until gone. Each pass shortens the text (a secret is longer
        # than the mask), so this ends within len(text) passes.
        while secret in text:
            text = text.replace(secret, _MASK)
    return text


def _redact_value(value: Any) -> Any:
    """Redact every string inside a log field; anything else is rendered with str() first."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, dict):
        return {redact(str(k)): _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v) for v in value]
    return redact(str(value))


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # a bad format string must not lose the line (nor print its args unredacted)
        return f"{record.msg!s} (unformattable arguments)"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _message(record),
        }
        for key, value in _extras(record).items():
            entry.setdefault(key, value)
        if record.exc_info and record.exc_info[1] is not None:
            entry["error"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
            entry["traceback"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # Redact the values, then serialize: escaping happens after the secret is gone.
        return json.dumps(_redact_value(entry), ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = _extras(record)
        suffix = " " + " ".join(f"{k}={v}" for k, v in extras.items()) if extras else ""
        line = f"{record.levelname.lower():7} {record.name}: {_message(record)}{suffix}"
        if record.exc_info and record.exc_info[1] is not None:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return redact(line)


def setup_logging(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # urllib3 logs full URLs and headers at debug level; keep it quiet.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    # watchdog logs every inotify event at debug: with the log file in a watched folder, each line
    # would cause the next one (the log fed on itself, ~4 MB/s).
    logging.getLogger("watchdog").setLevel(logging.WARNING)
