"""What the injector adds, by name, and its options and result (the vocabulary the other modules share)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent import __version__
from agent.errors import AgentError

ANNOTATION_CONFIG = "sidecar.modelarts.io/config"
ANNOTATION_INJECTED = "sidecar.modelarts.io/injected"
BOOTSTRAP = "modelarts-bootstrap"
AGENT = "modelarts-agent"
ENVOY = "modelarts-envoy"
INJECTED_CONTAINERS = (BOOTSTRAP, AGENT, ENVOY)
VOLUME_RUN = "modelarts-run"
VOLUME_TMP = "modelarts-tmp"
VOLUME_CONFIG = "modelarts-config"
VOLUME_TOKEN = "modelarts-sa-token"
INJECTED_VOLUMES = (VOLUME_RUN, VOLUME_TMP, VOLUME_CONFIG, VOLUME_TOKEN)
RUN_DIR = "/var/run/modelarts"
CONFIG_DIR = "/etc/modelarts-agent"
CONFIG_PATH = f"{CONFIG_DIR}/sidecar.yaml"
BOOTSTRAP_PATH = f"{RUN_DIR}/bootstrap.yaml"
SA_TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
ENVOY_BINARY = "/opt/modelarts-agent/bin/envoy"
UID = 10001


class InjectError(AgentError):
    """The input cannot be injected; the message says which document and why."""


@dataclass(frozen=True)
class InjectOptions:
    services: tuple[tuple[str, int], ...] = ()  # (Kubernetes Service name, local Envoy listen port)
    base_config: dict[str, Any] | None = None  # a sidecar config file's content (`--config`)
    image: str = f"modelarts-agent:{__version__}"
    service_account: str = "modelarts-sidecar"
    native_sidecars: bool = True
    admin_port: int = 8086  # the agent's /healthz /readyz /metrics (pod IP, for probes and scraping)
    envoy_admin_port: int = 9901  # loopback only
    stats_port: int = 9902  # Envoy's GET /stats/prometheus listener (pod IP)
    # Envoy's worker threads. Unset, Envoy starts one per CPU of the node (64 on a 64-core node), each with
    # its own upstream connections and buffers; one worker serves thousands of requests/s (README: Sizing).
    envoy_concurrency: int = 2


@dataclass
class InjectResult:
    text: str
    injected: list[str] = field(default_factory=list)  # "Deployment apps/web", ...
    warnings: list[str] = field(default_factory=list)
