"""The sidecar's config, as the injector writes it into the pod annotation: `--config` (or the previous
injection's) with the `--service` ports and the pod-local addresses filled in, refused now if the sidecar would
refuse it at start-up."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from agent.config import DataPlaneConfig, parse_as, without_modelarts_side
from agent.inject.documents import dump_yaml
from agent.inject.model import ANNOTATION_CONFIG, RUN_DIR, InjectError, InjectOptions


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
