"""`modelarts-agent inject`: add the agent sidecar and Envoy to app workloads (like `istioctl kube-inject`).

For every Deployment, StatefulSet or Pod in a multi-document YAML stream, the pod template gets:

- an emptyDir at /var/run/modelarts shared by the agent and Envoy (Envoy's files and bootstrap);
- `modelarts-bootstrap`, an init container that writes the Envoy bootstrap there;
- `modelarts-agent` (`modelarts-agent sidecar`: EndpointSlices -> Envoy files) and `modelarts-envoy`,
  as native sidecars (init containers with restartPolicy: Always), so both run before the app's
  containers start and stop after they exit;
- the sidecar config, kept in the pod annotation `sidecar.modelarts.io/config` and projected into
  the containers as a file by a downwardAPI volume (why: see `volumes` in containers.py).

Every other document passes through byte for byte. Injecting an injected workload again gives the
same result: what a previous run added is removed first, and its config is the base for the new one.
"""

from __future__ import annotations

from typing import Any

from agent.errors import AgentError
from agent.inject.documents import dump_like, load_document, split_documents
from agent.inject.model import InjectError, InjectOptions, InjectResult
from agent.inject.pod import inject_pod

_WORKLOADS = {"Deployment": ("spec", "template"), "StatefulSet": ("spec", "template"), "Pod": ()}
_OTHER_POD_KINDS = ("DaemonSet", "ReplicaSet", "ReplicationController", "Job", "CronJob", "PodTemplate")


def inject_text(text: str, options: InjectOptions, source: str = "input") -> InjectResult:
    result = InjectResult(text="")
    out: list[str] = []
    first_line = 1
    for index, chunk in enumerate(split_documents(text), start=1):
        doc = load_document(chunk, source, index, first_line)
        changed = doc is not None and _inject_document(doc, options, result, f"document {index} of {source}")
        out.append(dump_like(chunk, doc) if changed else chunk)
        first_line += chunk.count("\n")
    result.text = "".join(out)
    return result


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
