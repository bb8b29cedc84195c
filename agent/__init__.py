"""modelarts-agent: service discovery and an Envoy data plane for ModelArts services reached over a VPC."""

__version__ = "0.1.0"
