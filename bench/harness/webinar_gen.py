"""A webinar load generator process: a share of one room's clients, each a lean WebSocket
(`bench.harness.rawws`) that parses only what its checks need (`bench.harness.webinar_view`).
Started by the webinar study (bench/studies/webinar.py) as

    python -m bench.harness.webinar_gen CONFIG.json

It prints ``{"ready": true}``, then answers each command line on stdin with one JSON line:

- ``{"cmd": "act", "what": W, "t0": NS, "rate": R, "slots": [[CLIENT, SLOT], ...]}``: client
  CLIENT does W at ``t0 + SLOT / R`` (open loop: W is ``join``, ``hand``, ``bcast``,
  ``session`` or ``leave``); the answer, once every action is done, carries the present
  participants' roster fingerprint after a join;
- ``{"cmd": "await", "expect": {...}, "timeout_s": S}``: wait until every client still in the
  room shows what `Expect` says (or S passes); the answer says how many do and when the last
  one's view last changed;
- ``{"cmd": "tally"}``: this phase's counters and latency histogram, then a fresh tally;
- ``{"cmd": "quit"}`` (or the end of stdin).

A join refused with `unavailable` is sent again after the error's `retryAfter` (ms), as a real
client would, on a new connection; a client that is not in by `JOIN_GIVE_UP_S` after its slot
is counted as a join failure. An unexpected close is counted by its close code (4002: the node
fenced itself; 1008: slow consumer or flooding) and the client is out of the run.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import orjson

from bench.harness.common import emit, encode_hist, hist_from_values, serve_commands
from bench.harness.rawws import RawWebSocket, connect
from bench.harness.webinar_view import Expect, SidTable, Tally, View, fingerprint

mono = time.monotonic_ns
JOIN_GIVE_UP_S = 120.0  # a client not in by then (after its slot) is a join failure
JOIN_REPLY_S = 60.0  # the longest wait for a join's answer on one connection
LEAVE_ACK_S = 10.0
RETRY_FLOOR_MS = 50  # an `unavailable` without a usable retryAfter waits at least this


@dataclass(eq=False)
class Client:
    gid: int
    url: str
    node: int
    role: str  # host | present | hidden
    token: str | None
    view: View
    ws: RawWebSocket | None = None
    watcher: asyncio.Task[None] | None = None  # waits for its close
    next_id: int = 1
    leaving: bool = False  # it closes its own connection: no unexpected close
    gone: bool = False  # left, or closed under it: no longer checked

    def rid(self) -> int:
        self.next_id += 1
        return self.next_id


class Generator:
    def __init__(self, config: dict[str, Any]) -> None:
        self.cfg = config
        ids = SidTable()
        self.clients = {
            c["gid"]: Client(c["gid"], c["url"], c["node"], c["role"], c.get("token"),
                             View(ids, owner=c["role"] == "host", hidden=c["role"] == "hidden"))
            for c in config["clients"]
        }  # fmt: skip
        self.tally = Tally()

    # -- actions --

    async def act(self, cmd: dict[str, Any]) -> dict[str, Any]:
        what, t0, rate = cmd["what"], cmd["t0"], cmd["rate"]
        do = {"join": self.join, "hand": self.hand, "bcast": self.bcast,
              "session": self.write_session, "leave": self.leave}[what]  # fmt: skip

        async def at(gid: int, slot: int) -> None:
            sched = t0 + int(slot * 1e9 / rate)
            delay = (sched - mono()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            await do(self.clients[gid], sched, slot)

        await asyncio.gather(*(at(gid, slot) for gid, slot in cmd["slots"]))
        out: dict[str, Any] = {"gen": self.cfg["gen_index"], "actions": len(cmd["slots"])}
        if what == "join":
            live = [c for c in self.clients.values() if c.ws is not None and not c.gone]
            present = [c.view.sid for c in live if c.role != "hidden"]
            out["present"], out["present_x"] = fingerprint(present)
            out["hidden"] = sum(1 for c in live if c.role == "hidden")
            out["counts_sent"] = sum(1 for c in live if c.view.counts is not None)
            out["hosts"] = fingerprint([c.view.sid for c in live if c.role == "host"])
        return out

    async def join(self, c: Client, sched: int, _slot: int) -> None:
        give_up = sched + int(JOIN_GIVE_UP_S * 1e9)
        token = "" if c.token is None else f',"token":"{c.token}"'
        attempt = 0
        loop = asyncio.get_running_loop()
        while mono() < give_up:
            wait_ms, ws = 0, None
            first: asyncio.Future[bytes] = loop.create_future()
            after: list[bytes] = []  # frames read with the reply, before this task resumes

            def reply(
                data: bytes, first: asyncio.Future[bytes] = first, after: list[bytes] = after
            ) -> None:
                if first.done():
                    after.append(data)
                else:
                    first.set_result(data)

            try:
                async with asyncio.timeout(JOIN_REPLY_S):
                    ws = await connect(c.url, reply)
                    ws.send_text(f'{{"type":"join","id":0{token}}}')
                    done, _ = await asyncio.wait(
                        (first, ws.closed), return_when=asyncio.FIRST_COMPLETED
                    )
            except (OSError, TimeoutError):
                if ws is not None:
                    ws.close()
                attempt += 1
                self.tally.retries += 1
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
                continue
            now = mono()
            if first in done:
                data = first.result()
                if data.startswith(b'{"type":"joined"'):
                    c.ws = ws
                    c.view.joined(orjson.loads(data), now, self.tally)
                    self.tally.count_frame("joined")
                    self.tally.latency_us.append((now - sched) // 1000)
                    ws.on_text = functools.partial(self._on_text, c.view)
                    for data in after:
                        self._on_text(c.view, data)
                    c.watcher = asyncio.create_task(self._watch(c, ws))
                    return
                retry = c.view.apply(data, now, self.tally)  # an error: counted there
                if retry is None:
                    ws.close()
                    break  # refused for good (a wrong token, a full room): a join failure
                wait_ms = max(retry, RETRY_FLOOR_MS)
            else:
                self.tally.close(ws.close_code)
                wait_ms = RETRY_FLOOR_MS
            ws.close()
            self.tally.retries += 1
            await asyncio.sleep(wait_ms / 1000)
        self.tally.join_failures += 1
        c.gone = True

    def _on_text(self, view: View, data: bytes) -> None:
        view.apply(data, mono(), self.tally)  # this phase's tally

    async def _watch(self, c: Client, ws: RawWebSocket) -> None:
        """Count a close the client did not ask for (4002 fencing, 1008 ...)."""
        try:
            await ws.closed
        finally:
            if not c.leaving:
                self.tally.close(ws.close_code)
            c.gone = True

    async def _send(self, c: Client, frame: str) -> None:
        if c.ws is None or c.gone:
            return
        c.ws.send_text(frame)

    async def hand(self, c: Client, sched: int, _slot: int) -> None:
        data = f'{{"hand":true,"t":{sched}}}'
        await self._send(c, f'{{"type":"set-user-data","id":{c.rid()},"data":{data}}}')

    async def bcast(self, c: Client, sched: int, slot: int) -> None:
        data = f'{{"b":"{slot}:{sched}"}}'
        await self._send(c, f'{{"type":"send-app-message","id":{c.rid()},"data":{data},"to":"*"}}')

    async def write_session(self, c: Client, sched: int, slot: int) -> None:
        data = f'{{"s":"{slot}:{sched}"}}'
        frame = (f'{{"type":"set-meeting-session-data","id":{c.rid()},"data":{data},'
                 f'"mergeStrategy":"shallow-merge"}}')  # fmt: skip
        await self._send(c, frame)

    async def leave(self, c: Client, sched: int, _slot: int) -> None:
        if c.ws is None or c.gone:
            return
        c.leaving = True
        acks = c.view.acks
        await self._send(c, f'{{"type":"leave","id":{c.rid()}}}')
        deadline = mono() + int(LEAVE_ACK_S * 1e9)
        while c.view.acks == acks and not c.gone and mono() < deadline:  # its ack: it is out
            await asyncio.sleep(0.005)
        self.tally.latency_us.append((mono() - sched) // 1000)
        c.gone = True
        c.ws.close()

    # -- checks --

    async def wait(self, cmd: dict[str, Any]) -> dict[str, Any]:
        e = cmd["expect"]
        expect = Expect(
            roster_n=e["roster_n"], roster_x=int(e["roster_x"]),
            counts=tuple(e["counts"]) if e.get("counts") else None,
            session_seq=e.get("session_seq"), hands=e.get("hands"), bcast=None,
        )  # fmt: skip
        sender = e.get("bcast_sender")
        deadline = mono() + int(cmd["timeout_s"] * 1e9)
        while True:
            live = [c for c in self.clients.values() if not c.gone and c.ws is not None]
            ok = 0
            for c in live:
                want = expect
                if e.get("bcast") is not None:
                    want = _with_bcast(expect, 0 if c.gid == sender else e["bcast"])
                ok += c.view.matches(want)
            if ok == len(live) or mono() >= deadline:
                break
            await asyncio.sleep(0.05)
        return {
            "gen": self.cfg["gen_index"], "views": len(live), "converged": ok,
            "last_change_ns": max((c.view.changed_ns for c in live), default=0),
        }  # fmt: skip

    def take_tally(self) -> dict[str, Any]:
        tally, self.tally = self.tally, Tally()
        return {**tally.summary(), "hist": encode_hist(hist_from_values(tally.latency_us))}

    async def close(self) -> None:
        for c in self.clients.values():
            c.leaving = True
            if c.watcher is not None:
                c.watcher.cancel()
            if c.ws is not None:
                c.ws.close()
        await asyncio.sleep(0)  # the close frames go out before the loop ends


def _with_bcast(e: Expect, n: int) -> Expect:
    return Expect(e.roster_n, e.roster_x, e.counts, e.session_seq, e.hands, n)


async def main(path: str) -> None:
    with open(path) as f:
        gen = Generator(json.load(f))
    try:
        emit({"ready": True, "clients": len(gen.clients)})

        async def handle(cmd: dict[str, Any]) -> dict[str, Any] | None:
            if cmd["cmd"] == "act":
                return {"acted": await gen.act(cmd)}
            if cmd["cmd"] == "await":
                return {"awaited": await gen.wait(cmd)}
            if cmd["cmd"] == "tally":
                return {"tally": gen.take_tally()}
            return None

        await serve_commands(handle)
    except Exception as exc:  # the orchestrator shows it
        emit({"fatal": f"{type(exc).__name__}: {exc}"})
        raise
    finally:
        await gen.close()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(sys.argv[1]))
