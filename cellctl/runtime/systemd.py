"""The sd_notify protocol: READY, STATUS, STOPPING and WATCHDOG datagrams to systemd (no-op outside it)."""

from __future__ import annotations

import contextlib
import os
import socket


class Notifier:
    """Sends sd_notify messages to ``$NOTIFY_SOCKET``; does nothing when it is not set."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace socket
        self._address = address or None

    @property
    def enabled(self) -> bool:
        """True when running under a service manager that listens."""
        return self._address is not None

    def notify(self, *fields: str) -> None:
        """Send ``KEY=VALUE`` fields in one datagram (non-blocking; a full socket drops the message)."""
        if self._address is None:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            # systemd gone or busy: nothing useful to do, and the service must not stop for it.
            with contextlib.suppress(BlockingIOError, ConnectionRefusedError, FileNotFoundError):
                sock.sendto("\n".join(fields).encode(), self._address)

    def ready(self, status: str) -> None:
        """Tell systemd start-up is complete."""
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        """Update the one-line status shown by ``systemctl status``."""
        self.notify(f"STATUS={status}")

    def stopping(self) -> None:
        """Tell systemd the service is stopping."""
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        """Keep-alive ping; sent from the event loop itself so a blocked loop stops the pings."""
        self.notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """Half of ``WatchdogSec`` in seconds when systemd asks for pings for this process, else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000
