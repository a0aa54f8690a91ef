"""Telemetry: the topic scheme and payload contract, the recording event sink and the MQTT outbox publisher."""
