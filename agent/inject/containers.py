"""The containers and volumes the injector adds to a pod: the bootstrap init container, the agent and Envoy
sidecars, their probes, resources and security context."""

from __future__ import annotations

from typing import Any

from agent.inject.model import (
    AGENT,
    ANNOTATION_CONFIG,
    BOOTSTRAP,
    BOOTSTRAP_PATH,
    CONFIG_DIR,
    CONFIG_PATH,
    ENVOY,
    ENVOY_BINARY,
    RUN_DIR,
    SA_TOKEN_DIR,
    UID,
    VOLUME_CONFIG,
    VOLUME_RUN,
    VOLUME_TMP,
    VOLUME_TOKEN,
    InjectOptions,
)


def restricted_security_context() -> dict[str, Any]:
    """Pod Security Standards "restricted", plus a read-only root filesystem."""
    return {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}


def _resources(cpu: str, memory: str, memory_limit: str) -> dict[str, Any]:
    # No CPU limit: throttling a proxy adds latency to every request.
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory_limit}}


def _mounts(*names: str) -> list[dict[str, Any]]:
    paths = {VOLUME_RUN: RUN_DIR, VOLUME_TMP: "/tmp", VOLUME_CONFIG: CONFIG_DIR, VOLUME_TOKEN: SA_TOKEN_DIR}
    read_only = {VOLUME_CONFIG, VOLUME_TOKEN}
    return [{"name": n, "mountPath": paths[n], **({"readOnly": True} if n in read_only else {})} for n in names]


def bootstrap_container(options: InjectOptions) -> dict[str, Any]:
    return {"name": BOOTSTRAP, "image": options.image,
            "args": ["render", "bootstrap", "--config", CONFIG_PATH, "--output", BOOTSTRAP_PATH],
            "resources": _resources("10m", "64Mi", "256Mi"), "securityContext": restricted_security_context(),
            "volumeMounts": _mounts(VOLUME_RUN, VOLUME_CONFIG, VOLUME_TMP)}


def agent_container(options: InjectOptions, spec: dict[str, Any]) -> dict[str, Any]:
    mounts = _mounts(VOLUME_RUN, VOLUME_CONFIG, VOLUME_TMP)
    if spec.get("automountServiceAccountToken") is False:
        mounts += _mounts(VOLUME_TOKEN)  # only this container gets the token
    return {
        "name": AGENT, "image": options.image, "args": ["sidecar", "--config", CONFIG_PATH],
        "env": [{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
        "ports": [{"name": "modelarts-admin", "containerPort": options.admin_port, "protocol": "TCP"}],
        # Started = the process answers; ready = it has seen the Service's endpoints.
        "startupProbe": _http_probe("/healthz", "modelarts-admin", period=1, failures=60),
        "livenessProbe": _http_probe("/healthz", "modelarts-admin", period=10, failures=3),
        "readinessProbe": _http_probe("/readyz", "modelarts-admin", period=5, failures=3),
        "resources": _resources("20m", "64Mi", "256Mi"), "securityContext": restricted_security_context(),
        "volumeMounts": mounts,
    }


def envoy_container(options: InjectOptions) -> dict[str, Any]:
    return {
        "name": ENVOY, "image": options.image, "command": [ENVOY_BINARY],
        "args": ["-c", BOOTSTRAP_PATH, "--disable-hot-restart", "--concurrency", str(options.envoy_concurrency)],
        "ports": [{"name": "modelarts-stats", "containerPort": options.stats_port, "protocol": "TCP"}],
        # The admin API stays on loopback; the stats listener answers once Envoy runs.
        "startupProbe": _http_probe("/stats/prometheus", "modelarts-stats", period=1, failures=60),
        "livenessProbe": _http_probe("/stats/prometheus", "modelarts-stats", period=10, failures=3),
        "resources": _resources("50m", "64Mi", "512Mi"), "securityContext": restricted_security_context(),
        "volumeMounts": [{"name": VOLUME_RUN, "mountPath": RUN_DIR, "readOnly": True}, *_mounts(VOLUME_TMP)],
    }


def _http_probe(path: str, port: str, *, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period, "timeoutSeconds": 3,
            "failureThreshold": failures}


def volumes(spec: dict[str, Any]) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": VOLUME_RUN, "emptyDir": {"sizeLimit": "64Mi"}},
        {"name": VOLUME_TMP, "emptyDir": {"sizeLimit": "64Mi"}},
        # Config in an annotation, projected as a file: one self-contained document per workload, no
        # ConfigMap to create, namespace or garbage-collect, and a config change is a pod template
        # change, so a Deployment rolls out with it.
        {"name": VOLUME_CONFIG, "downwardAPI": {"items": [
            {"path": "sidecar.yaml", "fieldRef": {"fieldPath": f"metadata.annotations['{ANNOTATION_CONFIG}']"}}]}},
    ]
    if spec.get("automountServiceAccountToken") is False:
        # The pod opted out of the API token; the agent still needs one to watch EndpointSlices.
        volumes.append({"name": VOLUME_TOKEN, "projected": {"sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
        ]}})
    return volumes
