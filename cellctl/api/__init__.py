"""The control API: JSON lines over a Unix socket (protocol, service, server, client).

Import the submodules directly: the TUI and the CLI need only ``protocol`` and ``client``, which must not pull
in the engine that ``service`` and ``server`` bring along.
"""
