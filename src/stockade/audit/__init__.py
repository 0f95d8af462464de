"""Tamper-evident audit log: hash-chained deterministic CBOR, signed checkpoints, group commit."""
