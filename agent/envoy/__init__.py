"""Envoy resource builders: typed xds-protos messages from a snapshot and the config, no I/O.

Used by both the file sink (`agent/sinks/envoy/`) and the xDS server (`agent/sinks/xds/`).

- `resources`: snapshot + config -> `EnvoyResources` (clusters, load assignments, listeners, routes);
- `clusters`, `listeners`, `auth`, `access_log`, `stats`: the builders behind it;
- `gateway`: the one shared gateway listener (a virtual host per service);
- `bootstrap`: the file-mode bootstrap, `layout`: where the files live; `ads_bootstrap`: the ADS-mode
  bootstrap, `nodes`: the node metadata that picks a node's view;
- `serialize`: messages -> JSON/YAML with content-hash versions.
"""
