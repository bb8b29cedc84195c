"""The ModelArtsService custom resource, parsed into the agent's own models.

The CRD's OpenAPI schema already refuses bad specs at admission; this parse is the second
line of defence (the schema may be older than the controller) and produces the error text
that lands in the CR's Ready condition.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.config import LbPolicy, ServiceSpec
from agent.errors import ConfigError
from agent.validation import parse_networks

_INTERVAL = re.compile(r"^([0-9]{1,4})(s|m)$")
# The CRD's schema lets through names with dots and intervals up to 9999m; neither fits a ServiceSpec
# (a DNS label, at most 3600 s), so they are refused here, per CR, instead of failing every reconcile.
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # long names are hashed into the key
_MAX_INTERVAL_SECONDS = 3600


class _Camel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class SecretRef(_Camel):
    name: str = Field(min_length=1, max_length=253)


class LoadBalancingSpec(_Camel):
    policy: LbPolicy = LbPolicy.least_request
    hash_header: str | None = Field(default=None, alias="hashHeader")


class ModelArtsServiceSpec(_Camel):
    project_id: str = Field(alias="projectId", min_length=1, max_length=64)
    service_id: str = Field(alias="serviceId", min_length=1, max_length=64)
    modelarts_url: str = Field(alias="modelartsUrl")
    iam_url: str | None = Field(default=None, alias="iamUrl")
    credentials_secret_ref: SecretRef = Field(alias="credentialsSecretRef")
    port: int = Field(default=80, ge=1, le=65535)
    protocol: Literal["auto", "http", "https", "grpc", "tcp"] = "auto"
    allowed_cidrs: tuple[str, ...] | None = Field(default=None, alias="allowedCIDRs")
    poll_interval: str = Field(default="15s", alias="pollInterval")
    service_type: Literal["ClusterIP", "Headless"] = Field(default="ClusterIP", alias="serviceType")
    load_balancing: LoadBalancingSpec = Field(default_factory=LoadBalancingSpec, alias="loadBalancing")

    @field_validator("modelarts_url", "iam_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+/?$", value):
            raise ValueError("must be an http(s) URL with no path")
        return value.rstrip("/") if value else value

    @field_validator("allowed_cidrs")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            parse_networks(value)
        return value

    @field_validator("poll_interval")
    @classmethod
    def _interval(cls, value: str) -> str:
        match = _INTERVAL.match(value)
        if not match:
            raise ValueError("must look like 15s or 2m")
        if float(match.group(1)) * (60 if match.group(2) == "m" else 1) > _MAX_INTERVAL_SECONDS:
            raise ValueError("must be at most 60m")
        return value

    @property
    def poll_interval_seconds(self) -> float:
        match = _INTERVAL.match(self.poll_interval)
        assert match is not None
        return float(match.group(1)) * (60 if match.group(2) == "m" else 1)


@dataclass(frozen=True)
class ModelArtsServiceResource:
    """One CR as the controller sees it."""

    namespace: str
    name: str
    uid: str
    generation: int
    spec: ModelArtsServiceSpec

    @property
    def key(self) -> str:
        """The service's name in the snapshot: a DNS label unique across namespaces."""
        key = f"{self.namespace}--{self.name}"
        if len(key) <= 63:
            return key
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        return f"{key[:54].rstrip('-')}-{digest}"

    def service_spec(self, default_interval: float) -> ServiceSpec:
        protocol = self.spec.protocol
        return ServiceSpec(
            name=self.key,
            service_id=self.spec.service_id,
            project_id=self.spec.project_id,
            poll_interval_seconds=max(1.0, self.spec.poll_interval_seconds or default_interval),
            protocol=protocol,
        )


def parse_resource(obj: dict[str, Any]) -> ModelArtsServiceResource:
    meta = obj.get("metadata") or {}
    name, namespace = meta.get("name", "?"), meta.get("namespace", "?")
    try:
        spec = ModelArtsServiceSpec.model_validate(obj.get("spec") or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"spec.{'.'.join(str(p) for p in err['loc'])}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise ConfigError(f"ModelArtsService {namespace}/{name} is invalid: {problems}") from None
    if not _LABEL.match(str(name)):
        raise ConfigError(f"ModelArtsService {namespace}/{name} is invalid: metadata.name: must be a DNS label "
                          f"(lower-case letters, digits and '-'; no '.'): it names a Service")
    return ModelArtsServiceResource(namespace=namespace, name=name, uid=str(meta.get("uid", "")),
                                    generation=int(meta.get("generation") or 0), spec=spec)
