"""The xDS sink: a gRPC ADS server (state-of-the-world and delta) for Envoy sidecars and the gateway.

- `sink.XdsSink`: the sink ("xds"); `publish(snapshot)` makes a new version of the `cache.XdsCache`;
- `server.XdsServer`: AggregatedDiscoveryService on grpc.aio; `sotw` / `delta`: the two protocols
  over a shared `session` base; `plan`: what to send in which order; `state`: ACK/NACK bookkeeping;
- `views`: snapshot -> the resources one node view is served (built by `agent.envoy`, per
  `agent.envoy.nodes` view); `refs`: which clusters a listener or route names;
- `resource`, `encode`, `wire`: serialize each resource once and splice shared bytes into responses;
- `tls`: server credentials; `metrics`. The ADS-mode Envoy bootstrap is `agent.envoy.ads_bootstrap`.
"""
