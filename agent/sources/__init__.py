"""Sources produce endpoint sets for the snapshot store (one module per source, like external-dns)."""
