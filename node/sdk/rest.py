"""The Python SDK's client of the node's server-side REST API: `RestClient`.

It sends app messages as ``"API"``, reads presence and session data, writes session data and
mints meeting tokens, authenticated with the node's API key. A call the node answers with an error
status raises `RestError`.
"""

from __future__ import annotations

from types import TracebackType

import aiohttp
import orjson

from roomstate.crdt import Json
from roomstate.sdk.errors import RestError
from roomstate.wire.protocol import ROOM_NAME

__all__ = ["RestClient"]


class RestClient:
    """The node's server-side REST API (`Authorization: Bearer <api key>`)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")  # http(s)://HOST:PORT
        self.api_key = api_key
        self.timeout = timeout  # seconds for each call
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RestClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def send_app_message(
        self, room: str, data: Json, recipient: str | list[str] = "*"
    ) -> Json:
        """Send an app message from ``"API"`` to the room's participants (or one of them)."""
        body = {"data": data, "recipient": recipient}
        return await self._call("POST", f"/v1/rooms/{_room(room)}/send-app-message", body)

    async def presence(self, room: str) -> Json:
        """The node's answer listing the room's participants."""
        return await self._call("GET", f"/v1/rooms/{_room(room)}/presence")

    async def get_session_data(self, room: str) -> Json:
        """``{"data": ...}``: the room's meeting session data."""
        return await self._call("GET", f"/v1/rooms/{_room(room)}/session-data")

    async def set_session_data(
        self,
        room: str,
        data: dict[str, Json],
        merge_strategy: str = "replace",
        keys_to_delete: list[str] | None = None,
    ) -> Json:
        """Write the room's meeting session data, as a participant's write would."""
        body: dict[str, Json] = {"data": data, "mergeStrategy": merge_strategy}
        if keys_to_delete:
            body["keysToDelete"] = keys_to_delete
        return await self._call("POST", f"/v1/rooms/{_room(room)}/session-data", body)

    async def create_meeting_token(
        self,
        room_name: str,
        user_name: str | None = None,
        user_id: str | None = None,
        is_owner: bool | None = None,
        exp: int | None = None,
    ) -> str:
        """A meeting token (JWT) for `room_name`; `exp` is a Unix time in seconds."""
        given = {"user_name": user_name, "user_id": user_id, "is_owner": is_owner, "exp": exp}
        properties = {"room_name": room_name, **{k: v for k, v in given.items() if v is not None}}
        answer = await self._call("POST", "/v1/meeting-tokens", {"properties": properties})
        return str(answer["token"])

    async def _call(self, method: str, path: str, body: Json = None) -> Json:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        headers = {"Content-Type": "application/json"}
        if self.api_key is not None:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else orjson.dumps(body)
        async with self._http.request(
            method, self.base_url + path, data=data, headers=headers
        ) as response:
            raw = await response.read()
            status = response.status
        try:
            answer = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:  # aiohttp's own answers (404, 405, 413) are plain text
            text = raw[:200].decode(errors="replace")
            raise RestError(
                status, f"http-{status}" if status >= 400 else "bad-response", text
            ) from None
        if status >= 400:
            error = answer if isinstance(answer, dict) else {}
            raise RestError(status, str(error.get("error", f"http-{status}")), error.get("info"))
        return answer


def _room(room: str) -> str:
    if not ROOM_NAME.match(room):
        raise ValueError(f"a room name is 1-64 characters of A-Z a-z 0-9 . _ -, not {room!r}")
    return room
