"""The Envoy file sink: `files.EnvoyFileSink` writes CDS/EDS/LDS files Envoy watches (atomic, ordered).

The resources themselves are built by `agent.envoy`, shared with the xDS server.
"""
