"""`modelarts-agent render bootstrap`: print (or write) the Envoy bootstrap for file mode, or with
`--ads ADDRESS` for an Envoy fed by the agent's xDS server."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from agent.config import load_data_plane_config
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
    bootstrap.add_argument("--config", "-c", type=Path, help="agent config YAML (required without --ads)")
    bootstrap.add_argument("--output", "-o", type=Path, help="write here (atomically) instead of stdout")
    ads = bootstrap.add_argument_group("ADS mode", "an Envoy that gets everything from the agent's xDS server")
    ads.add_argument("--ads", metavar="ADDRESS", help="HOST:PORT of the xDS server (enables ADS mode)")
    ads.add_argument("--delta", action="store_true", help="use the incremental (DELTA_GRPC) protocol")
    ads.add_argument("--node-id", help="Envoy node id (default: envoy.node_id of --config, or modelarts-agent)")
    ads.add_argument("--services", help="comma-separated services this node sees (default: all)")
    ads.add_argument("--gateway", action="store_true", help="a shared gateway node (routes by Host or path)")
    ads.add_argument("--listen-address", help="bind this node's listeners to this IP")
    ads.add_argument("--admin-port", type=int, help="Envoy admin port on loopback (default: envoy.admin_port)")
    ads.add_argument("--ads-ca", type=Path, help="TLS to the xDS server: CA of its certificate")
    ads.add_argument("--ads-cert", type=Path, help="mTLS: client certificate")
    ads.add_argument("--ads-key", type=Path, help="mTLS: client key")
    ads.add_argument("--stats-port", type=int,
                     help="serve only GET /stats/prometheus on this port (default: envoy.stats_port)")
    bootstrap.set_defaults(handler=run_bootstrap)


def run_bootstrap(args: argparse.Namespace) -> int:
    if args.ads is not None:
        return _write(args, _ads_bootstrap(args))
    if args.config is None:
        raise AgentError("render bootstrap needs --config (file mode) or --ads ADDRESS (ADS mode)")
    return _file_bootstrap(args)


def _ads_bootstrap(args: argparse.Namespace) -> str:
    from agent.config import EnvoyConfig
    from agent.envoy.ads_bootstrap import AdsBootstrap, build_ads_bootstrap
    from agent.envoy.serialize import to_yaml

    envoy = load_data_plane_config(args.config).envoy if args.config is not None else EnvoyConfig()
    services = None if args.services is None else tuple(s.strip() for s in args.services.split(",") if s.strip())
    options = AdsBootstrap(
        address=args.ads, node_id=args.node_id or envoy.node_id,
        cluster="modelarts-gateway" if args.gateway else envoy.cluster,
        admin_address=envoy.admin_address, admin_port=args.admin_port or envoy.admin_port, delta=args.delta,
        services=services, role="gateway" if args.gateway else None, listen_address=args.listen_address,
        ca_file=args.ads_ca, cert_file=args.ads_cert, key_file=args.ads_key,
        stats_port=args.stats_port or envoy.stats_port, stats_address=envoy.stats_address)
    return to_yaml(build_ads_bootstrap(options))


def _write(args: argparse.Namespace, text: str) -> int:
    if args.output is None:
        sys.stdout.write(text)
        return 0
    from agent.sinks.envoy.files import atomic_write

    try:
        atomic_write(args.output, text.encode("utf-8"))
    except OSError as exc:
        raise AgentError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    return 0


def _file_bootstrap(args: argparse.Namespace) -> int:
    from agent.envoy.bootstrap import build_bootstrap
    from agent.envoy.layout import FileLayout
    from agent.envoy.serialize import to_yaml
    from agent.sinks.envoy.files import prepare_output_dir

    config = load_data_plane_config(args.config)  # a sidecar's config has no modelarts section
    text = to_yaml(build_bootstrap(config.envoy))
    layout = FileLayout.for_config(config.envoy)
    try:
        prepare_output_dir(layout)
    except OSError as exc:
        log.warning("cannot prepare %s (%s): Envoy will not start until the agent has written it",
                    layout.root, exc.strerror or exc)
    return _write(args, text)
