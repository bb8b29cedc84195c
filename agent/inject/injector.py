"""`modelarts-agent inject`: add the agent sidecar and Envoy to app workloads (like `istioctl kube-inject`).

For every Deployment, StatefulSet or Pod in a multi-document YAML stream, the pod template gets:

- an emptyDir at /var/run/modelarts shared by the agent and Envoy (Envoy's files and bootstrap);
- `modelarts-bootstrap`, an init container that writes the Envoy bootstrap there;
- `modelarts-agent` (`modelarts-agent sidecar`: EndpointSlices -> Envoy files) and `modelarts-envoy`,
  as native sidecars (init containers with restartPolicy: Always), so both run before the app's
  containers start and stop after they exit;
- the sidecar config, kept in the pod annotation `sidecar.modelarts.io/config` and projected into
  the containers as a file by a downwardAPI volume (why: see docs in `config_volume`).

Every other document passes through byte for byte. Injecting an injected workload again gives the
same result: what a previous run added is removed first, and its config is the base for the new one.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from agent import __version__
from agent.config import DataPlaneConfig, parse_as, without_modelarts_side
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
_WORKLOADS = {"Deployment": ("spec", "template"), "StatefulSet": ("spec", "template"), "Pod": ()}
_OTHER_POD_KINDS = ("DaemonSet", "ReplicaSet", "ReplicationController", "Job", "CronJob", "PodTemplate")
_MARKER = re.compile(r"^---(?:[ \t]|$)")


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


# --- the YAML stream ----------------------------------------------------------------------------


def split_documents(text: str) -> list[str]:
    """Split a YAML stream at `---` lines, keeping each marker with the document it opens."""
    chunks: list[list[str]] = [[]]
    for line in text.splitlines(keepends=True):
        if _MARKER.match(line) and any(not _blank_or_comment(x) for x in chunks[-1]):
            chunks.append([])
        chunks[-1].append(line)
    return ["".join(c) for c in chunks if c]


def _blank_or_comment(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("#") or stripped == "---"


def inject_text(text: str, options: InjectOptions, source: str = "input") -> InjectResult:
    result = InjectResult(text="")
    out: list[str] = []
    first_line = 1
    for index, chunk in enumerate(split_documents(text), start=1):
        doc = _load(chunk, source, index, first_line)
        changed = doc is not None and _inject_document(doc, options, result, f"document {index} of {source}")
        out.append(_dump_like(chunk, doc) if changed else chunk)
        first_line += chunk.count("\n")
    result.text = "".join(out)
    return result


def _load(chunk: str, source: str, index: int, first_line: int) -> Any:
    try:
        docs = list(yaml.safe_load_all(chunk))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {first_line + mark.line}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise InjectError(f"invalid YAML in document {index} of {source}{where}: {problem}") from None
    docs = [d for d in docs if d is not None]
    if len(docs) > 1:
        raise InjectError(f"document {index} of {source}: could not tell its documents apart; "
                          f"separate documents with a line holding only ---")
    return docs[0] if docs else None


def _dump_like(chunk: str, doc: dict[str, Any]) -> str:
    """The new document, keeping the original's leading comments and `---` marker."""
    head: list[str] = []
    for line in chunk.splitlines(keepends=True):
        if not _blank_or_comment(line):
            break
        head.append(line if line.endswith("\n") else line + "\n")
    return "".join(head) + dump_yaml(doc)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the config annotation) as literal blocks, so the output stays readable."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _represent_str)


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


def _inject_document(doc: Any, options: InjectOptions, result: InjectResult, where: str) -> bool:
    if not isinstance(doc, dict):
        raise InjectError(f"{where} is not a Kubernetes object (a mapping with apiVersion and kind)")
    kind = doc.get("kind")
    if not isinstance(kind, str) or not isinstance(doc.get("apiVersion"), str):
        raise InjectError(f"{where} is not a Kubernetes object: apiVersion and kind are required")
    if kind == "List" and isinstance(doc.get("items"), list):
        changed = False
        for i, item in enumerate(doc["items"]):
            changed = _inject_document(item, options, result, f"{where}, item {i}") or changed
        return changed
    name = _name(doc)
    if kind in _OTHER_POD_KINDS:
        raise InjectError(f"{where}: {kind} {name} is not supported; inject handles Deployment, StatefulSet "
                          f"and Pod (inject the pod template by hand or wrap it in a supported kind)")
    if kind not in _WORKLOADS:
        return False
    template = doc
    for key in _WORKLOADS[kind]:
        child = template.get(key)
        if not isinstance(child, dict):
            raise InjectError(f"{where}: {kind} {name} has no {'.'.join(_WORKLOADS[kind])}")
        template = child
    spec = template.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("containers"), list) or not spec["containers"]:
        raise InjectError(f"{where}: {kind} {name} has no containers")
    metadata = template.setdefault("metadata", {})
    if not isinstance(metadata, dict):
        raise InjectError(f"{where}: {kind} {name} has an invalid metadata field")
    try:
        warnings = inject_pod(metadata, spec, options)
    except AgentError as exc:  # InjectError or the config's ConfigError: say which workload
        raise InjectError(f"{where}: {kind} {name}: {exc}") from None
    result.warnings.extend(f"{kind} {name}: {w}" for w in warnings)
    result.injected.append(f"{kind} {name}")
    return True


def _name(doc: dict[str, Any]) -> str:
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict):
        metadata = {}
    name = str(metadata.get("name") or metadata.get("generateName") or "(unnamed)")
    return f"{metadata['namespace']}/{name}" if metadata.get("namespace") else name


# --- one pod template ---------------------------------------------------------------------------


def inject_pod(metadata: dict[str, Any], spec: dict[str, Any], options: InjectOptions) -> list[str]:
    """Add (or replace) the sidecars in a pod's metadata and spec, in place. Returns warnings."""
    for owner, key in ((metadata, "annotations"), (spec, "initContainers"), (spec, "volumes")):
        if key in owner and owner[key] is None:  # `key:` with no value
            owner[key] = {} if key == "annotations" else []
    annotations = metadata.setdefault("annotations", {})
    if not isinstance(annotations, dict):
        raise InjectError("metadata.annotations must be a mapping")
    if spec.get("hostNetwork"):
        raise InjectError("hostNetwork pods are not supported: the sidecar's ports would be the node's")
    previous = annotations.get(ANNOTATION_CONFIG)
    config_text = sidecar_config(options, previous if isinstance(previous, str) else None)
    _remove_injected(annotations, spec)
    _check_ports(spec, options, config_text)
    warnings = _service_account(spec, options)
    containers = [_bootstrap_container(options), _agent_container(options, spec), _envoy_container(options)]
    init = spec.setdefault("initContainers", [])
    if options.native_sidecars:
        # restartPolicy: Always makes an init container a sidecar: started in order before the app
        # (each once its startupProbe passes), running alongside it, stopped after it.
        sidecars = [{"name": c["name"], "image": c["image"], "restartPolicy": "Always", **c} for c in containers[1:]]
        spec["initContainers"] = [containers[0], *sidecars, *init]
    else:
        spec["initContainers"] = [containers[0], *init]
        spec["containers"] = [*spec["containers"], *containers[1:]]
    spec.setdefault("volumes", [])
    spec["volumes"] = [*spec["volumes"], *_volumes(spec)]
    annotations[ANNOTATION_INJECTED] = __version__
    annotations[ANNOTATION_CONFIG] = config_text
    return warnings


def _remove_injected(annotations: dict[str, Any], spec: dict[str, Any]) -> None:
    annotations.pop(ANNOTATION_CONFIG, None)
    annotations.pop(ANNOTATION_INJECTED, None)
    for key in ("initContainers", "containers", "volumes"):
        items = spec.get(key)
        if items is None:
            continue
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise InjectError(f"spec.{key} must be a list of mappings")
        names = INJECTED_VOLUMES if key == "volumes" else INJECTED_CONTAINERS
        spec[key] = [i for i in items if i.get("name") not in names]


def sidecar_config(options: InjectOptions, previous: str | None = None) -> str:
    """The sidecar's config YAML: `--config` (else the previous injection's), plus `--service` ports."""
    data = copy.deepcopy(options.base_config) if options.base_config is not None else _previous(previous)
    # A sidecar config is a DataPlaneConfig: the placeholder modelarts/auth/service_id of earlier injections go.
    data, _unused = without_modelarts_side(data)
    services = data.get("services") or []
    if not isinstance(services, list) or not all(isinstance(s, dict) and "name" in s for s in services):
        raise InjectError("the sidecar config's services must be a list of mappings with a name")
    by_name = {str(s["name"]): s for s in services}
    for name, port in options.services:
        entry = by_name.get(name)
        if entry is None:
            entry = by_name[name] = {"name": name}
            services.append(entry)
        entry["listen_port"] = port
    if not services:
        raise InjectError("no services to follow: give --service NAME=PORT (NAME is the Kubernetes Service, "
                          "i.e. the ModelArtsService; PORT the local port the app calls)")
    data["services"] = services
    data["envoy"] = {**(data.get("envoy") or {}), "output_dir": f"{RUN_DIR}/envoy",
                     "admin_port": options.envoy_admin_port, "stats_port": options.stats_port}
    data["admin"] = {**(data.get("admin") or {}), "address": "0.0.0.0", "port": options.admin_port}
    parse_as(DataPlaneConfig, data, "the sidecar config")  # refuse now what the sidecar would refuse at start-up
    return dump_yaml(data)


def _previous(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        raise InjectError(f"the {ANNOTATION_CONFIG} annotation of an injected workload is not valid YAML") from None
    if not isinstance(data, dict):
        raise InjectError(f"the {ANNOTATION_CONFIG} annotation of an injected workload is not a mapping")
    return data


def _check_ports(spec: dict[str, Any], options: InjectOptions, config_text: str) -> None:
    ours = {options.admin_port: "the agent's admin port", options.envoy_admin_port: "Envoy's admin port",
            options.stats_port: "Envoy's stats port"}
    if len(ours) < 3:
        raise InjectError("--admin-port, --envoy-admin-port and --stats-port must differ")
    for entry in yaml.safe_load(config_text)["services"]:
        port = entry.get("listen_port")
        if port in ours:
            raise InjectError(f"service {entry['name']} listens on {port}, which is {ours[port]}")
        if port is not None:
            ours[int(port)] = f"the listener of {entry['name']}"
    for container in _all_containers(spec):
        for port in container.get("ports") or []:
            number = port.get("containerPort") if isinstance(port, dict) else None
            if number in ours:
                raise InjectError(f"container {container.get('name')} uses port {number}, which is {ours[number]}; "
                                  f"choose other ports (--admin-port, --stats-port, --envoy-admin-port, --service)")


def _all_containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for key in ("initContainers", "containers"):
        yield from (c for c in spec.get(key) or [] if isinstance(c, dict))


def _service_account(spec: dict[str, Any], options: InjectOptions) -> list[str]:
    current = spec.get("serviceAccountName") or spec.get("serviceAccount")
    if not current or current == "default":
        spec.pop("serviceAccount", None)  # the deprecated alias would contradict the new name
        spec["serviceAccountName"] = options.service_account
        return []
    if current == options.service_account:
        return []
    return [f"keeps serviceAccountName {current}: give it get/list/watch on endpointslices in its namespace "
            f"(manifests/rbac/sidecar.yaml)"]


# --- what gets added ----------------------------------------------------------------------------


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


def _bootstrap_container(options: InjectOptions) -> dict[str, Any]:
    return {"name": BOOTSTRAP, "image": options.image,
            "args": ["render", "bootstrap", "--config", CONFIG_PATH, "--output", BOOTSTRAP_PATH],
            "resources": _resources("10m", "64Mi", "256Mi"), "securityContext": restricted_security_context(),
            "volumeMounts": _mounts(VOLUME_RUN, VOLUME_CONFIG, VOLUME_TMP)}


def _agent_container(options: InjectOptions, spec: dict[str, Any]) -> dict[str, Any]:
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


def _envoy_container(options: InjectOptions) -> dict[str, Any]:
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


def _volumes(spec: dict[str, Any]) -> list[dict[str, Any]]:
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
