"""The call's events as the app sees them: handlers, and the history `next_event` reads.

`CallState` says which events happened; `Emitter` delivers them, in order, to the handlers
registered with `on` or `once` (a coroutine handler runs as a task; a failing handler is logged,
never raised) and, when recording, keeps them for `events` and `next_event` (tests wait on events
instead of sleeping). Every event carries daily-js's ``action`` (its name); the lifecycle events
give daily-js's `meeting_state()`. `CallEvents` is this half of `CallClient`'s API.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any, Final

from roomstate.sdk.state import EVENTS, Event

__all__ = ["MEETING_STATES", "CallEvents", "Emitter", "Handler"]

logger = logging.getLogger(__name__)

Handler = Callable[[Event], object]  # a plain function, or one returning an awaitable

# daily-js's meetingState() values; each but "new" is the name of the event that enters it
MEETING_STATES: Final = (
    "new", "loading", "loaded", "joining-meeting", "joined-meeting", "left-meeting", "error",
)  # fmt: skip


class _Once:
    """A handler that removes itself after its first event."""

    def __init__(self, emitter: Emitter, event: str, listener: Handler) -> None:
        self.emitter, self.event, self.listener = emitter, event, listener

    def __call__(self, payload: Event) -> object:
        self.emitter.off(self.event, self)
        return self.listener(payload)


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
        self.meeting_state = "new"  # the last lifecycle event's name ("error" outlasts a leave)

    def on(self, event: str, handler: Handler) -> None:
        """Call `handler(event)` for each event named `event`; a coroutine runs as a task."""
        self._handlers.setdefault(_check_event(event), []).append(handler)

    def once(self, event: str, handler: Handler) -> None:
        """Call `handler(event)` for the next event named `event` only."""
        self.on(event, _Once(self, event, handler))

    def off(self, event: str, handler: Handler | None = None) -> None:
        """Remove `handler` (also one given to `once`) from `event`, or every handler of it."""
        handlers = self._handlers.get(_check_event(event), [])
        if handler is None:
            handlers.clear()
            return
        for found in list(handlers):
            if found == handler or (isinstance(found, _Once) and found.listener == handler):
                handlers.remove(found)

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
        """Record `events` (name, payload) and run their handlers, in order; each payload gets
        daily-js's ``action``."""
        for event, content in events:
            payload = {"action": event, **content}
            if event in MEETING_STATES and not (
                event == "left-meeting" and self.meeting_state == "error"
            ):
                self.meeting_state = event
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


class CallEvents:
    """daily-js's event methods and meetingState(), over an `Emitter` (`CallClient`'s half)."""

    _emitter: Emitter

    def on(self, event: str, handler: Handler) -> None:
        """Call `handler(event)` for each event named `event`; a coroutine runs as a task."""
        self._emitter.on(event, handler)

    def once(self, event: str, handler: Handler) -> None:
        """Call `handler(event)` for the next event named `event` only."""
        self._emitter.once(event, handler)

    def off(self, event: str, handler: Handler | None = None) -> None:
        """Remove `handler` (also one given to `once`) from `event`, or every handler of it."""
        self._emitter.off(event, handler)

    def meeting_state(self) -> str:
        """daily-js's meetingState(): new, loading, loaded, joining-meeting, joined-meeting,
        left-meeting or error."""
        return self._emitter.meeting_state

    def events(self, event: str) -> list[Event]:
        """Every event named `event` received so far, oldest first."""
        return self._emitter.events(event)

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
        return await self._emitter.next_event(event, timeout, predicate)


def _check_event(event: str) -> str:
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}; the events are {', '.join(sorted(EVENTS))}")
    return event
