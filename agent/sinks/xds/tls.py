"""Server credentials for the xDS port: TLS, and mTLS when a client CA is configured."""

from __future__ import annotations

from pathlib import Path

import grpc

from agent.config import XdsTls
from agent.errors import ConfigError


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"xds.tls.{what}: cannot read {path}: {exc.strerror or exc}") from None


def server_credentials(tls: XdsTls) -> grpc.ServerCredentials | None:
    """None for plaintext. With `client_ca_file`, a client without a certificate signed by it is refused."""
    if tls.cert_file is None or tls.key_file is None:
        return None
    chain = _read(tls.cert_file, "cert_file")
    key = _read(tls.key_file, "key_file")
    client_ca = _read(tls.client_ca_file, "client_ca_file") if tls.client_ca_file is not None else None
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)
