"""Config loading shared by subcommands: a YAML file, or an ad-hoc config from flags."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.config import (
    AdminConfig,
    AgentConfig,
    Config,
    apply_env_overrides,
    format_validation_error,
    load_config,
    parse_config,
)
from agent.errors import ConfigError


def port_number(text: str) -> int:
    """argparse type for a TCP port flag: 0-65535 (0 picks a free port), else a usage error (exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (0-65535; 0 picks a free port)")
    return value


def with_admin_port(config: Config, port: int | None) -> Config:
    """`config` with admin.port replaced, validated like the file (model_copy alone would not check it)."""
    if port is None:
        return config
    try:
        admin = AdminConfig.model_validate({**config.admin.model_dump(), "port": port})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "--admin-port")) from None
    return config.model_copy(update={"admin": admin})


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", type=Path, help="agent config YAML")
    adhoc = parser.add_argument_group("ad-hoc target (instead of --config)")
    adhoc.add_argument("--modelarts-url")
    adhoc.add_argument("--iam-url")
    adhoc.add_argument("--project-id")
    adhoc.add_argument("--service-id", action="append", default=[], help="repeatable")
    adhoc.add_argument("--auth-mode", choices=["password", "aksk", "token"], default="password")
    adhoc.add_argument("--domain", help="IAM account (domain) name")
    adhoc.add_argument("--user", help="IAM user name (password from $MODELARTS_PASSWORD)")
    adhoc.add_argument("--allow-cidr", action="append", default=[], help="allowed instance CIDR (repeatable)")


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    if args.config is not None:
        return load_config(args.config)
    missing = [flag for flag, value in (("--modelarts-url", args.modelarts_url), ("--project-id", args.project_id))
               if not value]
    if missing:
        raise ConfigError(f"give --config FILE, or at least {' and '.join(missing)}")
    if not args.service_id:
        raise ConfigError("give --config FILE, or at least one --service-id")
    data: dict[str, Any] = {
        "modelarts": {
            "modelarts_url": args.modelarts_url,
            "iam_url": args.iam_url or args.modelarts_url,
            "project_id": args.project_id,
        },
        "auth": {"mode": args.auth_mode, "domain": args.domain, "user": args.user},
        "services": [{"name": f"service-{i + 1}", "service_id": sid} for i, sid in enumerate(args.service_id)],
    }
    if args.allow_cidr:
        data["discovery"] = {"allowed_cidrs": args.allow_cidr}
    return parse_config(apply_env_overrides(data), "command-line flags")
