"""A pipelining Redis connection for the bus's hot path: publishing events and blocking reads.

redis-py stays the client for everything else (snapshots, leases, Cluster topology); this is the
part it does slowly. Measured on this machine (`python -m bench redis_client_cost`, one
``EVALSHA`` shaped like PUBLISH, sequential): redis-py 8.1 asyncio + hiredis spends ~130 µs of
client CPU per call, this connection ~50 µs; commands issued in the same event-loop iteration
go out in one ``write`` and their replies are parsed from one read (auto-pipelining). See
docs/decisions/0004-redis-hot-path-connection.md.

It is a plain `asyncio.Protocol`: hiredis packs the commands and parses the replies, and
replies are matched to callers in order (RESP2). There is one timer per connection, not one
per call: when the oldest unanswered command passes its deadline, the connection is dropped
and every caller gets `RespTimeoutError` (the state of a half-answered connection is unknown).

A connection given `on_push` can also subscribe (``SSUBSCRIBE``): messages
(``smessage``) and the server's unsubscriptions (``sunsubscribe``, also sent unasked when a slot
moves) go to `on_push` instead of to a caller, so ``SUNSUBSCRIBE`` is sent with `send`, which
expects no reply.

Given an `ssl.SSLContext` it speaks TLS (asyncio's SSL transport: the protocol is the same), and
given credentials it authenticates (``AUTH``) before it is handed out.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_
from collections import deque
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis

__all__ = ["PushHandler", "RespConnection", "RespConnectionError", "RespError", "RespTimeoutError"]

PushHandler = Callable[[bytes, bytes, bytes], None]  # kind, channel, message (or count)
PUSH_KINDS = (b"smessage", b"sunsubscribe")

WATCH_INTERVAL_S = 0.1  # how often a connection with unanswered commands checks their deadlines


class RespError(Exception):
    """An error reply from Redis (``NOSCRIPT …``, ``MOVED …``, ``ERR …``)."""

    @property
    def prefix(self) -> str:
        return str(self).split(" ", 1)[0]


class RespConnectionError(ConnectionError):
    """The connection failed or closed before the reply came."""


class RespTimeoutError(RespConnectionError):
    """No reply by the deadline; the connection was dropped."""


class RespConnection(asyncio.Protocol):
    def __init__(self) -> None:
        self.on_push: PushHandler | None = None
        self.on_close: Callable[[], None] | None = None  # called once, when it closes
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader()
        self._transport: asyncio.Transport | None = None
        self._pending: deque[tuple[asyncio.Future[Any], float]] = deque()  # (caller, deadline)
        self._out: list[bytes] = []  # commands packed in this loop iteration
        self._flush_scheduled = False
        self._watch: asyncio.TimerHandle | None = None
        self._watch_due = 0.0  # (loop time) when `_watch` is due
        self.closed = False

    @property
    def unanswered(self) -> int:
        """How many commands sent wait for their reply."""
        return len(self._pending)

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        timeout: float,
        ssl: ssl_.SSLContext | None = None,
        auth: tuple[str, ...] = (),
        db: int = 0,
    ) -> RespConnection:
        """Connect (over TLS with `ssl`, checking the certificate names `host`), send ``AUTH``
        with `auth` ((password,) or (user, password)), select `db`; all within `timeout`."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, protocol = await loop.create_connection(
                cls, host, port, ssl=ssl, server_hostname=host if ssl else None
            )
            try:
                if auth:
                    await protocol.call("AUTH", *auth, timeout=timeout)
                if db:
                    await protocol.call("SELECT", db, timeout=timeout)
            except BaseException:
                protocol.close()
                raise
        return protocol

    @classmethod
    async def open_url(
        cls, url: str, *, timeout: float, ssl: ssl_.SSLContext | None = None
    ) -> RespConnection:
        """Connect to ``redis[s]://[[user]:password@]host[:port][/db]``, authenticating and
        selecting the database as redis-py would (rediss://: over TLS, with `ssl` or the
        system's trusted CAs)."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"only redis:// and rediss:// URLs are supported, not {url!r}")
        if parts.scheme == "rediss" and ssl is None:
            ssl = ssl_.create_default_context()
        auth: tuple[str, ...] = ()
        if parts.password is not None:
            user = unquote(parts.username) if parts.username else None
            auth = (user, unquote(parts.password)) if user else (unquote(parts.password),)
        return await cls.open(
            parts.hostname or "127.0.0.1",
            parts.port or 6379,
            timeout=timeout,
            ssl=ssl if parts.scheme == "rediss" else None,
            auth=auth,
            db=int(parts.path.lstrip("/") or 0),
        )

    # -- calls --

    def call(self, *args: bytes | str | int | float, timeout: float) -> asyncio.Future[Any]:
        """Send a command (with those of the same loop iteration); the future gets its reply,
        `RespError` for an error reply, or `RespConnectionError`."""
        if self.closed:
            raise RespConnectionError("the Redis connection is closed")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._out.append(hiredis.pack_command(args))  # type: ignore[arg-type]  # stub: 1-tuple
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        self._pending.append((future, self._loop.time() + timeout))
        if self._watch is None:
            self._watch_due = self._loop.time() + WATCH_INTERVAL_S
            self._watch = self._loop.call_later(WATCH_INTERVAL_S, self._check_deadlines)
        return future

    def send(self, *args: bytes | str | int | float) -> None:
        """Send a command whose reply does not come to a caller (``SUNSUBSCRIBE``)."""
        if self.closed:
            return
        self._out.append(hiredis.pack_command(args))  # type: ignore[arg-type]  # stub: 1-tuple
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._transport is not None and not self.closed and self._out:
            self._transport.write(b"".join(self._out))
        self._out.clear()

    def _check_deadlines(self) -> None:
        self._watch = None
        if not self._pending:
            return
        now = self._loop.time()
        stalled = now - self._watch_due - WATCH_INTERVAL_S
        if stalled > 0:
            # The loop itself ran late (a busy node): that time is not Redis's. The commands
            # may not even have been written yet, and their replies may wait unread; failing
            # them would fail writes Redis stored (and close the connection).
            self._pending = deque((future, at + stalled) for future, at in self._pending)
        elif self._pending[0][1] <= now:
            self._fail(RespTimeoutError("Redis did not answer in time"))
            return
        self._watch_due = now + WATCH_INTERVAL_S
        self._watch = self._loop.call_later(WATCH_INTERVAL_S, self._check_deadlines)

    def close(self) -> None:
        self._fail(RespConnectionError("the Redis connection was closed"))

    def _fail(self, exc: Exception) -> None:
        was_closed, self.closed = self.closed, True
        if self._transport is not None:
            self._transport.abort()
        pending, self._pending = self._pending, deque()
        for future, _ in pending:
            if not future.done():
                future.set_exception(exc)
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if not was_closed and self.on_close is not None:
            self.on_close()

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(RespConnectionError(f"unreadable reply from Redis: {exc}"))
                return
            if reply is False:
                return
            if (
                self.on_push is not None
                and isinstance(reply, list)
                and len(reply) == 3
                and reply[0] in PUSH_KINDS
            ):
                self.on_push(reply[0], reply[1], reply[2])
                continue
            if not self._pending:
                self._fail(RespConnectionError("a reply nobody asked for"))
                return
            future, _ = self._pending.popleft()
            if future.done():
                continue  # its caller was cancelled
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(RespError(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self._fail(RespConnectionError(f"Redis closed the connection ({exc or 'EOF'})"))
