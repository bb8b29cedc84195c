"""Entry point: parse arguments, dispatch to a subcommand, turn known errors into one clear line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from agent import __version__
from agent.errors import AgentError

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    from agent.cli import controller_cmd, endpoints_cmd, inject_cmd, render_cmd, run_cmd, sidecar_cmd, status_cmd

    parser = argparse.ArgumentParser(
        prog="modelarts-agent",
        description="Discover ModelArts real-time service instances and feed them to Envoy and Kubernetes.",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="json", choices=["json", "text"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    endpoints_cmd.add_parser(sub)
    run_cmd.add_parser(sub)
    render_cmd.add_parser(sub)
    controller_cmd.add_parser(sub)
    sidecar_cmd.add_parser(sub)
    inject_cmd.add_parser(sub)
    status_cmd.add_parser(sub)
    version = sub.add_parser("version", help="print the version")
    version.set_defaults(handler=lambda _args: print(f"modelarts-agent {__version__}") or 0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from agent.logs import setup_logging

    setup_logging(args.log_level, args.log_format)
    handler: Handler = args.handler
    try:
        return handler(args)
    except AgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
