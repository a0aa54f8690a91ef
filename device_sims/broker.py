"""A private mosquitto on a free loopback port, for the demo and the test suite (never the plant's broker)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

MOSQUITTO_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary, or None when it is not installed."""
    for candidate in MOSQUITTO_CANDIDATES:
        path = shutil.which(candidate) or (candidate if os.access(candidate, os.X_OK) else None)
        if path:
            return path
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    """True when something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class PrivateBroker:
    """A mosquitto of our own: in memory, loopback only, TCP_NODELAY; stop and start keep the port."""

    def __init__(
        self,
        binary: str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        max_queued_messages: int = 1000,
        extra: Sequence[str] = (),
        allow_anonymous: bool = True,
    ) -> None:
        """A broker on ``host:port`` (a free port if None), queueing ``max_queued_messages`` per client
        (0: no limit); ``extra``: more config lines (e.g. ``certfile ...``, ``password_file ...``)."""
        found = binary or find_mosquitto()
        if found is None:
            raise FileNotFoundError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        self.binary = found
        self.host = host
        self.port = port or free_port(host)
        self._dir = Path(tempfile.mkdtemp(prefix="cellctl-broker-"))
        self._conf = self._dir / "mosquitto.conf"
        self._max_queued_messages = max_queued_messages
        self.configure(extra, allow_anonymous=allow_anonymous)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def folder(self) -> Path:
        """The broker's own temporary folder (its config; a test may put its files here)."""
        return self._dir

    def configure(self, extra: Sequence[str] = (), *, allow_anonymous: bool = True) -> None:
        """Write the config: taken at the next ``start`` (``stop`` first to change a running broker)."""
        lines = [
            f"listener {self.port} {self.host}",
            *extra,
            f"allow_anonymous {'true' if allow_anonymous else 'false'}",
            "persistence false",
            "set_tcp_nodelay true",
            "log_dest none",
            f"max_queued_messages {self._max_queued_messages}",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # Started as root, mosquitto drops to user "mosquitto" before reading certificates and password
            # files, which sit in our private (root-only) folder: stay root, this broker is a test's.
            lines.append("user root")
        self._conf.write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        """True while the broker process lives."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 5.0) -> None:
        """Start the broker and wait (bounded) until it accepts connections."""
        if self.running:
            return
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self._conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RuntimeError(f"mosquitto exited at start on port {self.port}: {err.strip()}")
            if port_open(self.host, self.port, timeout=0.1):
                return
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout} s")

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 5 s)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stderr:
            proc.stderr.close()

    def close(self) -> None:
        """Stop the broker and remove its folder."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    async def astart(self, timeout: float = 5.0) -> None:
        """``start`` without blocking the event loop."""
        await asyncio.to_thread(self.start, timeout)

    async def astop(self) -> None:
        """``stop`` without blocking the event loop."""
        await asyncio.to_thread(self.stop)
