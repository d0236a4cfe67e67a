"""The Redis bus's lease keeper: the renewal rounds on a thread with its own event loop and its
own connections to Redis.

On the node's loop, a renewal waits behind whatever else the loop has to do: fanning out a join
storm to thousands of clients can hold it for seconds, longer than a lease lasts, and a node
taken for lost because it was busy would fence itself (close every client): load would become an
outage. On a thread of its own, a renewal waits only for Redis; Python switches threads every
few milliseconds however busy the node's thread is. A paused process stops this thread too, so
the lease still expires for a paused node, and a node whose loop is stuck for good stops being
renewed (`LeaseKeeper.stuck_s`).

Its connections are its own (asyncio connections belong to one loop): a `Connections` and a
`Leases` used only on the thread. The node reads what the thread writes (`lease_confirmed_at`,
`ready`) as single values (an assignment is atomic), and gets each round's report through
`call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading

from roomstate.bus.keeper import LeaseKeeper, LeaseRound
from roomstate.bus.redis.connections import Connections
from roomstate.bus.redis.feed import Feed
from roomstate.bus.redis.leases import Leases
from roomstate.errors import BusError
from roomstate.metrics import BusMetrics
from roomstate.settings import Settings

__all__ = ["KeeperThread"]

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 5.0  # closing the bus waits this long for the thread to end


class KeeperThread:
    """Runs a `LeaseKeeper` on a thread of its own (see the module docstring)."""

    def __init__(self, settings: Settings, node_conns: Connections, metrics: BusMetrics) -> None:
        self._conns = Connections(settings)  # used on the thread only
        self._metrics = metrics  # its lease losses are counted on the thread
        self.leases = Leases(self._conns, Feed())  # its `lease_confirmed_at` is read by the node
        self._node_conns = node_conns  # whose `ready` follows the renewals, as it did before
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the thread's
        self._task: asyncio.Task[None] | None = None  # the rounds, on the thread's loop
        self._stopped = False

    def start(self, keeper: LeaseKeeper) -> None:
        """Start the rounds; `keeper.report` is called on the calling (the node's) loop."""
        node_loop = asyncio.get_running_loop()
        report = keeper.report

        def post(lease_round: LeaseRound) -> None:  # on the thread
            self._node_conns.ready = self._conns.ready
            if lease_round.state in ("taken", "missing"):  # the keeper gave it up
                self._metrics.lease_losses += 1
            with contextlib.suppress(RuntimeError):  # the node's loop is closed: nobody to tell
                node_loop.call_soon_threadsafe(report, lease_round)

        keeper = dataclasses.replace(keeper, renew=self.leases.renew_lease, report=post)
        self._stopped = False
        self._thread = threading.Thread(
            target=self._main, args=(keeper,), name="lease-keeper", daemon=True
        )
        self._thread.start()

    def _main(self, keeper: LeaseKeeper) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._task = loop.create_task(self._run(keeper))
            if self._stopped:  # stopped before the task existed
                self._task.cancel()
            loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        finally:
            loop.close()

    async def _run(self, keeper: LeaseKeeper) -> None:
        try:
            try:
                await self._conns.start()
            except BusError as exc:  # the rounds report it, and retry
                log.warning("the lease keeper cannot reach Redis yet: %s", exc)
            await keeper.run()
        finally:
            await self._conns.close()

    @property
    def reconnects(self) -> int:
        """The thread's connections opened in place of a lost one."""
        return self._conns.reconnects

    def stop(self) -> None:
        """Stop the rounds (the thread ends soon after; `close` waits for it)."""
        self._stopped = True
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # its loop is already closed
                loop.call_soon_threadsafe(task.cancel)

    async def close(self) -> None:
        """Stop, and wait for the thread to end."""
        self.stop()
        thread = self._thread
        if thread is not None and thread.is_alive():
            await asyncio.to_thread(thread.join, JOIN_TIMEOUT_S)
            if thread.is_alive():
                log.warning("the lease keeper's thread did not end in %g s", JOIN_TIMEOUT_S)
