"""One pod template: remove what an earlier injection added, check ports and the ServiceAccount, add the
sidecars (native sidecars or plain containers) and record the config in the annotation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

from agent import __version__
from agent.inject.containers import agent_container, bootstrap_container, envoy_container, volumes
from agent.inject.model import (
    ANNOTATION_CONFIG,
    ANNOTATION_INJECTED,
    INJECTED_CONTAINERS,
    INJECTED_VOLUMES,
    InjectError,
    InjectOptions,
)
from agent.inject.sidecar_config import sidecar_config


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
    containers = [bootstrap_container(options), agent_container(options, spec), envoy_container(options)]
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
    spec["volumes"] = [*spec["volumes"], *volumes(spec)]
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
