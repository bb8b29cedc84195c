"""docs/benchmarks.md is written by several reports, each owning the text between its own two markers."""

from __future__ import annotations

from collections.abc import Callable


def replace_marked(text: str, begin: str, end: str, body: str, first_time: Callable[[str, str], str]) -> str:
    """`text` with what stands between `begin` and `end` replaced by `body`. Before the markers exist,
    `first_time(text, section)` places the whole marked section (each report knows where it goes)."""
    section = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        return head + section + rest.split(end, 1)[1]
    return first_time(text, section)
