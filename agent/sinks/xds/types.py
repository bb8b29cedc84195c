"""The xDS resource types served over ADS, and the order in which they must reach Envoy."""

from __future__ import annotations

from agent.envoy.serialize import CLUSTER_TYPE, LISTENER_TYPE, LOAD_ASSIGNMENT_TYPE, type_url

CDS = type_url(CLUSTER_TYPE)
EDS = type_url(LOAD_ASSIGNMENT_TYPE)
LDS = type_url(LISTENER_TYPE)
RDS = type_url("envoy.config.route.v3.RouteConfiguration")

# go-control-plane's ADS order (and the xDS spec's "eventual consistency" advice): a cluster exists
# before its endpoints, both before a listener or route that sends traffic to it.
ORDER: tuple[str, ...] = (CDS, EDS, LDS, RDS)
# Every response of these types is the complete set (SotW): a missing resource is a removal.
# EDS and RDS responses may carry only what changed; a resource goes away when nothing names it.
FULL_STATE: frozenset[str] = frozenset({CDS, LDS})
WILDCARD = "*"

SHORT: dict[str, str] = {CDS: "CDS", EDS: "EDS", LDS: "LDS", RDS: "RDS"}


def short(type_url_: str) -> str:
    return SHORT.get(type_url_, type_url_.rsplit("/", 1)[-1])
