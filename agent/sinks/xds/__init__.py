"""The xDS sink: a gRPC ADS server (state-of-the-world and delta) for Envoy sidecars and the gateway.

- `sink.XdsSink`: the sink ("xds"); `publish(snapshot)` makes a new version of the `cache.XdsCache`;
- `server.XdsServer`: AggregatedDiscoveryService on grpc.aio; `sotw` / `delta`: the two protocols
  over a shared `session` base; `plan`: what to send in which order; `state`: ACK/NACK bookkeeping;
- `views` + `nodes` + `gateway`: snapshot -> the resources one node view is served;
- `resource`, `encode`, `wire`: serialize each resource once and splice shared bytes into responses;
- `bootstrap`: the Envoy bootstrap for ADS mode; `tls`: server credentials; `metrics`.
"""

from agent.sinks.xds.bootstrap import AdsBootstrap, build_ads_bootstrap
from agent.sinks.xds.cache import CacheSnapshot, XdsCache
from agent.sinks.xds.nodes import NodeView, node_view
from agent.sinks.xds.server import XdsServer
from agent.sinks.xds.sink import XdsSink

__all__ = ["AdsBootstrap", "CacheSnapshot", "NodeView", "XdsCache", "XdsServer", "XdsSink", "build_ads_bootstrap",
           "node_view"]
