"""Scenario models for the emulator: users, limits, services. Loadable from YAML or built in code.

Every model forbids unknown keys, so a typo in a scenario file is an error rather than a
silently ignored setting. Secrets (passwords, SKs) are `SecretStr` so they never show up in a
repr, a log line or the CLI's ready line.
"""

from __future__ import annotations

import hashlib
import ipaddress
import uuid
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

DEFAULT_PROJECT_ID = "0123456789abcdef0123456789abcdef"
DEFAULT_PROJECT_NAME = "cn-north-4"
DEFAULT_DOMAIN = "demo-domain"
DEFAULT_USER = "demo-user"
DEFAULT_PASSWORD = "demo-password"
DEFAULT_AK = "DEMOAK0123456789ABCD"
DEFAULT_SK = "demo-sk-0123456789abcdefghijklmnopqrstuv"

ServiceStatus = Literal["running", "deploying", "concerning", "failed", "stopped", "stopping", "pending", "waiting"]
SERVICE_STATUSES: tuple[str, ...] = (
    "running", "deploying", "concerning", "failed", "stopped", "stopping", "pending", "waiting",
)
# Each schema is served for real: http/https by aiohttp (JSON, SSE, WebSocket), grpc by grpcio over HTTP/2.
Schema = Literal["http", "https", "tcp", "grpc"]


class ScenarioError(ValueError):
    """A scenario file or model that cannot be used; the message is one readable line."""


def stable_id(*parts: str) -> str:
    """Deterministic 32-hex id (IAM ids look like this), so a scenario always yields the same ids."""
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:32]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AccessKey(_Model):
    ak: str = Field(min_length=1)
    sk: SecretStr


class UserConfig(_Model):
    domain: str = DEFAULT_DOMAIN
    name: str = DEFAULT_USER
    password: SecretStr = SecretStr(DEFAULT_PASSWORD)
    project_id: str = DEFAULT_PROJECT_ID
    project_name: str = DEFAULT_PROJECT_NAME
    access_keys: list[AccessKey] = Field(default_factory=list)

    @property
    def domain_id(self) -> str:
        return stable_id("domain", self.domain)

    @property
    def user_id(self) -> str:
        return stable_id("user", self.domain, self.name)


def default_users() -> list[UserConfig]:
    return [UserConfig(access_keys=[AccessKey(ak=DEFAULT_AK, sk=SecretStr(DEFAULT_SK))])]


class LimitsConfig(_Model):
    per_user_per_minute: int = Field(default=20, ge=1)
    per_tenant_per_minute: int = Field(default=2000, ge=1)
    # The real gateway's 429 may come without Retry-After, so clients must cope with both.
    send_retry_after: bool = False
    max_clock_skew_seconds: float = Field(default=900.0, ge=0)
    # The "per minute" window; only tests that want a quick slide should change it.
    window_seconds: float = Field(default=60.0, gt=0)


Distribution = Literal["exponential", "lognormal", "uniform", "normal", "constant"]


class LatencyConfig(_Model):
    base_ms: float = Field(default=0.0, ge=0)
    jitter_ms: float = Field(default=0.0, ge=0)
    distribution: Distribution = "exponential"
    # lognormal: the jitter is jitter_ms x a lognormal factor with mean 1 and this shape (the sigma of its
    # log; 0.5 is a CV of ~0.53, the long right tail of real inference times without exponential's mass at 0)
    sigma: float = Field(default=0.5, gt=0, le=3)


class StreamConfig(_Model):
    """Token streams (SSE, gRPC Generate, WebSocket generate): how many tokens, how fast, and when to fail."""

    tokens: int = Field(default=5, ge=0, le=1_000_000)
    first_token_ms: float = Field(default=0.0, ge=0)  # after the response has started (headers sent)
    interval_ms: float = Field(default=50.0, ge=0)  # between tokens
    # Mid-stream failure: after this many tokens the stream is reset (SSE, WebSocket: the connection
    # is aborted; gRPC: the call ends with UNAVAILABLE). None: streams end normally.
    reset_after: int | None = Field(default=None, ge=0)


class ServiceConfig(_Model):
    # ModelArts service names: letters, digits, '-' and '_', 1-64 characters.
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    service_id: str = Field(default_factory=lambda: str(uuid.uuid4()), pattern=r"^[A-Za-z0-9-]{1,64}$")
    project_id: str | None = None  # None: the first user's project
    status: ServiceStatus = "running"
    instances: int = Field(default=1, ge=0, le=1000)
    schema_: Schema = Field(default="http", alias="schema")
    port: int = Field(default=0, ge=0, le=65535)  # 0: an ephemeral port per instance
    bind_addresses: list[str] | None = None
    # Every instance on this one address, each on its own port (port must be 0): an emulator in a pod,
    # which has a single IP.
    shared_address: str | None = None
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    concurrency: int | None = Field(default=None, ge=1)
    stream: StreamConfig = Field(default_factory=StreamConfig)

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @model_validator(mode="after")
    def _check_addresses(self) -> ServiceConfig:
        if self.shared_address is not None:
            ipaddress.ip_address(self.shared_address)
            if self.port != 0:
                raise ValueError("shared_address needs port 0 (each instance gets its own port)")
        if self.bind_addresses is not None:
            for addr in self.bind_addresses:
                ipaddress.ip_address(addr)  # raises ValueError -> validation error
            if len(set(self.bind_addresses)) != len(self.bind_addresses):
                raise ValueError("bind_addresses has duplicates")
            if self.instances > len(self.bind_addresses):
                raise ValueError(
                    f"{self.instances} instances but only {len(self.bind_addresses)} bind_addresses"
                )
        return self


class EmulatorConfig(_Model):
    host: str = "127.0.0.1"  # IAM, ModelArts and admin listeners
    iam_port: int = Field(default=0, ge=0, le=65535)
    modelarts_port: int = Field(default=0, ge=0, le=65535)
    admin_port: int = Field(default=0, ge=0, le=65535)
    api_tls: bool = False  # serve IAM and ModelArts over HTTPS with the emulator CA
    users: list[UserConfig] = Field(default_factory=default_users, min_length=1)
    token_ttl_seconds: float = Field(default=86400.0, gt=0)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    services: list[ServiceConfig] = Field(default_factory=list)
    instance_address_base: str = "127.0.0.10"
    drain_timeout_seconds: float = Field(default=30.0, ge=0)
    tls_dir: Path | None = None  # None: a temporary directory removed on stop
    seed: int | None = None  # latency / error-rate randomness

    @model_validator(mode="after")
    def _check(self) -> EmulatorConfig:
        ipaddress.ip_address(self.host)
        if ipaddress.ip_address(self.instance_address_base).version != 4:
            raise ValueError("instance_address_base must be an IPv4 address")
        seen_users: set[tuple[str, str]] = set()
        seen_aks: set[str] = set()
        for user in self.users:
            key = (user.domain, user.name)
            if key in seen_users:
                raise ValueError(f"duplicate user {user.name!r} in domain {user.domain!r}")
            seen_users.add(key)
            for access_key in user.access_keys:
                if access_key.ak in seen_aks:
                    raise ValueError(f"duplicate access key {access_key.ak!r}")
                seen_aks.add(access_key.ak)
        projects = {u.project_id for u in self.users}
        names: set[str] = set()
        ids: set[str] = set()
        for svc in self.services:
            if svc.project_id is None:
                svc.project_id = self.users[0].project_id
            if svc.project_id not in projects:
                raise ValueError(f"service {svc.name!r}: project_id {svc.project_id!r} belongs to no user")
            if svc.name in names or svc.service_id in ids:
                raise ValueError(f"duplicate service name or id: {svc.name!r}")
            names.add(svc.name)
            ids.add(svc.service_id)
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> EmulatorConfig:
        """Load a scenario file; any problem becomes one `ScenarioError` line."""
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ScenarioError(f"cannot read scenario {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ScenarioError(f"scenario {path} is not valid YAML: {exc}".replace("\n", " ")) from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ScenarioError(f"scenario {path} must be a mapping at the top level")
        return cls.parse(data, source=str(path))

    @classmethod
    def parse(cls, data: object, source: str = "scenario") -> EmulatorConfig:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ScenarioError(f"invalid {source}: {describe_validation_error(exc)}") from None


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def demo_config(services: int = 1, instances: int = 2, **overrides: object) -> EmulatorConfig:
    """The default demo scenario: `services` HTTP services named demo-svc-N, `instances` each."""
    svcs = [
        ServiceConfig(name=f"demo-svc-{i + 1}", service_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"demo-svc-{i + 1}")),
                      instances=instances)
        for i in range(services)
    ]
    return EmulatorConfig.model_validate({"services": svcs, **overrides})
