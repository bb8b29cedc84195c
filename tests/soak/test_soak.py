"""A bounded 2-minute soak in the regular suite (`make soak` runs the 10-minute one)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.soak.run_soak import check, run_soak

SECONDS = float(os.environ.get("SOAK_SECONDS", "120"))


def test_soak(tmp_path: Path) -> None:
    result = run_soak(SECONDS, tmp_path)
    assert result.churn_events >= SECONDS / 8, "too little churn to call this a soak"
    assert result.requests_ok >= SECONDS * 20
    assert len(result.samples) >= SECONDS * 0.8
    assert check(result) == [], (check(result), result.growth())
