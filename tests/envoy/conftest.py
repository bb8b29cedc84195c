"""Fixtures for the Envoy sink tests: upstream instances and real Envoy processes, always cleaned up."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.config import AgentConfig
from tests.envoy.harness import EnvoyProcess, HttpInstance, TcpEchoInstance, free_port, require_envoy, write_bootstrap


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "envoy"


@pytest.fixture
def admin_port() -> int:
    return free_port()


class Instances:
    """Starts upstream instances and kills every one of them at teardown."""

    def __init__(self) -> None:
        self._all: list[HttpInstance | TcpEchoInstance] = []

    def http(self, instance_id: str, **kwargs: object) -> HttpInstance:
        instance = HttpInstance(instance_id, **kwargs)  # type: ignore[arg-type]
        self._all.append(instance)
        return instance

    def tcp(self, instance_id: str) -> TcpEchoInstance:
        instance = TcpEchoInstance(instance_id)
        self._all.append(instance)
        return instance

    def close(self) -> None:
        for instance in self._all:
            instance.kill()


@pytest.fixture
def instances() -> Iterator[Instances]:
    registry = Instances()
    try:
        yield registry
    finally:
        registry.close()


StartEnvoy = Callable[[AgentConfig], EnvoyProcess]


@pytest.fixture
def start_envoy(tmp_path: Path) -> Iterator[StartEnvoy]:
    """Start a real Envoy with the file-mode bootstrap of a config; every one is stopped at teardown."""
    require_envoy()
    started: list[EnvoyProcess] = []

    def start(config: AgentConfig) -> EnvoyProcess:
        bootstrap = write_bootstrap(config, tmp_path / f"bootstrap-{len(started)}.yaml")
        process = EnvoyProcess(bootstrap, config.envoy.admin_port, tmp_path)
        started.append(process)
        return process.start()

    try:
        yield start
    finally:
        for process in started:
            process.stop()


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    server_context: object  # ssl.SSLContext


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA and a server certificate for DNS name `instance.test`."""
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelarts-agent test CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName("instance.test")]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "instance.test")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file = directory / "server.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = directory / "server.key"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return Pki(ca_file=ca_file, server_context=context)
