"""`modelarts-agent run --config FILE`: the long-running discovery loop with its sinks."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.cli.options import port_number, with_admin_port
from agent.config import load_config


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("run", help="run the agent: poll ModelArts and publish to the configured sinks")
    parser.add_argument("--config", "-c", type=Path, required=True, help="agent config YAML (watched for changes)")
    parser.add_argument("--admin-port", type=port_number, help="override admin.port (0 picks a free port)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Heavy: imported when `run` runs, not for every command.
    from agent.app.run import AgentRuntime
    from agent.app.signals import serve
    from agent.sinks.factory import sinks_for

    config = with_admin_port(load_config(args.config), args.admin_port)
    return serve(AgentRuntime(config, args.config, sink_factory=sinks_for))
