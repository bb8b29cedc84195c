"""Agent configuration: YAML plus environment overrides, validated by pydantic.

`load_config` turns every problem into a `ConfigError` whose message names the field and the
reason, so the CLI can print it without a traceback.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.errors import ConfigError
from agent.validation import DEFAULT_ALLOWED_CIDRS, parse_networks

ENV_PREFIX = "MODELARTS_AGENT__"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- ModelArts access ------------------------------------------------------------------------


class ModelArtsEndpoints(Strict):
    iam_url: str = Field(description="IAM endpoint, e.g. https://iam.cn-north-4.myhuaweicloud.com")
    modelarts_url: str = Field(description="ModelArts endpoint, e.g. https://modelarts.cn-north-4.myhuaweicloud.com")
    project_id: str = Field(min_length=1, max_length=64)
    verify_tls: bool = True
    ca_file: Path | None = None
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)

    @field_validator("iam_url", "modelarts_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")


class AuthMode(StrEnum):
    password = "password"
    aksk = "aksk"
    token = "token"


class AuthConfig(Strict):
    """Where credentials come from. Secrets are never written here: only env names or files."""

    mode: AuthMode = AuthMode.password
    domain: str | None = Field(default=None, description="IAM account (domain) name")
    user: str | None = Field(default=None, description="IAM user name")
    password_env: str = "MODELARTS_PASSWORD"
    password_file: Path | None = None
    ak_env: str = "MODELARTS_AK"
    sk_env: str = "MODELARTS_SK"
    ak_file: Path | None = None
    sk_file: Path | None = None
    token_env: str = "MODELARTS_TOKEN"
    token_file: Path | None = None
    # Refresh an IAM token this long before it expires (capped at a tenth of its lifetime).
    token_refresh_margin_seconds: float = Field(default=3600, ge=0)
    # Cache IAM tokens in budget.state_dir (0600 files) for this user's other processes on the host.
    token_cache: bool = True

    @model_validator(mode="after")
    def _needs(self) -> AuthConfig:
        if self.mode is AuthMode.password and not (self.domain and self.user):
            raise ValueError("password auth needs auth.domain and auth.user")
        return self


class BudgetConfig(Strict):
    per_user_per_minute: int = Field(default=20, ge=1, le=100_000)
    per_tenant_per_minute: int = Field(default=2000, ge=1, le=1_000_000)
    # Extra seconds added to the 60 s window: the gateway counts arrivals, we count departures.
    safety_margin_seconds: float = Field(default=2.0, ge=0, le=30)
    # Share the budget (and the IAM token) with this user's other agent processes on the host, through
    # files in state_dir (default: $XDG_RUNTIME_DIR/modelarts-agent, else /tmp/modelarts-agent-<uid>).
    host_wide: bool = True
    state_dir: Path | None = None


class DiscoveryConfig(Strict):
    allowed_cidrs: tuple[str, ...] = DEFAULT_ALLOWED_CIDRS
    default_poll_interval_seconds: float = Field(default=15.0, ge=1, le=3600)
    stale_after_seconds: float = Field(default=120.0, ge=1)
    empty_confirmations: int = Field(default=3, ge=1, le=100)
    max_endpoints: int = Field(default=1000, ge=1, le=100_000)
    max_backoff_seconds: float = Field(default=300.0, ge=1)
    # Where to persist last-known-good endpoints across restarts (None: don't).
    state_file: Path | None = None

    @field_validator("allowed_cidrs")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        parse_networks(value)
        return value


# --- Per-service data-plane policy (rendered into Envoy) ---------------------------------------


class LbPolicy(StrEnum):
    least_request = "least_request"
    round_robin = "round_robin"
    random = "random"
    ring_hash = "ring_hash"
    maglev = "maglev"

    @property
    def sticky(self) -> bool:
        """Hashes on a key (HashKey), so one user keeps one instance."""
        return self in (LbPolicy.ring_hash, LbPolicy.maglev)


class HashKey(Strict):
    """What sticky policies (ring_hash, maglev) hash on: one of header, cookie or source_ip."""

    header: str | None = None
    cookie: str | None = None
    source_ip: bool = False

    @model_validator(mode="after")
    def _one(self) -> HashKey:
        if sum([self.header is not None, self.cookie is not None, self.source_ip]) != 1:
            raise ValueError("set exactly one of header, cookie or source_ip")
        return self


class LoadBalancing(Strict):
    policy: LbPolicy = LbPolicy.least_request
    choice_count: int | None = Field(default=None, ge=2, le=100)
    hash_key: HashKey | None = None
    # Latency-aware endpoint weights from the agent's feedback loop (docs/adaptive-lb.md); least_request only.
    # "auto" (the default): on for least_request over http, https and grpc; off for tcp and other policies.
    adaptive: bool | Literal["auto"] = "auto"

    @model_validator(mode="after")
    def _hash(self) -> LoadBalancing:
        sticky = self.policy in (LbPolicy.ring_hash, LbPolicy.maglev)
        if sticky and self.hash_key is None:
            raise ValueError(f"policy {self.policy.value} needs hash_key (header, cookie or source_ip)")
        if not sticky and self.hash_key is not None:
            raise ValueError("hash_key only applies to ring_hash and maglev")
        if self.adaptive is True and self.policy is not LbPolicy.least_request:
            raise ValueError("adaptive needs policy least_request (Envoy weighs it by active requests)")
        return self


class HealthCheck(Strict):
    # auto: grpc.health.v1 Check for gRPC services, an HTTP GET of `path` for the others.
    type: Literal["auto", "http", "tcp"] = "auto"
    path: str = "/health"
    grpc_service_name: str = ""  # the service asked about in grpc.health.v1 ("" = the whole server)
    interval_seconds: float = Field(default=5.0, gt=0)
    timeout_seconds: float = Field(default=2.0, gt=0)
    unhealthy_threshold: int = Field(default=2, ge=1)
    healthy_threshold: int = Field(default=1, ge=1)


class OutlierDetection(Strict):
    enabled: bool = True
    consecutive_5xx: int = Field(default=5, ge=1)
    consecutive_gateway_failure: int = Field(default=2, ge=1)
    consecutive_local_origin_failure: int = Field(default=2, ge=1)
    interval_seconds: float = Field(default=2.0, gt=0)
    base_ejection_seconds: float = Field(default=15.0, gt=0)
    max_ejection_percent: int = Field(default=50, ge=0, le=100)


class Retries(Strict):
    enabled: bool = True
    num_retries: int = Field(default=2, ge=0, le=10)
    # "unavailable" and "cancelled" are gRPC statuses (14 and 1) in a trailers-only answer, i.e. before any
    # message; a gRPC server that stops or sheds load answers them. Neither ever matches plain HTTP.
    retry_on: str = ("connect-failure,refused-stream,reset,gateway-error,retriable-status-codes,"
                     "unavailable,cancelled")
    retriable_status_codes: tuple[int, ...] = (503,)
    # Only requests that are safe to repeat are retried unless the user opts in.
    idempotent_only: bool = True
    idempotency_header: str = "idempotency-key"
    # Paths safe to repeat whatever their method: exact, or a prefix when ending in "/". gRPC calls are all
    # POST, so this is how idempotent gRPC methods are named: "/pkg.Service/Method" or "/pkg.Service/".
    idempotent_paths: tuple[str, ...] = ()
    per_try_timeout_seconds: float | None = Field(default=None, gt=0)
    budget_percent: float = Field(default=20.0, gt=0, le=100)
    min_retry_concurrency: int = Field(default=3, ge=1)

    @field_validator("idempotent_paths")
    @classmethod
    def _paths(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for path in value:
            if not path.startswith("/") or any(c.isspace() for c in path):
                raise ValueError(f"{path!r} is not a request path (it must start with '/', no spaces)")
        return value


class Timeouts(Strict):
    """Defaults suit long, streamed inference: no total timeout, an idle timeout instead."""

    connect_seconds: float = Field(default=2.0, gt=0)
    request_seconds: float = Field(default=0.0, ge=0, description="0 disables the total route timeout")
    idle_seconds: float = Field(default=300.0, ge=0, description="stream idle timeout; 0 disables")
    max_request_bytes: int | None = Field(default=None, ge=1, description="None: no body limit")


class CircuitBreakers(Strict):
    max_connections: int = Field(default=4096, ge=1)
    max_pending_requests: int = Field(default=4096, ge=1)
    max_requests: int = Field(default=4096, ge=1)
    max_retries: int = Field(default=16, ge=0)


class UpstreamTls(Strict):
    ca_file: Path | None = None
    sni: str | None = None
    insecure_skip_verify: bool = False


class AccessLog(Strict):
    """One JSON line per request: service, instance, status, duration (Envoy's own access log).

    Off unless `enabled: true` or a `path` is given. It costs Envoy CPU on every request (docs/benchmarks.md,
    scenario 1's cost table) and ~300 bytes of container log per request (26 GB a day per pod at 1,000 rps),
    while what it tells in aggregate (requests, errors, latency and time to first byte per instance) is in
    Envoy's metrics anyway. Turn it on to trace single requests.
    """

    enabled: bool = False
    path: str = "/dev/stdout"

    @model_validator(mode="before")
    @classmethod
    def _path_turns_it_on(cls, data: Any) -> Any:
        if isinstance(data, dict) and "path" in data and "enabled" not in data:
            return {**data, "enabled": True}
        return data


class ApiKeyAuth(Strict):
    """Clients must send one of the keys in `keys_file` (one per line, optionally `client-name:key`)."""

    keys_file: Path
    header: str = Field(default="x-api-key", pattern=r"^[A-Za-z0-9-]+$")


class JwtAuth(Strict):
    """Clients must send a JWT signed by a key in `jwks_file` (a local JWKS), as `Authorization: Bearer`."""

    issuer: str = Field(min_length=1)
    audiences: tuple[str, ...] = ()
    jwks_file: Path


class ListenerAuth(Strict):
    api_key: ApiKeyAuth | None = None
    jwt: JwtAuth | None = None

    @model_validator(mode="after")
    def _one(self) -> ListenerAuth:
        if (self.api_key is None) == (self.jwt is None):
            raise ValueError("set exactly one of api_key or jwt")
        return self


class ServicePolicy(Strict):
    """A service as the data plane sees it: its name (what it is followed by) and its Envoy policy.

    A sidecar's services are these: it follows Kubernetes Services by name and never looks anything
    up by a ModelArts service id. `ServiceSpec` adds what the ModelArts source needs."""

    name: Annotated[str, Field(description="DNS-1123 label; names the Envoy cluster and listener")]
    listen_port: int | None = Field(default=None, ge=1, le=65535)
    listen_address: str = "127.0.0.1"
    protocol: Literal["auto", "http", "https", "grpc", "tcp"] = "auto"
    lb: LoadBalancing = LoadBalancing()
    health_check: HealthCheck | None = None
    outlier_detection: OutlierDetection = OutlierDetection()
    retries: Retries = Retries()
    timeouts: Timeouts = Timeouts()
    circuit_breakers: CircuitBreakers = CircuitBreakers()
    tls: UpstreamTls = UpstreamTls()
    access_log: AccessLog = AccessLog()
    # Off by default: the direct path had no auth, and turning it on must be a choice.
    auth: ListenerAuth | None = None

    @property
    def discovery_id(self) -> str:
        """The id the snapshot keeps for this service (`ServiceSnapshot.service_id`): here, the name."""
        return self.name

    @property
    def adaptive_lb(self) -> bool:
        """Whether the feedback loop weighs this service's endpoints (`lb.adaptive`, "auto" resolved)."""
        if self.lb.adaptive == "auto":
            return self.lb.policy is LbPolicy.least_request and self.protocol != "tcp"
        return self.lb.adaptive

    @field_validator("listen_address")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _ip_literal(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must be a DNS-1123 label: lower-case letters, digits and '-', at most 63 chars")
        return value


class ServiceSpec(ServicePolicy):
    """A service the agent looks up in ModelArts: its policy, plus where and how often to look."""

    service_id: str = Field(min_length=1, max_length=64)
    project_id: str | None = None
    poll_interval_seconds: float | None = Field(default=None, ge=1, le=3600)

    @property
    def discovery_id(self) -> str:
        return self.service_id


class SplitBackend(Strict):
    service: str
    weight: int = Field(ge=0, le=10_000)


class TrafficSplit(Strict):
    """One listener spreading requests over several services by weight (canary, blue/green)."""

    name: str
    listen_port: int = Field(ge=1, le=65535)
    listen_address: str = "127.0.0.1"
    backends: tuple[SplitBackend, ...] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return ServicePolicy._name(value)

    @field_validator("listen_address")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _ip_literal(value)


def _ip_literal(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None
    return value


class EnvoyConfig(Strict):
    output_dir: Path = Path("run/envoy")
    admin_address: str = "127.0.0.1"
    admin_port: int = Field(default=9901, ge=1, le=65535)
    node_id: str = "modelarts-agent"
    cluster: str = "modelarts-sidecar"
    # A listener that serves only GET /stats/prometheus (None: no such listener).
    stats_port: int | None = Field(default=None, ge=1, le=65535)
    stats_address: str = "0.0.0.0"
    # Write the Envoy files (file mode). False: only the xDS server feeds Envoy (e.g. the gateway).
    files: bool = True

    @field_validator("stats_address")
    @classmethod
    def _stats_ip(cls, value: str) -> str:
        return _ip_literal(value)

    @field_validator("admin_address")
    @classmethod
    def _loopback(cls, value: str) -> str:
        # Envoy's admin API can reconfigure and drain the proxy: never expose it beyond the host.
        if not ipaddress.ip_address(_ip_literal(value)).is_loopback:
            raise ValueError(f"{value} is not a loopback address; Envoy's admin interface must stay on loopback")
        return value


class AdminConfig(Strict):
    address: str = "127.0.0.1"
    port: int = Field(default=8086, ge=0, le=65535)


class XdsTls(Strict):
    """TLS on the xDS port; with `client_ca_file`, Envoys must present a certificate signed by it (mTLS)."""

    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None

    @model_validator(mode="after")
    def _pairs(self) -> XdsTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("set both cert_file and key_file, or neither")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("client_ca_file (mTLS) needs cert_file and key_file")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


class XdsConfig(Strict):
    """The gRPC ADS server (state-of-the-world and delta) for Envoy sidecars and the shared gateway."""

    enabled: bool = False
    address: str = "127.0.0.1"
    port: int = Field(default=18000, ge=1, le=65535)
    tls: XdsTls = XdsTls()

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return _ip_literal(value)


class GatewayConfig(Strict):
    """The one listener of a shared Envoy gateway (nodes with metadata `modelarts.role: gateway`).

    Requests pick a service by Host (`<name>` or `<name>.*`) or by path prefix `/<name>/` (rewritten to `/`).
    """

    listen_address: str = "0.0.0.0"
    listen_port: int = Field(default=8080, ge=1, le=65535)
    route_by_host: bool = True
    route_by_path: bool = True

    @field_validator("listen_address")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _ip_literal(value)

    @model_validator(mode="after")
    def _some_routing(self) -> GatewayConfig:
        if not (self.route_by_host or self.route_by_path):
            raise ValueError("enable route_by_host, route_by_path or both")
        return self


class AdaptiveConfig(Strict):
    """The feedback loop behind `lb.adaptive` (agent/adaptive/, docs/adaptive-lb.md)."""

    # How often Envoy's /clusters is read: in-flight counts are sampled, so faster means less noise.
    sample_interval_seconds: float = Field(default=0.05, ge=0.01, le=10)
    # At most one EDS rewrite per service per interval, and only on a material change.
    update_interval_seconds: float = Field(default=1.0, ge=0.2, le=300)
    # Heaviest weight / lightest weight; the lightest still gets a trickle of probe traffic.
    max_weight_ratio: float = Field(default=100.0, ge=1.5, le=1000)
    # Envoy admin URLs to read (summed); empty: this agent's own Envoy (envoy.admin_address:admin_port).
    envoy_admin_urls: tuple[str, ...] = ()

    @field_validator("envoy_admin_urls")
    @classmethod
    def _urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            match = re.match(r"^http://(\[[0-9a-fA-F:.]+\]|[0-9.]+):(\d{1,5})/?$", url)
            if not match:
                raise ValueError(f"{url!r} is not http://<ip>:<port>")
            _ip_literal(match.group(1).strip("[]"))
        return tuple(url.rstrip("/") for url in value)


class DataPlaneConfig(Strict):
    """What the data plane reads: the services' Envoy policies, splits, Envoy, xDS, the gateway, the admin
    server, the adaptive loop and the discovery rules the store applies. A sidecar's whole config; the
    sinks, the Envoy builders and the adaptive loop take this. `AgentConfig` adds the ModelArts side."""

    discovery: DiscoveryConfig = DiscoveryConfig()
    services: tuple[ServicePolicy, ...] = ()
    splits: tuple[TrafficSplit, ...] = ()
    envoy: EnvoyConfig = EnvoyConfig()
    admin: AdminConfig = AdminConfig()
    adaptive: AdaptiveConfig = AdaptiveConfig()
    xds: XdsConfig = XdsConfig()
    gateway: GatewayConfig = GatewayConfig()

    @model_validator(mode="after")
    def _cross(self) -> Self:
        names = [s.name for s in self.services]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate service names: {', '.join(dupes)}")
        ports: dict[tuple[str, int], str] = {}
        listeners = [(s.name, s.listen_address, s.listen_port) for s in self.services]
        listeners += [(t.name, t.listen_address, t.listen_port) for t in self.splits]
        for name, address, port in listeners:
            if port is None:
                continue
            if (address, port) in ports:
                raise ValueError(f"{name} and {ports[(address, port)]} both listen on {address}:{port}")
            ports[(address, port)] = name
        known = set(names)
        for split in self.splits:
            if split.name in known:
                raise ValueError(f"split {split.name!r} has the same name as a service")
            missing = [b.service for b in split.backends if b.service not in known]
            if missing:
                raise ValueError(f"split {split.name!r} names unknown services: {', '.join(missing)}")
            if sum(b.weight for b in split.backends) == 0:
                raise ValueError(f"split {split.name!r}: weights must not all be 0")
        return self

    def with_service(self, spec: ServicePolicy) -> DataPlaneConfig:
        """This config with the service of `spec`'s name replaced by `spec` (a policy learned at run time)."""
        return self.model_copy(update={"services": tuple(spec if s.name == spec.name else s for s in self.services)})


class AgentConfig(DataPlaneConfig):
    """The whole agent (`run`, the controller's pollers): the data plane plus how to reach ModelArts."""

    modelarts: ModelArtsEndpoints
    auth: AuthConfig
    budget: BudgetConfig = BudgetConfig()
    services: tuple[ServiceSpec, ...] = ()

    def poll_interval(self, spec: ServiceSpec) -> float:
        return spec.poll_interval_seconds or self.discovery.default_poll_interval_seconds


# --- Loading ---------------------------------------------------------------------------------


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


def apply_env_overrides(data: dict[str, Any], environ: dict[str, str] | None = None) -> dict[str, Any]:
    """`MODELARTS_AGENT__MODELARTS__PROJECT_ID=x` sets modelarts.project_id (values parsed as YAML)."""
    env = os.environ if environ is None else environ
    for key in sorted(env):
        if not key.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in key[len(ENV_PREFIX) :].split("__") if part]
        if path:
            _set_path(data, path, _env_value(key, env[key]))
    return data


def _env_value(key: str, text: str) -> Any:
    """The YAML value of one override. The error names the variable but never shows its value."""
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:
        # Only the position: the parser's own words quote pieces of the text (an alias, a tag, a character).
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"environment variable {key} is not valid YAML{where}; its value is not shown") from None


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[tuple[str, ...], tuple[str, str]]:
    """Config path -> (variable, value) of each override, as `apply_env_overrides` applies them."""
    env = os.environ if environ is None else environ
    found: dict[tuple[str, ...], tuple[str, str]] = {}
    for key in sorted(env):
        if key.startswith(ENV_PREFIX):
            path = tuple(part.lower() for part in key[len(ENV_PREFIX) :].split("__") if part)
            if path:
                found[path] = (key, env[key])
    return found


def _hide_env_value(err: Any, message: str, overrides: Mapping[tuple[str, ...], tuple[str, str]]) -> str:
    """For a field set by an environment variable: name the variable, and never show its value."""
    loc = tuple(str(p) for p in err["loc"])
    for path, (key, raw) in overrides.items():
        if loc[: len(path)] == path:
            shown = {raw.strip(), str(err.get("input", ""))} - {""}
            if any(value in message for value in shown):
                message = "invalid value"
            return f"{message} (set by environment variable {key}; its value is not shown)"
    return message


def format_validation_error(exc: ValidationError, source: str,
                            overrides: Mapping[tuple[str, ...], tuple[str, str]] | None = None,
                            prefix: tuple[str, ...] = ()) -> str:
    lines = [f"invalid configuration in {source}:"]
    for err in exc.errors():
        location = ".".join(str(p) for p in (*prefix, *err["loc"])) or "(top level)"
        message = _hide_env_value(err, err["msg"].removeprefix("Value error, "), overrides or {})
        lines.append(f"  {location}: {message}")
    return "\n".join(lines)


@contextmanager
def config_errors(source: str, *section: str) -> Iterator[None]:
    """Models built in code, not parsed: a ValidationError becomes the ConfigError `parse_config` gives for the
    same fields (named under `section`), so a bad value reads the same whichever way it came in."""
    try:
        yield
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, prefix=section)) from None


Config = TypeVar("Config", bound=DataPlaneConfig)


def parse_as(model: type[Config], data: Any, source: str = "config",
             environ: Mapping[str, str] | None = None) -> Config:
    """Validate `data` as `model`; errors in fields set from `environ` (default: this process's) hide the value."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration in {source}: the top level must be a mapping")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, env_overrides(environ))) from None


def parse_config(data: Any, source: str = "config", environ: Mapping[str, str] | None = None) -> AgentConfig:
    return parse_as(AgentConfig, data, source, environ)


# What a data-plane-only process (the sidecar) never reads: AgentConfig's and ServiceSpec's own fields.
MODELARTS_SECTIONS = tuple(f for f in AgentConfig.model_fields if f not in DataPlaneConfig.model_fields)
MODELARTS_SERVICE_FIELDS = tuple(f for f in ServiceSpec.model_fields if f not in ServicePolicy.model_fields)


def without_modelarts_side(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`data` without the ModelArts side (`modelarts`, `auth`, `budget`, each service's `service_id`,
    `project_id`, `poll_interval_seconds`), and the paths it dropped. Anything else unknown is still refused."""
    dropped = [key for key in MODELARTS_SECTIONS if key in data]
    kept = {key: value for key, value in data.items() if key not in MODELARTS_SECTIONS}
    services = kept.get("services")
    if isinstance(services, list):
        entries: list[Any] = []
        for i, entry in enumerate(services):
            if isinstance(entry, dict):
                dropped += [f"services.{i}.{key}" for key in MODELARTS_SERVICE_FIELDS if key in entry]
                entry = {key: value for key, value in entry.items() if key not in MODELARTS_SERVICE_FIELDS}
            entries.append(entry)
        kept["services"] = entries
    return kept, dropped


def load_config(path: Path, environ: dict[str, str] | None = None) -> AgentConfig:
    return parse_config(apply_env_overrides(read_config_mapping(path), environ), str(path), environ)


def load_data_plane_config(path: Path, environ: dict[str, str] | None = None) -> DataPlaneConfig:
    """The data-plane part of a config file, `run`'s or a sidecar's; a ModelArts side, if any, is not read.
    For what renders only Envoy's side: `render bootstrap`, which an injected pod runs on its sidecar config."""
    data, _unread = without_modelarts_side(apply_env_overrides(read_config_mapping(path), environ))
    return parse_as(DataPlaneConfig, data, str(path), environ)


def read_config_mapping(path: Path) -> dict[str, Any]:
    """A config file's top-level mapping, or a ConfigError saying what is wrong with the file (exit 2)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"invalid YAML in {path}{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration in {path}: the top level must be a mapping")
    return data
