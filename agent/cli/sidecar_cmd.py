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
restart, since each has its own watch.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import yaml

from agent.admin_server import AdminServer
from agent.cli.options import port_number, with_admin_port
from agent.config import DataPlaneConfig, ServicePolicy, apply_env_overrides, parse_as, without_modelarts_side
from agent.errors import ConfigError
from agent.model import ServiceSnapshot

if TYPE_CHECKING:
    from agent.sources.kubernetes import KubernetesSource

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
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError:
        raise ConfigError(f"invalid YAML in {path}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration in {path}: the top level must be a mapping")
    data, unused = without_modelarts_side(apply_env_overrides(data))
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


def reloaded(new: DataPlaneConfig, sources: Mapping[str, KubernetesSource]) -> DataPlaneConfig:
    """A reloaded config as the sinks render it: each followed service's new spec, its CR's load balancing
    re-applied. The followed set stays (each service has its own watch): a service added or removed is
    reported and waits for a restart."""
    specs = {spec.name: spec for spec in new.services}
    added, removed = sorted(set(specs) - set(sources)), sorted(set(sources) - set(specs))
    if added or removed:
        log.warning("the sidecar follows the same services until restart; not applied: %s",
                    ", ".join([*(f"+{name}" for name in added), *(f"-{name}" for name in removed)]))
    services = tuple(source.reconfigure(specs[name]) if name in specs else source.policy
                     for name, source in sources.items())
    return new.model_copy(update={"services": services, "splits": tuple(
        t for t in new.splits if all(b.service in sources for b in t.backends))})


def run(args: argparse.Namespace) -> int:
    from agent.adaptive.runner import AdaptiveRunner
    from agent.file_watch import ConfigWatcher
    from agent.kube.client import KubeClient, default_namespace
    from agent.sinks.factory import sinks_for
    from agent.sinks.runner import SinkSet
    from agent.snapshot import SnapshotStore
    from agent.sources.kubernetes import KubernetesSource
    from agent.validation import parse_networks

    def load(path: Path) -> DataPlaneConfig:
        return follow(with_admin_port(load_sidecar_config(path, args.service), args.admin_port), args.service)

    config = load(args.config)
    followed = config.services
    namespace = args.namespace or default_namespace(args.kubeconfig)
    kube = KubeClient.connect(args.kubeconfig)
    stop = threading.Event()
    store = SnapshotStore(config.services, config.discovery)
    rendering = threading.Lock()
    rendered = [config]  # what the sinks render: the config, with each CR's announced load balancing

    def on_policy(spec: ServicePolicy) -> None:
        """A CR's load balancing, read from its slices: the sinks render that service with it from now on."""
        with rendering:
            # The source's current policy, not `spec`: a reload may have come in between.
            rendered[0] = rendered[0].with_service(by_name[spec.name].policy)
            sink_set.apply_config(rendered[0])

    def reload(new: DataPlaneConfig) -> None:
        with rendering:
            rendered[0] = reloaded(new, by_name)
            sink_set.apply_config(rendered[0])
        adaptive.apply(rendered[0])

    sources = [KubernetesSource(kube, namespace, spec, store, parse_networks(config.discovery.allowed_cidrs),
                                config.discovery.max_endpoints, stop, on_policy) for spec in followed]
    by_name = {source.spec.name: source for source in sources}
    try:
        sinks = list(sinks_for(config))  # binds the xDS port now, when enabled
    except Exception:
        kube.close()
        raise
    sink_set = SinkSet(sinks, store, stop)
    runners = sink_set.runners
    xds = next((sink for sink in sinks if sink.name == "xds"), None)
    # Latency-aware weights from this pod's own Envoy, over the same files or ADS (lb.adaptive).
    adaptive = AdaptiveRunner(lambda: sink_set.sinks)

    def service_status(svc: ServiceSnapshot) -> dict[str, Any]:
        weights = adaptive.status_rows(by_name[svc.name].policy)
        extra = {"weights": weights} if weights is not None else {}
        return {"endpoints": [e.address for e in svc.endpoints], **extra}

    def status() -> dict[str, Any]:
        snapshot = store.snapshot
        body: dict[str, Any] = {
            "namespace": namespace, "snapshot_version": snapshot.version, "ready": store.ready(),
            "services": [{**st.__dict__, **service_status(snapshot.services[st.name])}
                         for st in store.statuses() if st.name in snapshot.services],
            "watch_errors": {s.spec.name: s.reflector.last_error for s in sources},
            "sinks": sink_set.status()}
        if (health := adaptive.health()) is not None:  # the adaptive loop: ok, stale, blind, latched
            body["adaptive"] = health
        files = next((r for r in runners if r.sink.name != "xds"), None)
        if files is not None:  # the single-sink shape of earlier versions
            body["sink"] = {"published_version": files.published_version, "last_error": files.last_error}
        if xds is not None:
            body["xds"] = _xds_status(xds, config)
        return body

    try:
        admin = AdminServer(config.admin.address, config.admin.port, status, store.ready, store.not_ready_reason)
    except OSError as exc:
        sink_set.close()
        kube.close()
        raise ConfigError(f"cannot listen on {config.admin.address}:{config.admin.port}: {exc.strerror}") from None

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    admin.start()
    sink_set.start()
    for source in sources:
        source.start()
    adaptive.apply(config)
    watcher = ConfigWatcher(args.config, reload, loader=load)
    watcher.start()
    while not stop.wait(1.0):
        pass
    watcher.stop()
    adaptive.stop()
    sink_set.join(10)
    sink_set.close()
    admin.stop()
    kube.close()
    return 0


def _xds_status(sink: Any, config: DataPlaneConfig) -> dict[str, Any]:
    """Where the xDS server listens, the cache version it serves and how many Envoy streams are open."""
    server = sink.server
    current = sink.cache.current
    return {"address": config.xds.address, "port": server.port if server is not None else None,
            "tls": config.xds.tls.cert_file is not None, "serving": server is not None,
            "cache_version": current.version if current is not None else 0,
            "streams": server.stream_count if server is not None else 0}
