"""The supervisor of ``roomstate serve --workers N``: N node processes on one port.

Each worker is ``roomstate serve`` with the supervisor's own options and, appended (the last
option wins), the port, its node id and ``--reuse-port``. Each is a node of its own, with its
own id (the node id and ``-w<index>``; a random node id is shared by the workers), lease and
incarnation; they share the port through SO_REUSEPORT, and the kernel spreads new connections
over them.

- The port: the supervisor binds it first (SO_REUSEPORT, without listening) and holds it until
  it exits. Port 0 then becomes one port that every worker is given, the workers start together
  instead of after a first one, and the port stays taken while workers restart, even all of
  them. A bound socket that does not listen is given no connections.
- Ready: the supervisor prints the node's "listening on" line once every worker printed its own.
- A worker that dies is started again after a backoff (`Restarts`); one that keeps dying soon
  after its start is in a crash loop: the supervisor stops the others and exits 1.
- SIGTERM or SIGINT: every worker gets SIGTERM and drains as a single node does; any still
  running after `DRAIN_S` gets SIGKILL. The exit code is 0 when every worker drained in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import re
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from roomstate import logs
from roomstate.settings import Settings

__all__ = ["CRASH_LOOP", "DRAIN_S", "QUICK_S", "Restarts", "reserve_port", "supervise"]

log = logging.getLogger(__name__)

QUICK_S = 10.0  # a worker that dies sooner than this after its start died quickly
CRASH_LOOP = 5  # quick deaths in a row of one worker: a crash loop, the supervisor exits 1
FIRST_BACKOFF_S = 0.5  # the wait before a dead worker starts again; doubles per quick death
MAX_BACKOFF_S = 8.0
# SIGTERM to SIGKILL: within Kubernetes' default grace (15 s in deploy/k8s, less its 2 s
# preStop); a node drains in about a second.
DRAIN_S = 10.0

_READY = re.compile(r"listening on (https?://[^\s\"]+)")  # a worker's line (text or JSON)


class Restarts:
    """When to start one dead worker again: after a backoff that doubles with each quick death
    in a row, or never (None): a crash loop. Time is an argument."""

    def __init__(
        self,
        quick_s: float = QUICK_S,
        limit: int = CRASH_LOOP,
        first_s: float = FIRST_BACKOFF_S,
        max_s: float = MAX_BACKOFF_S,
    ) -> None:
        self.quick_s = quick_s
        self.limit = limit
        self.first_s = first_s
        self.max_s = max_s
        self.quick_deaths = 0  # in a row; a worker that ran `quick_s` or longer resets it

    def died(self, ran_s: float) -> float | None:
        """The worker died after running `ran_s`: the wait before starting it again, or None."""
        if ran_s >= self.quick_s:
            self.quick_deaths = 0
            return self.first_s
        self.quick_deaths += 1
        if self.quick_deaths >= self.limit:
            return None
        return min(self.max_s, self.first_s * 2.0 ** (self.quick_deaths - 1))


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """A socket bound to `host`:`port` with SO_REUSEPORT, not listening, and its port (`port`,
    or the one the system chose for 0). Raises OSError if the port is taken."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    bound: int = sock.getsockname()[1]
    return sock, bound


def _die_with_supervisor() -> Callable[[], None] | None:
    """What a worker runs before it starts (Linux): SIGTERM when the supervisor dies, so that a
    killed supervisor leaves no workers holding the port. Looked up here, before any fork: the
    forked child only makes the call."""
    if sys.platform != "linux":
        return None
    try:
        prctl = ctypes.CDLL(None).prctl
    except (OSError, AttributeError):
        return None

    def set_parent_death_signal() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return set_parent_death_signal


@dataclass(eq=False)
class Worker:
    index: int
    node_id: str
    restarts: Restarts = field(default_factory=Restarts)
    process: asyncio.subprocess.Process | None = None
    ready: bool = False  # printed its "listening on" line, and has not exited since
    url: str = ""  # from that line


class Supervisor:
    """Runs the workers until SIGTERM, SIGINT or a crash loop (see the module docstring)."""

    def __init__(self, settings: Settings, serve_args: list[str], json_logs: bool) -> None:
        self.settings = settings
        self.serve_args = serve_args  # the options of `roomstate serve`, as given
        self.json_logs = json_logs
        base = settings.node_id or f"node-{uuid.uuid4().hex[:8]}"
        self.workers = [Worker(i, f"{base}-w{i}") for i in range(settings.workers)]
        self.port = 0
        self.failed = False  # a crash loop, or a worker that did not drain cleanly
        self.stopping = asyncio.Event()
        self.ready_changed = asyncio.Event()
        self.before_start = _die_with_supervisor()
        self.announced = False  # the ready lines are printed

    async def run(self) -> int:
        try:
            reservation, self.port = reserve_port(self.settings.host, self.settings.port)
        except OSError as exc:
            where = f"{self.settings.host}:{self.settings.port}"
            log.critical("cannot bind %s for the workers: %s", where, exc)
            return 1
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        try:
            keepers = [asyncio.create_task(self._keep(w)) for w in self.workers]
            announcing = asyncio.create_task(self._announce())
            await self.stopping.wait()
            announcing.cancel()
            await self._drain(keepers)
        finally:
            reservation.close()
        return 1 if self.failed else 0

    async def _announce(self) -> None:
        """Print the ready lines once every worker is ready."""
        while not all(w.ready for w in self.workers):
            await self.ready_changed.wait()
            self.ready_changed.clear()
        url = self.workers[0].url
        ids = ", ".join(
            f"{w.node_id} (pid {w.process.pid if w.process else '-'})" for w in self.workers
        )
        log.info("%d workers ready on port %d: %s", len(self.workers), self.port, ids)
        self.announced = True
        for line in (f"roomstate node listening on {url}", f"demo room: {url}/rooms/demo"):
            print(logs.json_line(line) if self.json_logs else line, flush=True)

    async def _keep(self, worker: Worker) -> None:
        """Run `worker`, and start it again each time it dies, until stopping or a crash loop."""
        argv = [
            *self.serve_args,
            *("--port", str(self.port), "--node-id", worker.node_id),
            *("--workers", "1", "--reuse-port"),
        ]
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                process = worker.process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    *("-m", "roomstate", "serve", *argv),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    preexec_fn=self.before_start,
                )
            except OSError as exc:  # out of processes or memory: a death at start
                log.error("cannot start worker %s: %s", worker.node_id, exc)
                if not await self._after_death(worker, 0.0, None):
                    return
                continue
            if self.stopping.is_set():  # the drain may have looked before it existed
                process.send_signal(signal.SIGTERM)
            assert process.stdout is not None
            async for line in process.stdout:
                found = _READY.search(line.decode(errors="replace"))
                if found and not worker.ready:
                    worker.ready, worker.url = True, found.group(1)
                    self.ready_changed.set()
                    if self.announced:
                        log.info("worker %s (pid %d) is ready again", worker.node_id, process.pid)
            code = await process.wait()
            worker.ready = False
            ran = time.monotonic() - started
            if self.stopping.is_set():
                if code != 0:
                    log.error("worker %s exited with code %d while draining", worker.node_id, code)
                    self.failed = True
                return
            log.error("worker %s (pid %d) exited with code %d after %.1f s", *(
                worker.node_id, process.pid, code, ran))  # fmt: skip
            if not await self._after_death(worker, ran, code):
                return

    async def _after_death(self, worker: Worker, ran: float, code: int | None) -> bool:
        """Wait before `worker` starts again; False: it must not (a crash loop, or stopping)."""
        delay = worker.restarts.died(ran)
        if delay is None:
            log.critical(
                "worker %s died %d times in a row within %g s of its start (last: code %s):"
                " a crash loop; stopping the other workers",
                *(worker.node_id, worker.restarts.limit, worker.restarts.quick_s, code),
            )
            self.failed = True
            self.stopping.set()
            return False
        log.info("starting worker %s again in %g s", worker.node_id, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), delay)
        return not self.stopping.is_set()

    async def _drain(self, keepers: list[asyncio.Task[None]]) -> None:
        """SIGTERM to every worker; SIGKILL to those still running after `DRAIN_S`."""
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.send_signal(signal.SIGTERM)
        _, pending = await asyncio.wait(keepers, timeout=DRAIN_S)
        for worker in self.workers:
            if pending and worker.process is not None and worker.process.returncode is None:
                log.error(
                    "worker %s did not drain within %g s: killing it", worker.node_id, DRAIN_S
                )
                worker.process.kill()
                self.failed = True
        if pending:
            await asyncio.wait(pending)


def supervise(settings: Settings, serve_args: list[str], json_logs: bool) -> int:
    """Run `settings.workers` workers until SIGTERM or SIGINT; the process's exit code."""

    async def run() -> int:
        return await Supervisor(settings, serve_args, json_logs).run()

    return asyncio.run(run())
