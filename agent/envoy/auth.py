"""Authentication brought back on the listener: API keys (api_key_auth) or JWTs (jwt_authn, local JWKS).

Key and JWKS files are read at render time and inlined into the listener, so a rotation is just
a re-render: the same atomic LDS write that every other change uses, with no Envoy restart.
"""

from __future__ import annotations

import json
from pathlib import Path

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.api_key_auth.v3 import api_key_auth_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from google.protobuf.message import Message

from agent.config import ApiKeyAuth, JwtAuth, ListenerAuth
from agent.errors import ConfigError
from agent.logs import register_secret

API_KEY_FILTER = "envoy.filters.http.api_key_auth"
JWT_FILTER = "envoy.filters.http.jwt_authn"


def read_api_keys(path: Path) -> list[tuple[str, str]]:
    """(client, key) pairs; a line is `key` or `client:key`; blank lines and `#` comments are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read API keys from {path}: {reason}") from None
    pairs: list[tuple[str, str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        client, sep, key = line.rpartition(":")
        client = client if sep else f"key-{number}"
        if len(key) < 16:
            raise ConfigError(f"API key on line {number} of {path} is shorter than 16 characters")
        register_secret(key)
        pairs.append((client, key))
    if not pairs:
        raise ConfigError(f"{path} holds no API keys: every request would be refused")
    return pairs


def _api_key_filter(config: ApiKeyAuth) -> api_key_auth_pb2.ApiKeyAuth:
    return api_key_auth_pb2.ApiKeyAuth(
        credentials=[api_key_auth_pb2.Credential(key=key, client=client) for client, key in read_api_keys(
            config.keys_file)],
        key_sources=[api_key_auth_pb2.KeySource(header=config.header)],
        # The instance never sees the caller's key.
        forwarding=api_key_auth_pb2.Forwarding(hide_credentials=True),
    )


def _jwt_filter(config: JwtAuth) -> jwt_pb2.JwtAuthentication:
    try:
        jwks = config.jwks_file.read_text(encoding="utf-8")
        json.loads(jwks)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"cannot use JWKS file {config.jwks_file}: {type(exc).__name__}") from None
    provider = jwt_pb2.JwtProvider(
        issuer=config.issuer,
        audiences=list(config.audiences),
        local_jwks=base_pb2.DataSource(inline_string=jwks),
        forward=False,
    )
    return jwt_pb2.JwtAuthentication(
        providers={"modelarts-agent": provider},
        rules=[jwt_pb2.RequirementRule(match=route_components_pb2.RouteMatch(prefix="/"),
                                       requires=jwt_pb2.JwtRequirement(provider_name="modelarts-agent"))],
    )


def auth_filter(auth: ListenerAuth | None) -> tuple[str, Message] | None:
    """The (filter name, config) to put before the router, or None when the listener is open."""
    if auth is None:
        return None
    if auth.api_key is not None:
        return API_KEY_FILTER, _api_key_filter(auth.api_key)
    assert auth.jwt is not None
    return JWT_FILTER, _jwt_filter(auth.jwt)


def watched_files(auth: ListenerAuth | None) -> list[Path]:
    if auth is None:
        return []
    return [auth.api_key.keys_file] if auth.api_key else [auth.jwt.jwks_file] if auth.jwt else []
