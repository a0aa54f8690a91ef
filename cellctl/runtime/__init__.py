"""Composition root: wires drivers, engine, store, telemetry and the API, and owns their lifetimes."""
