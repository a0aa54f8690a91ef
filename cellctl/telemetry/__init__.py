"""Telemetry: topic scheme and payload contract, the recording event sink, the MQTT outbox publisher."""
