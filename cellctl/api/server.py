"""The control socket: accepts connections on a Unix socket, answers requests through the service and pushes
numbered events to watchers, without ever letting a client block the engine."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import grp
import os
import pwd
import socket
import stat
import struct
import time
import uuid
from pathlib import Path
from typing import Any

import structlog

from cellctl.api.protocol import (
    MAX_LINE,
    NOTICE_SEQ,
    ErrorCode,
    EventBody,
    EventPush,
    LineBuffer,
    Overlong,
    ProtocolError,
    Reply,
    Request,
    WatchArgs,
    parse_args,
    parse_request,
)
from cellctl.api.roles import RolePolicy
from cellctl.api.service import Caller, ControlService
from cellctl.core.events import Event
from cellctl.errors import ApiError

log = structlog.get_logger("cellctl.api")

SOCKET_MODE = 0o660
"""Owner and group (the operators) may connect; nobody else."""
RING_SIZE = 4096
"""Recent events kept so a watcher that reconnects can resume without a full re-synchronisation."""
WATCH_QUEUE = 1024
"""Events a watcher may fall behind by before it is dropped."""
READ_CHUNK = 64 * 1024
CLOSE_TIMEOUT_S = 1.0
"""How long closing a connection may wait for the peer before giving up."""
_UCRED = struct.Struct("3i")  # struct ucred: pid_t pid, uid_t uid, gid_t gid


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process on the other end of a connected Unix socket, from the kernel."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


_user_names: dict[int, str] = {}


async def user_name(uid: int) -> str:
    """The login name of ``uid`` (else its number), looked up off the loop since NSS may block."""
    name = _user_names.get(uid)
    if name is None:
        try:
            name = (await asyncio.to_thread(pwd.getpwuid, uid)).pw_name
        except KeyError:
            name = str(uid)
        _user_names[uid] = name
    return name


class Watcher:
    """One connection's bounded queue of encoded event lines; ``dropped`` once it fell behind."""

    def __init__(self, size: int = WATCH_QUEUE) -> None:
        self.queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue(size)
        self.dropped = False
        self.last_sent = 0
        """Sequence number of the newest event written to the client: where a dropped watcher resumes."""

    def offer(self, seq: int, line: bytes) -> bool:
        """Queue one event without waiting; False (and ``dropped``) when the queue is full."""
        try:
            self.queue.put_nowait((seq, line))
        except asyncio.QueueFull:
            self.dropped = True
            return False
        return True

    def clear(self) -> None:
        """Forget everything queued and any overflow."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.dropped = False


class EventHub:
    """Numbers every event once, keeps the most recent ones, and fans them out to watchers without waiting."""

    def __init__(self, *, ring_size: int = RING_SIZE) -> None:
        self.epoch = uuid.uuid4().hex[:12]
        """Names this server instance: sequence numbers of another epoch do not resume here."""
        self._seq = 0
        self._ring: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=ring_size)
        self._watchers: set[Watcher] = set()

    @property
    def last_seq(self) -> int:
        """Sequence number of the newest event (0 before any)."""
        return self._seq

    @property
    def watcher_count(self) -> int:
        """Watchers being fed."""
        return len(self._watchers)

    def publish(self, event: Event) -> None:
        """Engine listener: number, encode, remember and fan out one event; never blocks, never waits."""
        self._seq += 1
        push = EventPush(
            seq=self._seq,
            event=EventBody(kind=event.kind, stream=str(event.stream), ts=event.ts, data=event.to_data()),
        )
        line = push.encode()
        self._ring.append((self._seq, line))
        for watcher in list(self._watchers):
            if not watcher.offer(self._seq, line):
                self._watchers.discard(watcher)
                log.warning("watcher dropped: too slow", queued=watcher.queue.qsize(), seq=self._seq)

    def subscribe(self, watcher: Watcher, since_seq: int | None, epoch: str | None) -> bool:
        """(Re)start feeding ``watcher``; True when the client must re-synchronise from a status snapshot
        (no ``since_seq``, another epoch, or events after it no longer all in the ring), otherwise the events
        after ``since_seq`` are queued at once."""
        watcher.clear()
        self._watchers.add(watcher)
        if since_seq is None or (epoch is not None and epoch != self.epoch) or since_seq > self._seq:
            return True
        backlog = [item for item in self._ring if item[0] > since_seq]
        complete = len(backlog) == self._seq - since_seq
        if not complete or len(backlog) > watcher.queue.maxsize:
            return True
        for seq, line in backlog:
            watcher.offer(seq, line)
        return False

    def unsubscribe(self, watcher: Watcher) -> None:
        """Stop feeding a watcher."""
        self._watchers.discard(watcher)


class _Connection:
    """One client connection: answers each line in order and, once watching, writes its events alongside."""

    def __init__(
        self,
        server: ControlServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        caller: Caller,
    ) -> None:
        self._server = server
        self._reader = reader
        self._writer = writer
        self._caller = caller
        self._watcher = Watcher()

    async def serve(self) -> None:
        """Answer requests until the client hangs up; the connection's event sender runs alongside."""
        try:
            async with asyncio.TaskGroup() as tg:
                sender = tg.create_task(self._send_events(), name=f"api:events:pid{self._caller.pid}")
                try:
                    await self._answer_requests()
                finally:
                    sender.cancel()
        except* OSError as group:  # reset, broken pipe: the client went away
            log.info("client connection lost", caller=self._caller.by, error=str(group.exceptions[0]))
        finally:
            self._server.hub.unsubscribe(self._watcher)
            # The lease belongs to this connection: free it so the next operator is not locked out.
            try:
                await self._server.service.connection_closed(self._caller)
            except Exception:
                log.exception("lease release on disconnect failed", caller=self._caller.by)

    async def _answer_requests(self) -> None:
        lines = LineBuffer()
        while True:
            chunk = await self._reader.read(READ_CHUNK)
            if not chunk:
                last = lines.finish()
                if last is not None and last.strip():
                    await self._answer(last)
                return
            for line in lines.feed(chunk):
                if line is Overlong.LINE:
                    await self._send(
                        Reply.failure(None, ErrorCode.TOO_LARGE, f"line longer than {MAX_LINE} bytes")
                    )
                elif line.strip():  # blank lines (e.g. typed by hand into socat) are not requests
                    await self._answer(line)

    async def _answer(self, line: bytes) -> None:
        try:
            request = parse_request(line)
        except ProtocolError as exc:
            await self._send(Reply.failure(exc.request_id, exc.code, str(exc)))
            return
        if request.cmd == "watch":
            # No await between subscribing and writing: the reply precedes every event it announces.
            await self._send(self._watch(request))
        else:
            await self._send(await self._server.service.handle(request, self._caller))

    def _watch(self, request: Request) -> Reply:
        try:
            args = parse_args(request)
        except ProtocolError as exc:
            return Reply.failure(request.id, exc.code, str(exc))
        assert isinstance(args, WatchArgs)
        hub = self._server.hub
        resync = hub.subscribe(self._watcher, args.since_seq, args.epoch)
        result: dict[str, Any] = {"seq": hub.last_seq, "epoch": hub.epoch, "resync": resync}
        if resync:
            result["status"] = self._server.service.status()
        log.info("watching", caller=self._caller.by, since_seq=args.since_seq, resync=resync)
        return Reply.success(request.id, result)

    async def _send(self, reply: Reply) -> None:
        self._writer.write(reply.encode())
        await self._writer.drain()

    async def _send_events(self) -> None:
        """Write queued events in order; after an overflow tell the client once where to resume."""
        watcher = self._watcher
        while True:
            seq, line = await watcher.queue.get()
            if watcher.dropped:
                watcher.clear()
                self._writer.write(self._dropped_notice(watcher.last_sent).encode())
            else:
                watcher.last_sent = seq
                self._writer.write(line)
            await self._writer.drain()

    def _dropped_notice(self, last_sent: int) -> EventPush:
        return EventPush(
            seq=NOTICE_SEQ,
            event=EventBody(
                kind="watch_dropped",
                stream="api",
                ts=time.time(),
                data={
                    "code": ErrorCode.OVERFLOW.value,
                    "message": f"this watcher fell more than {WATCH_QUEUE} events behind and was dropped; "
                    "send watch again with since_seq and epoch to resume",
                    "since_seq": last_sent,
                    "epoch": self._server.hub.epoch,
                },
            ),
        )


class ControlServer:
    """Serves the control API on a Unix socket until cancelled; ``ready`` is set once it is listening."""

    def __init__(
        self,
        path: Path,
        service: ControlService,
        *,
        mode: int = SOCKET_MODE,
        group: str | None = None,
        roles: RolePolicy | None = None,
    ) -> None:
        """``group``: the socket file's group (the operators), set before listening; ``roles``: who may do
        what (default: the controller's user and root are integrators, everyone else a viewer)."""
        self.path = Path(path)
        self.service = service
        self.hub = EventHub()
        self.ready = asyncio.Event()
        self.roles = roles or RolePolicy()
        self._mode = mode
        self._group = group
        self._tg: asyncio.TaskGroup | None = None
        self._connections = 0

    async def run(self) -> None:
        """Listen, serve every connection in a task of our own, and on cancellation close them all and remove
        the socket file."""
        sock, inode = await self._bind()
        try:
            async with asyncio.TaskGroup() as tg:
                server = await asyncio.start_unix_server(self._accept, sock=sock)
                self._tg = tg
                unlisten = self.service.add_listener(self.hub.publish)
                try:
                    async with server:
                        self.ready.set()
                        log.info("control socket listening", path=str(self.path))
                        await server.serve_forever()
                finally:
                    # Stop accepting before the TaskGroup cancels the connections.
                    self._tg = None
                    unlisten()
        finally:
            sock.close()
            self.ready.clear()
            self._unlink_if_ours(inode)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Called by asyncio for each new connection: hand it to a task the server owns."""
        if self._tg is None:
            writer.close()
            return
        self._connections += 1
        self._tg.create_task(
            self._serve(reader, writer, self._connections), name=f"api:conn:{self._connections}"
        )

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: int
    ) -> None:
        try:
            pid, uid, gid = peer_credentials(writer.get_extra_info("socket"))
            user = await user_name(uid)
            role = await self.roles.role_of(uid, gid, user)
            caller = Caller(uid=uid, gid=gid, pid=pid, user=user, role=role, connection=connection)
            log.debug("client connected", caller=caller.by, pid=pid, role=role.value)
            await _Connection(self, reader, writer, caller).serve()
        except Exception:
            # A bug met by one connection ends that connection, never the server and the controller.
            log.exception("control connection failed", connection=connection)
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await writer.wait_closed()

    async def _bind(self) -> tuple[socket.socket, int]:
        """A bound (not yet listening) socket at ``path`` with its mode set, and the file's inode."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        gid = await self._group_id()
        await self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            # Before listen(): nobody can connect while the file still has the umask's mode or group.
            if gid is not None:
                try:
                    os.chown(self.path, -1, gid)
                except PermissionError as exc:
                    raise ApiError(
                        "socket_group",
                        f"api.group: cannot give {self.path} the group {self._group!r}: the controller's "
                        f"user must be a member of it ({exc.strerror})",
                    ) from exc
            os.chmod(self.path, self._mode)
            inode = os.stat(self.path).st_ino
        except BaseException:
            sock.close()
            raise
        return sock, inode

    async def _group_id(self) -> int | None:
        """The gid of the configured socket group (looked up off the loop: NSS may block); ApiError naming
        it when the host has no such group."""
        if self._group is None:
            return None
        name = self._group
        try:
            return (await asyncio.to_thread(grp.getgrnam, name)).gr_gid
        except KeyError:
            raise ApiError(
                "socket_group",
                f"api.group: there is no group {name!r} on this host: create it (groupadd {name}) and add "
                "the operators to it, or leave api.group out",
            ) from None

    async def _remove_stale(self) -> None:
        """Remove a socket file left by a controller that is gone; refuse a live one or a non-socket."""
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode):
            raise ApiError("socket_path_taken", f"{self.path} exists and is not a socket; not replacing it")
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                _reader, writer = await asyncio.open_unix_connection(str(self.path))
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("removing stale control socket", path=str(self.path))
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        except (OSError, TimeoutError) as exc:
            raise ApiError("socket_in_use", f"{self.path} exists and could not be checked: {exc}") from exc
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        raise ApiError("socket_in_use", f"another controller is listening on {self.path}")

    def _unlink_if_ours(self, inode: int) -> None:
        """Remove the socket file unless another process has replaced it since we bound it."""
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == inode:
                self.path.unlink()
