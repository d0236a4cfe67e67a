"""The peer the bench compares against: python-socketio's AsyncServer on aiohttp (uvloop) with
an AsyncRedisManager, so several of these processes share rooms through one Redis.

    python -m bench.systems.peer_server --port P --redis redis://127.0.0.1:R/0

Events: ``join`` (room name; acked) enters the room; ``msg`` re-emits the data to the room
without the sender — what a Socket.IO chat/room relay does.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import socketio
import uvloop
from aiohttp import web


async def main(port: int, redis_url: str) -> None:
    manager = socketio.AsyncRedisManager(redis_url)
    sio = socketio.AsyncServer(
        async_mode="aiohttp", client_manager=manager, logger=False, engineio_logger=False
    )
    app = web.Application()
    sio.attach(app)
    rooms: dict[str, str] = {}

    @sio.on("join")  # type: ignore[misc]
    async def join(sid: str, room: str) -> str:
        await sio.enter_room(sid, room)
        rooms[sid] = room
        return "ok"

    @sio.on("msg")  # type: ignore[misc]
    async def msg(sid: str, data: Any) -> None:
        await sio.emit("msg", data, room=rooms[sid], skip_sid=sid)

    @sio.event  # type: ignore[misc]
    async def disconnect(sid: str, *args: Any) -> None:
        rooms.pop(sid, None)

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"peer listening on http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--redis", required=True)
    args = ap.parse_args()
    uvloop.run(main(args.port, args.redis))
