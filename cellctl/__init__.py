"""cellctl: a shop-floor cell controller for microfactories."""

__version__ = "0.1.0"
