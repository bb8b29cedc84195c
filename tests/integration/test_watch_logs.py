"""A running agent whose log file sits in its watched config folder, at debug level."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.emulator import Emulator
from tests.integration.test_cli import CREDS, write_config


def test_debug_log_in_the_watched_folder_does_not_feed_on_itself(emulator: Emulator, tmp_path: Path) -> None:
    # An hour between polls: once started, the agent is idle and has next to nothing to say.
    config = write_config(tmp_path / "agent.yaml", emulator, admin={"port": 0},
                          discovery={"allowed_cidrs": ["127.0.0.0/8"], "default_poll_interval_seconds": 3600})
    log_file = tmp_path / "agent.log"
    with log_file.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "agent", "--log-level", "debug", "run", "--config",
                                 str(config)], stdout=sink, stderr=sink, env={**os.environ, **CREDS})
    try:
        deadline = time.monotonic() + 30
        while b"agent started" not in log_file.read_bytes() and time.monotonic() < deadline:
            assert proc.poll() is None, log_file.read_text()
            time.sleep(0.1)
        time.sleep(1.0)  # the first poll's lines
        start = log_file.stat().st_size
        time.sleep(4.0)
        grown = log_file.stat().st_size - start
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    # Before the fix each line's inotify event was logged at debug, which was a new event: ~4 MB/s.
    assert grown < 16 * 1024, f"the log grew {grown} bytes in 4 s of idle"
