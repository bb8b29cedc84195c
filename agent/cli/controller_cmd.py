"""`modelarts-agent controller`: the in-cluster, leader-elected ModelArtsService controller."""

from __future__ import annotations

import argparse
import os
import socket
import threading
import uuid
from pathlib import Path

from agent.app.signals import stop_on_signals
from agent.cli.options import port_number
from agent.config import DiscoveryConfig
from agent.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "controller", help="run the Kubernetes controller: ModelArtsService CRs -> Service + EndpointSlices",
        description="Watch ModelArtsService resources and publish each service's instances as a selectorless "
                    "Service with EndpointSlices. Replicas elect a leader through a Lease; only the leader "
                    "calls ModelArts.")
    parser.add_argument("--kubeconfig", type=Path, help="kubeconfig file (default: in-cluster, else $KUBECONFIG)")
    parser.add_argument("--context", help="kubeconfig context")
    parser.add_argument("--namespace", help="only watch ModelArtsServices in this namespace (default: all)")
    parser.add_argument("--lease-namespace", help="namespace of the leader Lease (default: the pod's namespace)")
    parser.add_argument("--lease-name", default="modelarts-agent-controller", help="name of the leader Lease")
    parser.add_argument("--identity", help="this replica's identity in the Lease (default: pod/host name + random)")
    parser.add_argument("--lease-duration", type=float, default=15.0, metavar="SECONDS",
                        help="how long a silent leader keeps the Lease (default 15)")
    parser.add_argument("--renew-deadline", type=float, metavar="SECONDS",
                        help="a leader that could not renew for this long stops (default 2/3 of the lease duration)")
    parser.add_argument("--retry-period", type=float, metavar="SECONDS",
                        help="time between renewals (default: renew deadline / 5, at most 2)")
    parser.add_argument("--admin-address", default="127.0.0.1", help="admin endpoint address (/healthz /readyz "
                                                                      "/metrics /status); 0.0.0.0 in a pod")
    parser.add_argument("--admin-port", type=port_number, default=8086, help="admin endpoint port (0 picks a free one)")
    parser.add_argument("--allowed-endpoint-hosts", metavar="HOSTS",
                        help="comma list of extra hosts (exact names or IPs, or *.suffix) that ModelArtsServices may "
                             "name in modelartsUrl/iamUrl; the Huawei Cloud API domains (*.myhuaweicloud.com, "
                             "*.myhuaweicloud.eu) are always allowed. No credential is sent to any other host")
    parser.add_argument("--legacy-endpoints", action="store_true",
                        help="also write v1 Endpoints objects (for consumers that do not read EndpointSlices)")
    parser.add_argument("--secret-refresh-seconds", type=float, default=10.0,
                        help="how often referenced Secrets are re-read, so rotations apply without a restart")
    parser.add_argument("--resync-seconds", type=float, default=300.0,
                        help="how often every Service and slice is re-applied (repairs manual edits)")
    parser.add_argument("--stale-after-seconds", type=float, default=120.0,
                        help="mark a service Stale when its last successful look-up is older than this")
    parser.set_defaults(handler=run)


def default_identity() -> str:
    # Unique per process: a replica restarted under the same pod name must not inherit a live lease.
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def run(args: argparse.Namespace) -> int:
    # Imported here: the admin server brings http.server and prometheus_client, which `--help` never needs.
    from agent.app.admin import AdminServer
    from agent.controller.controller import Controller, ControllerSettings
    from agent.controller.endpoints import EndpointAllowList
    from agent.controller.pipeline import PipelineSettings
    from agent.kube.client import KubeClient, default_namespace
    from agent.kube.leader import LeaseConfig

    for flag, value in (("--secret-refresh-seconds", args.secret_refresh_seconds),
                        ("--resync-seconds", args.resync_seconds), ("--stale-after-seconds", args.stale_after_seconds)):
        if value <= 0:
            raise ConfigError(f"{flag} must be positive")
    lease = LeaseConfig.derived(
        namespace=args.lease_namespace or default_namespace(args.kubeconfig), name=args.lease_name,
        identity=args.identity or default_identity(), lease_duration=args.lease_duration,
        renew_deadline=args.renew_deadline, retry_period=args.retry_period)
    settings = ControllerSettings(
        lease=lease, namespace=args.namespace,
        pipeline=PipelineSettings(legacy_endpoints=args.legacy_endpoints,
                                  allowed_endpoints=EndpointAllowList.parse_flag(args.allowed_endpoint_hosts),
                                  secret_refresh_seconds=args.secret_refresh_seconds,
                                  resync_seconds=args.resync_seconds,
                                  discovery=DiscoveryConfig(stale_after_seconds=args.stale_after_seconds)))
    kube = KubeClient.connect(args.kubeconfig, args.context)
    controller = Controller(kube, settings)
    try:
        admin = AdminServer(args.admin_address, args.admin_port, controller.status, controller.ready)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {args.admin_address}:{args.admin_port}: {exc.strerror}") from None
    # Of the composition root the controller takes the admin server and the signal handling; its pipeline
    # is per leadership term (agent/controller/pipeline.py says why it is no Runtime).
    stopping = threading.Event()
    stop_on_signals(stopping)
    admin.start()
    controller.start()
    while not stopping.wait(1.0):
        pass
    controller.shutdown()
    admin.stop()
    kube.close()
    return 0
