"""`modelarts-agent render bootstrap`: print (or write) the Envoy bootstrap for file mode."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from agent.config import load_config
from agent.errors import AgentError

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("render", help="render Envoy configuration")
    what = parser.add_subparsers(dest="what", metavar="WHAT", required=True)
    bootstrap = what.add_parser(
        "bootstrap", help="the Envoy bootstrap YAML pointing at the agent's output dir",
        description="Print the Envoy bootstrap for file mode. Also creates envoy.output_dir with empty CDS/LDS "
                    "files if they are missing, since Envoy will not start without them. A relative output_dir "
                    "is resolved against the current directory, as the agent does.")
    bootstrap.add_argument("--config", "-c", type=Path, required=True, help="agent config YAML")
    bootstrap.add_argument("--output", "-o", type=Path, help="write here (atomically) instead of stdout")
    bootstrap.set_defaults(handler=run_bootstrap)


def run_bootstrap(args: argparse.Namespace) -> int:
    from agent.sinks.envoy.bootstrap import build_bootstrap
    from agent.sinks.envoy.files import atomic_write, prepare_output_dir
    from agent.sinks.envoy.layout import FileLayout
    from agent.sinks.envoy.serialize import to_yaml

    config = load_config(args.config)
    text = to_yaml(build_bootstrap(config.envoy))
    layout = FileLayout.for_config(config.envoy)
    try:
        prepare_output_dir(layout)
    except OSError as exc:
        log.warning("cannot prepare %s (%s): Envoy will not start until the agent has written it",
                    layout.root, exc.strerror or exc)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        atomic_write(args.output, text.encode("utf-8"))
    except OSError as exc:
        raise AgentError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    return 0
