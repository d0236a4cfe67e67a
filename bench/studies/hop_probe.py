"""Time stamps inside a node process, for `python -m bench hops`; imported by nothing else.

`install` wraps a few functions of the node (and of aiohttp) so that each call notes
``(step, key, time.monotonic_ns())`` in a list, written to a file when the process exits. `key`
identifies the app message being handled: the generator's actual send time in ns, which the
bench's payload carries (`bench.harness.common.make_key`; taken just before the generator builds
and sends the frame, so the first hop includes the generator's own sending). A node handles one
message at a time at light load, so a step that cannot see the message (a write to the clients)
takes the key of the last one it saw; `bench.studies.hops` leaves out messages whose marks
interleave.
Each mark costs a wrapper call and a list append (about 1 µs), which the tool reports by running
the same step without the probe.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import time
from collections.abc import Callable
from typing import Any

# the bench payload {"k":"KEY",...} as it appears in a pushed event's bytes
KEY_MARK = b'"k":"'

marks: list[tuple[str, int, int]] = []
_current = [0]  # the key of the last message seen


def key_of(text: str | bytes) -> int:
    """The generator's actual send time (ns) from a bench key: scheduled ns + offset µs."""
    raw = text.decode() if isinstance(text, bytes) else text
    return int(raw[:20]) + int(raw[20:28]) * 1000


def mark(step: str, key: int | None = None) -> None:
    if key is not None:
        _current[0] = key
    marks.append((step, _current[0], time.monotonic_ns()))


def _before(step: str, func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        mark(step)
        return func(*args, **kwargs)

    return wrapper


def _around(start: str, end: str, func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        mark(start)
        try:
            return func(*args, **kwargs)
        finally:
            mark(end)

    return wrapper


def install(out: str) -> None:
    from aiohttp import web_protocol

    from roomstate.bus.redis.resp import RespConnection
    from roomstate.edge.node import Node
    from roomstate.server.fastpath import WriteBatch

    handler = web_protocol.RequestHandler
    handler.data_received = _before("client frame read", handler.data_received)  # type: ignore[method-assign]

    handle = Node.handle

    @functools.wraps(handle)
    async def handled(self: Node, conn: Any, request: Any, room_name: str) -> None:
        data = getattr(request, "data", None)
        if isinstance(data, dict) and isinstance(data.get("k"), str):
            with contextlib.suppress(ValueError):  # not a bench key: no mark
                mark("request handled", key_of(data["k"]))
        await handle(self, conn, request, room_name)

    Node.handle = handled  # type: ignore[method-assign]

    flush = RespConnection._flush

    @functools.wraps(flush)
    def flushed(self: RespConnection) -> None:
        flush(self)
        mark("redis write done")

    RespConnection._flush = flushed  # type: ignore[method-assign]

    received = RespConnection.data_received

    @functools.wraps(received)
    def redis_read(self: RespConnection, data: bytes) -> None:
        at = data.find(KEY_MARK)
        try:
            if at >= 0:
                key = data[at + len(KEY_MARK) : at + len(KEY_MARK) + 28]
                mark("redis push read", key_of(key))
            else:
                mark("redis reply read")
        except ValueError:  # a key cut by the end of this read: no mark
            pass
        received(self, data)

    RespConnection.data_received = redis_read  # type: ignore[method-assign]

    batch = WriteBatch._write_all
    WriteBatch._write_all = _around("client writes start", "client writes done", batch)  # type: ignore[method-assign]

    def dump() -> None:
        with open(out, "w") as f:
            f.writelines(f"{step}\t{key}\t{t}\n" for step, key, t in marks)

    atexit.register(dump)


if os.environ.get("ROOMSTATE_BENCH_HOPS"):
    install(os.path.join(os.environ["ROOMSTATE_BENCH_HOPS"], f"hops-{os.getpid()}.tsv"))
