"""`modelarts-agent sidecar`: EndpointSlices written by the controller -> Envoy files and/or xDS. Zero ModelArts calls.

The config file is an ordinary agent config for the Envoy side (services with listen ports and
policies, splits, envoy, admin, discovery.allowed_cidrs, xds, gateway); each service name is the
name of the Kubernetes Service (= the ModelArtsService) to follow. It is parsed as a
`DataPlaneConfig`: no `modelarts`, `auth` or `budget` section and no per-service `service_id`,
since the sidecar has no ModelArts client. Those keys are ignored with a warning, not refused:
workloads injected by earlier versions carry placeholders for them in their annotation.

With `xds.enabled: true` the sidecar also serves ADS (e.g. on loopback to the gateway's Envoy, as
the chart's gateway pods do); `envoy.files: false` then skips the Envoy files.

The config file is watched like `run`'s: a valid new version re-renders the followed services'
policies (the CR's announced load balancing re-applied); following another set of services needs a
restart, since the one watch selects the followed Services. The wiring is the shared builder's
(agent/app/sidecar.py).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from agent.cli.options import port_number, with_admin_port
from agent.config import DataPlaneConfig, apply_env_overrides, parse_as, read_config_mapping, without_modelarts_side
from agent.errors import ConfigError

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "sidecar",
        help="follow the EndpointSlices of Kubernetes Services and feed Envoy (files or xDS; no ModelArts calls)",
        description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--config", "-c", type=Path, required=True,
                        help="agent config YAML: services (listen ports, policies), envoy, admin")
    parser.add_argument("--service", action="append", default=[], metavar="NAME",
                        help="Kubernetes Service to follow (repeatable; default: every service in the config)")
    parser.add_argument("--namespace", help="namespace of the Services (default: the pod's namespace)")
    parser.add_argument("--kubeconfig", type=Path, help="kubeconfig file (default: in-cluster, else $KUBECONFIG)")
    parser.add_argument("--admin-port", type=port_number, help="override admin.port (0 picks a free port)")
    parser.set_defaults(handler=run)


def load_sidecar_config(path: Path, services: list[str]) -> DataPlaneConfig:
    data, unused = without_modelarts_side(apply_env_overrides(read_config_mapping(path)))
    if unused:
        log.warning("the sidecar never calls ModelArts: ignoring %s in %s", ", ".join(unused), path)
    config = parse_as(DataPlaneConfig, data, str(path))
    known = {s.name for s in config.services}
    missing = [name for name in services if name not in known]
    if missing:
        raise ConfigError(f"{path} has no service named {', '.join(missing)}: the sidecar needs each Service's "
                          f"listen_port and policy from the config")
    if not config.services:
        raise ConfigError(f"{path} lists no services to follow")
    if not (config.envoy.files or config.xds.enabled):
        raise ConfigError(f"{path}: envoy.files is false and xds is not enabled, so nothing would feed Envoy")
    return config


def follow(config: DataPlaneConfig, services: list[str]) -> DataPlaneConfig:
    """Only what this sidecar follows is rendered; a split needs all of its backends followed."""
    followed = tuple(s for s in config.services if not services or s.name in services)
    names = {s.name for s in followed}
    return config.model_copy(update={"services": followed, "splits": tuple(
        t for t in config.splits if all(b.service in names for b in t.backends))})


def run(args: argparse.Namespace) -> int:
    # Imported here: every other command pays nothing for the sidecar's pieces, the sidecar nothing for theirs.
    from agent.app.sidecar import SidecarRuntime
    from agent.app.signals import serve
    from agent.kube.client import KubeClient, default_namespace
    from agent.sinks.factory import sinks_for

    def load(path: Path) -> DataPlaneConfig:
        return follow(with_admin_port(load_sidecar_config(path, args.service), args.admin_port), args.service)

    config = load(args.config)
    namespace = args.namespace or default_namespace(args.kubeconfig)
    runtime = SidecarRuntime(config, args.config, kube=KubeClient.connect(args.kubeconfig), namespace=namespace,
                             loader=load, sink_factory=sinks_for)
    return serve(runtime)
