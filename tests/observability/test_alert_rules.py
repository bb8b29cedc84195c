"""The chart's alerts, proven with the real `promtool test rules` (tests/observability/alerts.test.yaml).

promtool is built from the Go module proxy by scripts/promtool/build.sh (pinned in
scripts/promtool/go, cached in .cache/promtool; `make test` builds it with the test binaries).
Locally a missing Go toolchain skips these tests; under CI=true it fails them.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.envoy.harness import under_ci

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "helm" / "modelarts-agent" / "files" / "prometheus-rules.yaml"
RULE_TESTS = Path(__file__).with_name("alerts.test.yaml")


@pytest.fixture(scope="module")
def promtool() -> str:
    cache = Path(os.environ.get("MODELARTS_AGENT_CACHE", REPO / ".cache"))
    build = subprocess.run([str(REPO / "scripts" / "promtool" / "build.sh")], capture_output=True, text=True,
                           timeout=1500, check=False)
    binary = cache / "promtool" / "bin" / "promtool"
    if build.returncode != 0 or not binary.exists():
        reason = f"promtool could not be built (scripts/promtool/build.sh): {build.stderr.strip()[-600:]}"
        if under_ci():
            pytest.fail(f"{reason}; under CI=true this is a failure, not a skip", pytrace=False)
        pytest.skip(reason)
    return str(binary)


@pytest.mark.timeout(1800)  # the first build of promtool takes minutes; later runs find it cached
def test_the_rules_file_is_valid_promql(promtool: str) -> None:
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rule_tests_pass(promtool: str) -> None:
    """No ready endpoints after an HA hand-over; leader missing with no controller scraped, and the rest."""
    result = subprocess.run([promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True,
                            timeout=120, check=False, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
