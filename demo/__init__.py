"""`make demo`: the emulator, the agent and a real Envoy, with live traffic, scale-out and failover."""
