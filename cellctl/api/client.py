"""Client of the control socket for the CLI and the TUI: requests with replies matched by id, and events.

Pure asyncio plus the protocol models; it imports nothing of the controller, so the TUI can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any

from cellctl.api.protocol import (
    MAX_LINE,
    ErrorCode,
    EventPush,
    LineBuffer,
    Overlong,
    ProtocolError,
    Reply,
    Request,
    parse_server_line,
)
from cellctl.errors import ApiError

EVENT_BUFFER = 1024
"""Events held for a slow consumer; beyond it the client stops reading and the server drops the watcher."""
READ_CHUNK = 64 * 1024


class NotReachable(ApiError):
    """No controller is listening on the socket (missing file, refused, or not allowed to connect)."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        super().__init__("unreachable", f"no controller listening on {path}: {reason}")


class ConnectionLost(ApiError):
    """The controller closed the connection while a request or a watch was open."""

    def __init__(self, message: str = "the controller closed the connection") -> None:
        super().__init__("disconnected", message)


class WatchDropped(ApiError):
    """The server dropped this watcher because it fell behind; resume with ``since_seq``/``epoch``."""

    def __init__(self, message: str, since_seq: int, epoch: str | None) -> None:
        super().__init__(ErrorCode.OVERFLOW.value, message)
        self.since_seq = since_seq
        self.epoch = epoch


class ControlClient:
    """One connection to the controller: ``async with ControlClient(path) as c: await c.request("status")``.

    Requests may be issued concurrently; a reader task owned by the client routes replies by id and queues
    pushed events for ``events()``. Not reentrant: one ``async with`` at a time.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.last_seq = 0
        """Sequence number of the newest event received: pass it as ``since_seq`` to resume after a drop."""
        self.epoch: str | None = None
        """The server instance the sequence numbers belong to (from the ``watch`` reply)."""
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._events: asyncio.Queue[EventPush | BaseException] = asyncio.Queue(EVENT_BUFFER)
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._closed: BaseException | None = None

    async def __aenter__(self) -> ControlClient:
        if self._writer is not None:
            raise RuntimeError("ControlClient is already open")
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.path))
        except FileNotFoundError as exc:
            raise NotReachable(self.path, "the socket does not exist") from exc
        except ConnectionRefusedError as exc:
            raise NotReachable(self.path, "connection refused") from exc
        except PermissionError as exc:
            raise NotReachable(self.path, "permission denied (are you in the operators' group?)") from exc
        except OSError as exc:
            raise NotReachable(self.path, str(exc)) from exc
        self._writer = writer
        self._closed = None
        self._reader_task = asyncio.get_running_loop().create_task(
            self._read(reader), name=f"api-client:{self.path.name}"
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection and stop the reader; pending requests fail with ConnectionLost."""
        writer, task = self._writer, self._reader_task
        self._writer, self._reader_task = None, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_pending(ConnectionLost("the client closed the connection"))
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def request(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Send one request and return its result; ApiError(code, message) when the controller refuses it,
        ConnectionLost when the connection ends first."""
        reply = await self.request_reply(cmd, **args)
        if not reply.ok:
            assert reply.error is not None
            raise ApiError(reply.error.code, reply.error.message)
        assert reply.result is not None
        return reply.result

    async def request_reply(self, cmd: str, **args: Any) -> Reply:
        """Send one request and return the raw Reply, ok or not."""
        if self._writer is None:
            raise ConnectionLost("the client is not connected")
        if self._closed is not None:
            raise ConnectionLost(str(self._closed))
        request_id = next(self._ids)
        line = Request(id=request_id, cmd=cmd, args=args).encode()
        if len(line) > MAX_LINE + 1:
            raise ApiError(
                ErrorCode.TOO_LARGE.value, f"request is {len(line)} bytes; the limit is {MAX_LINE}"
            )
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._writer.write(line)
            await self._writer.drain()
            return await future
        except OSError as exc:
            raise ConnectionLost(f"the connection failed: {exc}") from exc
        finally:
            self._pending.pop(request_id, None)

    async def watch(self, since_seq: int | None = None, epoch: str | None = None) -> dict[str, Any]:
        """Subscribe this connection to events; the result says ``seq``, ``epoch``, ``resync`` and, when
        ``resync`` is true, carries a fresh ``status`` snapshot."""
        args: dict[str, Any] = {}
        if since_seq is not None:
            args["since_seq"] = since_seq
        if epoch is not None:
            args["epoch"] = epoch
        result = await self.request("watch", **args)
        self.epoch = str(result["epoch"])
        if result.get("resync"):
            self.last_seq = int(result["seq"])
        return result

    async def events(self) -> AsyncIterator[EventPush]:
        """Events pushed after ``watch`` (call it first), in order; raises WatchDropped when the server
        dropped this watcher and ConnectionLost when the connection ends."""
        while True:
            if self._events.empty() and self._closed is not None:
                raise self._closed
            item = await self._events.get()
            if isinstance(item, BaseException):
                # Leave the reason for the next caller as well: the stream is over.
                with contextlib.suppress(asyncio.QueueFull):
                    self._events.put_nowait(item)
                raise item
            if item.is_notice:
                if item.event.kind == "watch_dropped":
                    data = item.event.data
                    raise WatchDropped(
                        str(data.get("message", "watcher dropped")),
                        int(data.get("since_seq", self.last_seq)),
                        data.get("epoch"),
                    )
                continue
            self.last_seq = item.seq
            yield item

    # --- the reader -------------------------------------------------------------------------------------

    async def _read(self, reader: asyncio.StreamReader) -> None:
        lines = LineBuffer()
        reason: BaseException = ConnectionLost()
        try:
            while True:
                chunk = await reader.read(READ_CHUNK)
                if not chunk:
                    break
                for line in lines.feed(chunk):
                    if line is Overlong.LINE:
                        raise ProtocolError(ErrorCode.TOO_LARGE, "server sent a line longer than the limit")
                    await self._dispatch(parse_server_line(line))
        except asyncio.CancelledError:
            reason = ConnectionLost("the client closed the connection")
            raise
        except ProtocolError as exc:
            reason = ConnectionLost(f"the controller broke the protocol: {exc}")
        except OSError as exc:
            reason = ConnectionLost(f"the connection failed: {exc}")
        finally:
            self._closed = reason
            self._fail_pending(reason)
            self._end_events(reason)

    async def _dispatch(self, message: Reply | EventPush) -> None:
        if isinstance(message, EventPush):
            # Waits when the consumer is slow: back-pressure reaches the server, which drops the watcher.
            await self._events.put(message)
            return
        future = self._pending.get(message.id) if isinstance(message.id, int) else None
        if future is not None and not future.done():
            future.set_result(message)

    def _fail_pending(self, reason: BaseException) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(reason)
        self._pending.clear()

    def _end_events(self, reason: BaseException) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._events.put_nowait(reason)
