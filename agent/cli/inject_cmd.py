"""`modelarts-agent inject`: add the agent sidecar and Envoy to Deployments, StatefulSets and Pods."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from agent.errors import AgentError
from agent.inject.injector import inject_text
from agent.inject.model import InjectError, InjectOptions

_EPILOG = """\
example:
  modelarts-agent inject -f deploy.yaml --service llm=10080 | kubectl apply -f -

The app then calls http://127.0.0.1:10080 and Envoy balances over the instances of the Kubernetes
Service `llm` (the ModelArtsService of that name). The pod needs a ServiceAccount allowed to
get/list/watch EndpointSlices (manifests/rbac/sidecar.yaml; default name modelarts-sidecar).
Other documents pass through unchanged; injecting twice gives the same output as once."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "inject", help="add the agent sidecar and Envoy to app workloads (like istioctl kube-inject)",
        description="Read Kubernetes YAML and add, to every Deployment, StatefulSet and Pod, the modelarts-agent "
                    "sidecar and an Envoy (native sidecars), their shared volume, an init container that writes "
                    "the Envoy bootstrap, and the sidecar config.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-f", "--filename", required=True, metavar="FILE", help="input YAML ('-' for stdin)")
    parser.add_argument("-o", "--output", type=Path, metavar="FILE", help="write here instead of stdout")
    parser.add_argument("--service", action="append", default=[], type=_service, metavar="NAME=PORT",
                        help="follow Kubernetes Service NAME; Envoy listens on 127.0.0.1:PORT (repeatable)")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="sidecar config YAML to start from (services' lb, retries, timeouts, splits, ...)")
    parser.add_argument("--image", default=InjectOptions.image, help=f"image (default {InjectOptions.image})")
    parser.add_argument("--service-account", default=InjectOptions.service_account,
                        help="set on pods that use the default ServiceAccount (default %(default)s)")
    parser.add_argument("--no-native-sidecars", dest="native", action="store_false",
                        help="for clusters older than 1.29: the agent and Envoy as ordinary containers")
    parser.add_argument("--admin-port", type=_port, default=InjectOptions.admin_port,
                        help="agent /healthz /readyz /metrics (default %(default)s)")
    parser.add_argument("--stats-port", type=_port, default=InjectOptions.stats_port,
                        help="Envoy GET /stats/prometheus (default %(default)s)")
    parser.add_argument("--envoy-admin-port", type=_port, default=InjectOptions.envoy_admin_port,
                        help="Envoy admin API, loopback only (default %(default)s)")
    parser.add_argument("--envoy-concurrency", type=_workers, default=InjectOptions.envoy_concurrency,
                        help="Envoy worker threads (default %(default)s; see the README's sizing section)")
    parser.set_defaults(handler=run)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return int(text)


def _workers(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of worker threads (1-64)")
    return int(text)


def _service(text: str) -> tuple[str, int]:
    name, sep, port = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=PORT, e.g. llm=10080")
    return name, _port(port)


def _read(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    try:
        return Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise AgentError(f"cannot read {source}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise AgentError(f"{source} is not UTF-8 text") from None


def _base_config(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = yaml.safe_load(_read(str(path)))
    except yaml.YAMLError:
        raise InjectError(f"invalid YAML in {path}") from None
    if not isinstance(data, dict):
        raise InjectError(f"{path}: the sidecar config must be a mapping")
    return data


def run(args: argparse.Namespace) -> int:
    options = InjectOptions(
        services=tuple(args.service), base_config=_base_config(args.config), image=args.image,
        service_account=args.service_account, native_sidecars=args.native, admin_port=args.admin_port,
        stats_port=args.stats_port, envoy_admin_port=args.envoy_admin_port,
        envoy_concurrency=args.envoy_concurrency)
    source = "stdin" if args.filename == "-" else args.filename
    result = inject_text(_read(args.filename), options, source)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not result.injected:
        print(f"warning: {source} holds no Deployment, StatefulSet or Pod; nothing was injected", file=sys.stderr)
    if args.output is None:
        sys.stdout.write(result.text)
        return 0
    try:
        args.output.write_text(result.text, encoding="utf-8")
    except OSError as exc:
        raise AgentError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    return 0
