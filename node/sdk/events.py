"""The call's events as the app sees them: handlers, and the history `next_event` reads.

`CallState` says which events happened; `Emitter` delivers them, in order, to the handlers
registered with `on` (a coroutine handler runs as a task; a failing handler is logged, never
raised) and, when recording, keeps them for `events` and `next_event` (tests wait on events
instead of sleeping).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

from roomstate.sdk.state import EVENTS, Event

__all__ = ["Emitter", "Handler"]

logger = logging.getLogger(__name__)

Handler = Callable[[Event], object]  # a plain function, or one returning an awaitable


class Emitter:
    """Event handlers and, with `record`, every event so far."""

    def __init__(self, record: bool = True) -> None:
        # keep every event for `events` and `next_event`; a long-running client that receives
        # many (a benchmark) turns it off to keep memory flat
        self.record = record
        self._handlers: dict[str, list[Handler]] = {}
        self._tasks: set[asyncio.Future[Any]] = set()  # running coroutine handlers
        self._history: dict[str, list[Event]] = {}  # event name -> every event so far
        self._cursor: dict[str, int] = {}  # event name -> index of the next for next_event
        self._arrived = asyncio.Event()  # set, then replaced, whenever an event is recorded

    def on(self, event: str, handler: Handler) -> None:
        """Call `handler(event)` for each event named `event`; a coroutine runs as a task."""
        self._handlers.setdefault(_check_event(event), []).append(handler)

    def off(self, event: str, handler: Handler | None = None) -> None:
        """Remove `handler` from `event`, or every handler of `event`."""
        handlers = self._handlers.get(_check_event(event), [])
        if handler is None:
            handlers.clear()
        elif handler in handlers:
            handlers.remove(handler)

    def events(self, event: str) -> list[Event]:
        """Every event named `event` received so far, oldest first."""
        return list(self._history.get(_check_event(event), []))

    async def next_event(
        self,
        event: str,
        timeout: float = 5.0,
        predicate: Callable[[Event], bool] | None = None,
    ) -> Event:
        """The next event named `event` (matching `predicate`) not yet returned by this method.

        Events are buffered from the start, so one that arrived before the call is returned
        at once; events skipped by `predicate` are consumed. Raises `TimeoutError`.
        """
        if not self.record:
            raise RuntimeError("next_event needs CallClient(record_events=True)")
        history = self._history.setdefault(_check_event(event), [])
        try:
            async with asyncio.timeout(timeout):
                while True:
                    index = self._cursor.get(event, 0)
                    while index < len(history):
                        found, index = history[index], index + 1
                        if predicate is None or predicate(found):
                            self._cursor[event] = index
                            return found
                    self._cursor[event] = index
                    await self._arrived.wait()
        except TimeoutError:
            raise TimeoutError(f"no {event!r} event within {timeout} s") from None

    def emit(self, events: list[tuple[str, Event]]) -> None:
        """Record `events` (name, payload) and run their handlers, in order."""
        for event, payload in events:
            if self.record:
                self._history.setdefault(event, []).append(payload)
                self._arrived.set()
                self._arrived = asyncio.Event()
            for handler in list(self._handlers.get(event, [])):
                try:
                    result = handler(payload)
                except Exception:
                    logger.exception("the %r handler %r failed", event, handler)
                    continue
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("an event handler failed", exc_info=task.exception())


def _check_event(event: str) -> str:
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}; the events are {', '.join(sorted(EVENTS))}")
    return event
