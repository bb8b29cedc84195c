"""Suite-wide hygiene."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    # Tests that call the CLI in-process run setup_logging(), which points the root logger at the
    # stderr pytest captured for that test; later log lines from background threads would hit a closed file.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
