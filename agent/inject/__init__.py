"""The pod-spec injector behind `modelarts-agent inject`: workload manifests in, the same manifests with the
agent and Envoy sidecars out. Pure text and dict work: no cluster, no network."""
