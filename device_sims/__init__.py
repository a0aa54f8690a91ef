"""Simulated cell equipment over the real protocols (OPC UA, Modbus TCP), for tests and the demo."""
