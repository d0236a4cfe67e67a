"""The REST API (JSON over HTTP) in Daily's paths and shapes, and the helpers every handler shares.

    POST /v1/rooms/{room}/send-app-message   bearer API key (none in development mode)
    GET  /v1/rooms/{room}/presence           ?limit ?userId ?userName
    GET  /v1/rooms/{room}/get-session-data
    POST /v1/rooms/{room}/set-session-data
    GET  /v1/rooms/{room}/session-data       the older paths of the two above (an alias)
    POST /v1/rooms/{room}/session-data
    POST /v1/meeting-tokens
    GET  /v1/meeting-tokens/{token}          ?ignoreNbf
    GET  /v1/openapi.json                    this API's OpenAPI document (no key needed)

Errors are ``{"error", "info"}`` bodies: 400 for a request the node refuses, 401 without the API
key, 503 when the store cannot take or give the data (retry later).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from roomstate.auth import check_api_key, make_token, read_token
from roomstate.edge.node import Node
from roomstate.errors import BusError, RequestError
from roomstate.server.tokens import claims_to_properties, token_arguments
from roomstate.wire.protocol import (
    ROOM_NAME,
    depth,
    parse_session_data_write,
    recipients,
    too_deep,
)

__all__ = [
    "NODE_KEY",
    "json_response",
    "openapi",
    "rest_error",
    "rest_get_session_data",
    "rest_meeting_token",
    "rest_presence",
    "rest_read_meeting_token",
    "rest_send_app_message",
    "rest_set_session_data",
    "rest_set_session_data_alias",
    "room_name",
]

NODE_KEY = web.AppKey("node", Node)
OPENAPI = Path(__file__).parent / "openapi.json"  # this API's OpenAPI 3.1 document


def room_name(request: web.Request) -> str:
    name = request.match_info["room"]
    if not ROOM_NAME.match(name):
        raise rest_error(400, "bad-request", "a room name is 1-64 characters of A-Z a-z 0-9 . _ -")
    return name


def rest_error(status: int, error: str, info: str) -> web.HTTPException:
    body = orjson.dumps({"error": error, "info": info})
    classes = {
        400: web.HTTPBadRequest,
        401: web.HTTPUnauthorized,
        403: web.HTTPForbidden,
        503: web.HTTPServiceUnavailable,
    }
    return classes.get(status, web.HTTPBadRequest)(body=body, content_type="application/json")


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


RestHandler = Callable[[web.Request], Awaitable[web.Response]]


def rest(handler: RestHandler) -> RestHandler:
    """A REST endpoint: it needs the API key (but in development mode), and answers 503 when
    the store cannot take or give the data. (A decorator rather than a middleware: a middleware
    also wraps each WebSocket handler for the connection's whole life, two more coroutines per
    connection for every full garbage collection to walk.)"""

    @functools.wraps(handler)
    async def checked(request: web.Request) -> web.Response:
        key = request.app[NODE_KEY].settings.api_key
        if key is not None and not check_api_key(key, request.headers.get("Authorization")):
            raise rest_error(401, "authorization-error", "send 'Authorization: Bearer <API key>'")
        try:
            return await handler(request)
        except BusError as exc:  # retry later: the store could not take or give the data
            raise rest_error(503, "unavailable", f"the store is unavailable: {exc}") from None

    return checked


async def _body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, held to the nesting limit of client frames."""
    max_depth = request.app[NODE_KEY].limits.max_depth
    nesting = f"JSON nesting is deeper than {max_depth} levels"
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        if too_deep(exc):
            raise rest_error(400, "invalid-request-error", nesting) from None
        raise rest_error(400, "invalid-request-error", f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise rest_error(400, "invalid-request-error", "the body must be a JSON object")
    if depth(body) > max_depth:
        raise rest_error(400, "invalid-request-error", nesting)
    return body


@rest
async def rest_send_app_message(request: web.Request) -> web.Response:
    node, name, body = request.app[NODE_KEY], room_name(request), await _body(request)
    if "data" not in body:
        raise rest_error(400, "invalid-request-error", "'data' is required")
    size = len(orjson.dumps(body["data"]))
    if size > node.limits.app_message_bytes:
        info = f"app message data is {size} bytes; the limit is {node.limits.app_message_bytes}"
        raise rest_error(400, "invalid-request-error", info)
    try:
        recipient = recipients(body.get("recipient", "*"), "recipient")
    except RequestError as exc:
        raise rest_error(400, "invalid-request-error", exc.message) from None
    try:
        await node.rest_send_app_message(name, body["data"], recipient)
    except RequestError as exc:
        raise _refused(exc) from None
    return json_response({"sent": True})


@rest
async def rest_presence(request: web.Request) -> web.Response:
    """Daily's presence snapshot: ``{total_count, data: [item…]}``, each item in Daily's
    fields, plus roomstate's ``userData`` and ``owner`` per item and ``participant_counts``."""
    name, query = room_name(request), request.query
    limit = _limit(query.get("limit"))
    participants, counts = await request.app[NODE_KEY].presence(name)
    now_ms = time.time() * 1000
    items = [
        _presence_item(name, p, now_ms)
        for p in sorted(participants, key=lambda p: (p.get("joined_at") or 0, p["session_id"]))
    ]
    if "userId" in query:
        items = [item for item in items if item["userId"] == query["userId"]]
    if "userName" in query:
        items = [item for item in items if item["userName"] == query["userName"]]
    body = {
        "total_count": len(items),
        "data": items if limit is None else items[:limit],
        "participant_counts": counts,
    }
    return json_response(body)


def _limit(given: str | None) -> int | None:
    if given is None:
        return None
    if not given.isascii() or not given.isdigit() or len(given) > 10:
        raise rest_error(400, "invalid-request-error", "'limit' must be a whole number, 0 or more")
    return int(given)


def _presence_item(room: str, p: dict[str, Any], now_ms: float) -> dict[str, Any]:
    joined_ms = p.get("joined_at") or 0
    joined = datetime.fromtimestamp(joined_ms / 1000, UTC)
    return {
        "room": room,
        "id": p["session_id"],
        "userId": p["user_id"],
        "userName": p["user_name"],
        "mtgSessionId": None,  # roomstate has no meeting-session ids
        "joinTime": joined.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "duration": max(0, int((now_ms - joined_ms) // 1000)),
        "userData": p["userData"],
        "owner": p["owner"],
    }


@rest
async def rest_get_session_data(request: web.Request) -> web.Response:
    return json_response({"data": await request.app[NODE_KEY].session_data(room_name(request))})


@rest
async def rest_set_session_data(request: web.Request) -> web.Response:
    """Daily's answer ``{"sent": true}``, plus the state after the write as ``data``."""
    node, name, body = request.app[NODE_KEY], room_name(request), await _body(request)
    try:
        write = parse_session_data_write({"data": {}, **body}, None, node.limits)
        data = await node.rest_set_session_data(name, write)
    except RequestError as exc:
        raise _refused(exc) from None
    return json_response({"sent": True, "data": data})


@rest
async def rest_set_session_data_alias(request: web.Request) -> web.Response:
    """The older path's answer: ``{"data": …}`` only (``data`` is required there)."""
    node, name, body = request.app[NODE_KEY], room_name(request), await _body(request)
    try:
        write = parse_session_data_write(body, None, node.limits)
        data = await node.rest_set_session_data(name, write)
    except RequestError as exc:
        raise _refused(exc) from None
    return json_response({"data": data})


def _refused(exc: RequestError) -> web.HTTPException:
    """A write the node refused: 503 if it may not store now (retry later), else 400."""
    if exc.code == "unavailable":
        return rest_error(503, "unavailable", exc.message)
    return rest_error(400, "invalid-request-error", exc.message)


def _signing_key(request: web.Request) -> str:
    key = request.app[NODE_KEY].settings.api_key
    if key is None:
        info = "meeting tokens need an API key (ROOMSTATE_API_KEY); development mode has none"
        raise rest_error(400, "invalid-request-error", info)
    return key


@rest
async def rest_meeting_token(request: web.Request) -> web.Response:
    body = await _body(request)
    key = _signing_key(request)
    try:
        args = token_arguments(body)
        token = make_token(key, args.pop("room"), **args)
    except ValueError as exc:  # a property it cannot carry, or a name a join would refuse
        raise rest_error(400, "invalid-request-error", str(exc)) from None
    return json_response({"token": token})


@rest
async def rest_read_meeting_token(request: web.Request) -> web.Response:
    """Daily's token check: the properties of a valid token signed with this node's key."""
    key = _signing_key(request)
    ignore_nbf = request.query.get("ignoreNbf", "false")
    if ignore_nbf not in ("true", "false"):
        raise rest_error(400, "invalid-request-error", "'ignoreNbf' must be true or false")
    try:
        claims = read_token(key, request.match_info["token"], ignore_nbf=ignore_nbf == "true")
    except ValueError as exc:
        raise rest_error(400, "invalid-request-error", str(exc)) from None
    return json_response(claims_to_properties(claims))


async def openapi(request: web.Request) -> web.FileResponse:
    """The OpenAPI document, served as the package ships it (public: it holds no data)."""
    return web.FileResponse(OPENAPI, headers={"Content-Type": "application/json"})
