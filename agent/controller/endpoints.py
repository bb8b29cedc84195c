"""Which hosts the controller may send a namespace's credentials to (the confused-deputy guard).

A ModelArtsService names its own `modelartsUrl` and `iamUrl`, and the controller sends the
Secret of the CR's namespace there (a password to IAM, a signature or token to ModelArts). So
whoever may create a CR could otherwise make the controller hand that namespace's credentials to
any host. The controller therefore only talks to hosts on its allow-list: by default the Huawei
Cloud API domains (`iam.<region>.myhuaweicloud.com`, `modelarts.<region>.myhuaweicloud.com`, and
the European site's `.myhuaweicloud.eu`), extended by `--allowed-endpoint-hosts` (the chart's
`controller.allowedEndpointHosts`) with exact host names or IPs and `*.suffix` patterns.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from agent.errors import ConfigError

DEFAULT_ALLOWED_ENDPOINT_HOSTS: tuple[str, ...] = ("*.myhuaweicloud.com", "*.myhuaweicloud.eu")

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _is_hostname(value: str) -> bool:
    labels = value.split(".")
    return len(value) <= 253 and all(_LABEL.match(label) for label in labels)


def _normalise(host: str) -> str:
    return host.strip().lower().rstrip(".")


def _check_pattern(pattern: str) -> str:
    value = _normalise(pattern)
    if value.startswith("*."):
        suffix = value[2:]
        # At least two labels after "*.": "*.com" would allow the whole top-level domain.
        if "." not in suffix or not _is_hostname(suffix):
            raise ConfigError(f"allowed endpoint host pattern {pattern!r} must look like *.example.com")
        return value
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        pass
    if not _is_hostname(value) or "*" in value:
        raise ConfigError(f"allowed endpoint host {pattern!r} is neither a host name, an IP address nor *.suffix")
    return value


@dataclass(frozen=True)
class EndpointAllowList:
    patterns: tuple[str, ...] = DEFAULT_ALLOWED_ENDPOINT_HOSTS

    @classmethod
    def build(cls, extra: Iterable[str] = (), *, defaults: Iterable[str] = DEFAULT_ALLOWED_ENDPOINT_HOSTS,
              ) -> EndpointAllowList:
        """The defaults plus `extra` (each checked: a bad entry is a configuration error)."""
        patterns: list[str] = []
        for pattern in (*defaults, *extra):
            checked = _check_pattern(pattern)
            if checked not in patterns:
                patterns.append(checked)
        return cls(tuple(patterns))

    @classmethod
    def parse_flag(cls, value: str | None) -> EndpointAllowList:
        """`--allowed-endpoint-hosts a.example.com,*.internal.example.com` (comma list, added to the defaults)."""
        extra = [item for item in (value or "").split(",") if item.strip()]
        return cls.build(extra)

    def allows(self, host: str) -> bool:
        name = _normalise(host).strip("[]")
        with contextlib.suppress(ValueError):
            name = str(ipaddress.ip_address(name))
        for pattern in self.patterns:
            if pattern.startswith("*."):
                if name.endswith(pattern[1:]) and len(name) > len(pattern) - 1:
                    return True
            elif name == pattern:
                return True
        return False

    def refusal(self, field: str, url: str) -> str | None:
        """None if `url`'s host is allowed, else the message for the CR's condition (no secret in it)."""
        host = urlsplit(url).hostname or ""
        if self.allows(host):
            return None
        return (f"{field} host {host!r} is not an allowed endpoint host ({', '.join(self.patterns)}); the controller "
                f"sends no credential there. An administrator can extend the list with --allowed-endpoint-hosts "
                f"(chart value controller.allowedEndpointHosts)")
