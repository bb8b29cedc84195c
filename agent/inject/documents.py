"""The multi-document YAML stream: split at `---`, load one document with a clear error, and write a changed
document back with its leading comments and marker (every unchanged document passes through byte for byte)."""

from __future__ import annotations

import re
from typing import Any

import yaml

from agent.inject.model import InjectError

_MARKER = re.compile(r"^---(?:[ \t]|$)")


def split_documents(text: str) -> list[str]:
    """Split a YAML stream at `---` lines, keeping each marker with the document it opens."""
    chunks: list[list[str]] = [[]]
    for line in text.splitlines(keepends=True):
        if _MARKER.match(line) and any(not _blank_or_comment(x) for x in chunks[-1]):
            chunks.append([])
        chunks[-1].append(line)
    return ["".join(c) for c in chunks if c]


def _blank_or_comment(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("#") or stripped == "---"


def load_document(chunk: str, source: str, index: int, first_line: int) -> Any:
    try:
        docs = list(yaml.safe_load_all(chunk))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {first_line + mark.line}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise InjectError(f"invalid YAML in document {index} of {source}{where}: {problem}") from None
    docs = [d for d in docs if d is not None]
    if len(docs) > 1:
        raise InjectError(f"document {index} of {source}: could not tell its documents apart; "
                          f"separate documents with a line holding only ---")
    return docs[0] if docs else None


def dump_like(chunk: str, doc: dict[str, Any]) -> str:
    """The new document, keeping the original's leading comments and `---` marker."""
    head: list[str] = []
    for line in chunk.splitlines(keepends=True):
        if not _blank_or_comment(line):
            break
        head.append(line if line.endswith("\n") else line + "\n")
    return "".join(head) + dump_yaml(doc)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the config annotation) as literal blocks, so the output stays readable."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _represent_str)


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)
