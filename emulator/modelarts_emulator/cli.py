"""`modelarts-emulator`: run the emulator in the foreground until SIGINT/SIGTERM.

Once everything listens it prints one JSON line (URLs, CA path, services, a credentials hint;
never a password or SK) and writes the same JSON to --ready-file, so a parent process can wait
for the file instead of parsing logs. Also runnable as `python -m modelarts_emulator`.

Ports: --port N puts IAM and ModelArts on the same port N; without it (or with 0) each gets its
own ephemeral port. --services/--instances replace the scenario's services with generated
demo services (demo-svc-1..N, with stable ids).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from modelarts_emulator.app import Emulator, EmulatorError
from modelarts_emulator.config import EmulatorConfig, ScenarioError, ServiceConfig, demo_config

PROG = "modelarts-emulator"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Run the local ModelArts + IAM emulator with fake inference instances.")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="json", choices=["json", "text"])
    configure_parser(parser)
    return parser


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="scenario YAML (see emulator/modelarts_emulator/config.py)")
    parser.add_argument("--host", help="address for the IAM, ModelArts and admin listeners (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="one port for both IAM and ModelArts (default: ephemeral each)")
    parser.add_argument("--iam-port", type=int, help="a separate IAM port (overrides --port for IAM)")
    parser.add_argument("--admin-port", type=int, help="admin API port (default: ephemeral)")
    parser.add_argument("--services", type=int, help="generate N demo services instead of the scenario's")
    parser.add_argument("--instances", type=int, help="instances per generated service (default 2)")
    parser.add_argument("--ready-file", type=Path, help="write the ready JSON here once listening")
    parser.add_argument("--instance-address", help="every instance on this one address, each on its own port "
                        "(an emulator in a pod, which has one IP)")


def build_config(args: argparse.Namespace) -> EmulatorConfig:
    base = EmulatorConfig.from_yaml(args.config) if args.config else None
    data: dict[str, Any] = base.model_dump(by_alias=True, exclude={"services"}) if base else {}
    if base is not None:
        # model_dump() turns SecretStr into "**********"; put the real secrets back.
        data["users"] = base.users
    if args.services is not None or args.instances is not None or base is None:
        count = args.services if args.services is not None else 1
        per = args.instances if args.instances is not None else 2
        if count < 0 or per < 0:
            raise ScenarioError("--services and --instances must be >= 0")
        data["services"] = demo_config(services=count, instances=per).services
    else:
        data["services"] = base.services
    for key, value in (("host", args.host), ("admin_port", args.admin_port)):
        if value is not None:
            data[key] = value
    if args.port is not None:
        data["modelarts_port"] = data["iam_port"] = args.port
    if args.iam_port is not None:
        data["iam_port"] = args.iam_port
    if args.instance_address:
        try:
            ipaddress.ip_address(args.instance_address)
        except ValueError:
            raise ScenarioError(f"--instance-address {args.instance_address!r} is not an IP address") from None
        shared = {"port": 0, "bind_addresses": None, "shared_address": args.instance_address}
        data["services"] = [ServiceConfig.model_validate({**svc.model_dump(by_alias=True), **shared})
                            for svc in data["services"]]
    return EmulatorConfig.parse(data, source="emulator options")


def _write_ready_file(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)  # readers never see a half-written file


def run(args: argparse.Namespace) -> int:
    try:
        config = build_config(args)
    except ScenarioError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2

    def on_ready(emulator: Emulator) -> None:
        line = json.dumps(emulator.ready_info())
        if args.ready_file is not None:
            _write_ready_file(args.ready_file, line)
        print(line, flush=True)

    try:
        Emulator(config).run_forever(on_ready)
    except (EmulatorError, OSError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        if args.ready_file is not None:
            args.ready_file.unlink(missing_ok=True)  # a stale file would claim we are still up
    return 0


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
                "msg": record.getMessage()}
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line)


def setup_logging(level: str, fmt: str) -> None:
    """One stderr handler: JSON lines (the default, like the agent's) or plain text for a terminal."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
