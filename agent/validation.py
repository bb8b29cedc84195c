"""Validation of endpoint entries before anything can enter a snapshot.

Every rejection carries a short machine-readable reason (used as a metric label) and a
human-readable detail (logged). Nothing here raises on hostile input.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.model import SCHEMAS, Endpoint, Schema

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_ALLOWED_CIDRS: tuple[str, ...] = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")

# Address classes that are never a ModelArts instance unless a CIDR inside the class is allowed.
_SPECIAL_CLASSES: tuple[tuple[str, tuple[IPNetwork, ...]], ...] = (
    ("unspecified", (ipaddress.ip_network("0.0.0.0/32"), ipaddress.ip_network("::/128"))),
    ("loopback", (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))),
    ("link_local", (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))),
    ("multicast", (ipaddress.ip_network("224.0.0.0/4"), ipaddress.ip_network("ff00::/8"))),
    ("broadcast", (ipaddress.ip_network("255.255.255.255/32"),)),
)

_ASCII_IP = re.compile(r"^[0-9A-Fa-f:.]+$")
_ASCII_PORT = re.compile(r"^[0-9]{1,5}$")


@dataclass(frozen=True)
class Rejection:
    reason: str
    detail: str


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse CIDRs strictly; raises ValueError naming the bad entry."""
    networks: list[IPNetwork] = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr, strict=True))
        except ValueError as exc:
            raise ValueError(f"invalid CIDR {cidr!r}: {exc}") from None
    return tuple(networks)


def _special_class(ip: IPAddress) -> tuple[str, tuple[IPNetwork, ...]] | None:
    for name, blocks in _SPECIAL_CLASSES:
        if any(ip.version == b.version and ip in b for b in blocks):
            return name, blocks
    return None


def _explicitly_allowed(ip: IPAddress, blocks: tuple[IPNetwork, ...], allowed: Sequence[IPNetwork]) -> bool:
    # 0.0.0.0/0 contains 127.0.0.1 but does not *explicitly* allow loopback: only a CIDR that
    # lies inside the special block itself counts.
    for net in allowed:
        if net.version != ip.version or ip not in net:
            continue
        if any(b.version == net.version and net.subnet_of(b) for b in blocks):  # type: ignore[arg-type]
            return True
    return False


def check_ip(raw: Any, allowed: Sequence[IPNetwork]) -> IPAddress | Rejection:
    if not isinstance(raw, str):
        return Rejection("bad_ip", f"ip must be a string, got {type(raw).__name__}")
    # int() accepts non-ASCII digits (e.g. fullwidth), so ipaddress would too: refuse them first.
    if not raw.isascii() or not _ASCII_IP.match(raw):
        return Rejection("bad_ip", f"ip {raw!r} is not a plain IPv4/IPv6 literal")
    try:
        ip: IPAddress = ipaddress.ip_address(raw)
    except ValueError:
        return Rejection("bad_ip", f"ip {raw!r} is not a valid address")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        # ::ffff:127.0.0.1 reaches 127.0.0.1: judge it by the IPv4 address it maps to.
        mapped = check_ip(str(ip.ipv4_mapped), allowed)
        if isinstance(mapped, Rejection):
            return Rejection(mapped.reason, f"ip {raw!r} maps to IPv4: {mapped.detail}")
        return mapped
    special = _special_class(ip)
    if special is not None:
        name, blocks = special
        if not _explicitly_allowed(ip, blocks, allowed):
            return Rejection(name, f"ip {raw} is {name.replace('_', '-')} and not explicitly allowed")
        return ip
    if not any(ip.version == net.version and ip in net for net in allowed):
        return Rejection("outside_allowed_cidrs", f"ip {raw} is outside the allowed CIDRs")
    return ip


def check_port(raw: Any) -> int | Rejection:
    # bool is an int subclass; True must not become port 1.
    if isinstance(raw, bool):
        return Rejection("bad_port", f"port must be a number, got {raw!r}")
    if isinstance(raw, str):
        if not raw.isascii() or not _ASCII_PORT.match(raw):
            return Rejection("bad_port", f"port {raw!r} is not a decimal number")
        raw = int(raw)
    if not isinstance(raw, int):
        return Rejection("bad_port", f"port must be an integer, got {type(raw).__name__}")
    if not 1 <= raw <= 65535:
        return Rejection("bad_port", f"port {raw} is outside 1-65535")
    return raw


def check_schema(raw: Any) -> Schema | Rejection:
    if not isinstance(raw, str) or not raw.isascii():
        return Rejection("bad_schema", f"schema must be one of {', '.join(SCHEMAS)}, got {raw!r}")
    lowered = raw.strip().lower()
    for schema in SCHEMAS:
        if lowered == schema:
            return schema
    return Rejection("bad_schema", f"schema {raw!r} is not one of {', '.join(SCHEMAS)}")


def validate_entry(entry: Any, allowed: Sequence[IPNetwork]) -> Endpoint | Rejection:
    if not isinstance(entry, dict):
        return Rejection("bad_entry", f"endpoint entry must be an object, got {type(entry).__name__}")
    schema_raw = entry.get("schema", entry.get("scheme", entry.get("protocol", "http")))
    schema = check_schema(schema_raw)
    if isinstance(schema, Rejection):
        return schema
    ip = check_ip(entry.get("ip", entry.get("host")), allowed)
    if isinstance(ip, Rejection):
        return ip
    port = check_port(entry.get("port"))
    if isinstance(port, Rejection):
        return port
    return Endpoint(ip=str(ip), port=port, schema=schema)
