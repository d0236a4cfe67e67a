"""The Python client SDK: `CallClient` (daily-js's call object, in Python naming), `RestClient`
(the REST API) and `CallState` (the call's state without a socket, for another transport). The
browser SDK's files are in browser/.

    client.py   CallClient: the asyncio transport (WebSocket, requests, replies, timeouts)
    state.py    CallState: server frames in, events out; no I/O
    events.py   Emitter: the app's event handlers and the history `next_event` reads
    rest.py     RestClient
    errors.py   the exception tree

`CallState` and the errors import no aiohttp: the transport's modules load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from roomstate.sdk.state import CallState

__all__ = ["CallClient", "CallState", "RestClient"]

if TYPE_CHECKING:
    from roomstate.sdk.client import CallClient
    from roomstate.sdk.rest import RestClient


def __getattr__(name: str) -> Any:
    if name == "CallClient":
        from roomstate.sdk.client import CallClient

        return CallClient
    if name == "RestClient":
        from roomstate.sdk.rest import RestClient

        return RestClient
    raise AttributeError(f"module 'roomstate.sdk' has no attribute {name!r}")
