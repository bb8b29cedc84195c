"""`modelarts-agent run --config FILE`: the long-running discovery loop with its sinks."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType

from agent.cli.options import port_number, with_admin_port
from agent.config import load_config


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("run", help="run the agent: poll ModelArts and publish to the configured sinks")
    parser.add_argument("--config", "-c", type=Path, required=True, help="agent config YAML (watched for changes)")
    parser.add_argument("--admin-port", type=port_number, help="override admin.port (0 picks a free port)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from agent.runtime import AgentRuntime  # heavy: imported when `run` runs, not for every command

    config = load_config(args.config)
    config = with_admin_port(config, args.admin_port)
    from agent.sinks.factory import sinks_for

    runtime = AgentRuntime(config, args.config, sink_factory=sinks_for)
    stopping = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.set()
        runtime.stop_event.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    runtime.start()
    runtime.wait()
    runtime.stop()
    return 0
