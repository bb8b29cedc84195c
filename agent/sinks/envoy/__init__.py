"""Envoy as a sink: typed xDS resources built from a snapshot, written as files Envoy watches.

- `resources`: snapshot + config -> `EnvoyResources` (clusters, load assignments, listeners);
- `clusters`, `listeners`: the builders behind it;
- `bootstrap`: Envoy's bootstrap for file mode; `layout`: where the files live;
- `files`: `EnvoyFileSink`, atomic ordered writes; `serialize`: messages -> JSON/YAML.
"""

from agent.sinks.envoy.bootstrap import build_bootstrap, ensure_loopback
from agent.sinks.envoy.files import EnvoyFileSink
from agent.sinks.envoy.layout import FileLayout
from agent.sinks.envoy.resources import EnvoyResources, build_resources

__all__ = ["EnvoyFileSink", "EnvoyResources", "FileLayout", "build_bootstrap", "build_resources", "ensure_loopback"]
