"""The REST API (JSON over HTTP), and the request helpers every handler shares.

    POST /v1/rooms/{room}/send-app-message   bearer API key (none in development mode)
    GET  /v1/rooms/{room}/presence
    GET  /v1/rooms/{room}/session-data
    POST /v1/rooms/{room}/session-data
    POST /v1/meeting-tokens

Errors are ``{"error", "info"}`` bodies: 400 for a request the node refuses, 401 without the API
key, 503 when the store cannot take or give the data (retry later).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from roomstate.auth import check_api_key, make_token
from roomstate.edge.node import Node
from roomstate.errors import BusError, RequestError
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
    "rest_error",
    "rest_get_session_data",
    "rest_meeting_token",
    "rest_presence",
    "rest_send_app_message",
    "rest_set_session_data",
    "room_name",
]

NODE_KEY = web.AppKey("node", Node)


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
    participants, counts = await request.app[NODE_KEY].presence(room_name(request))
    body = {"total_count": len(participants), "data": participants, "participant_counts": counts}
    return json_response(body)


@rest
async def rest_get_session_data(request: web.Request) -> web.Response:
    return json_response({"data": await request.app[NODE_KEY].session_data(room_name(request))})


@rest
async def rest_set_session_data(request: web.Request) -> web.Response:
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


@rest
async def rest_meeting_token(request: web.Request) -> web.Response:
    node, body = request.app[NODE_KEY], await _body(request)
    if node.settings.api_key is None:
        info = "meeting tokens need an API key (ROOMSTATE_API_KEY); development mode has none"
        raise rest_error(400, "invalid-request-error", info)
    props = body.get("properties")
    if not isinstance(props, dict) or not isinstance(props.get("room_name"), str):
        raise rest_error(400, "invalid-request-error", "'properties.room_name' is required")
    fields = {"user_name": str, "user_id": str, "is_owner": bool, "exp": int, "nbf": int}
    names = {str: "a string", bool: "a boolean", int: "an integer (Unix seconds)"}
    for field, kind in fields.items():
        value = props.get(field)
        if value is not None and type(value) is not kind:  # (True is not an int here)
            raise rest_error(400, "invalid-request-error", f"'{field}' must be {names[kind]}")
    permissions = props.get("permissions", {})
    if not isinstance(permissions, dict):
        raise rest_error(400, "invalid-request-error", "'permissions' must be an object")
    has_presence = permissions.get("hasPresence", True)
    if not isinstance(has_presence, bool):
        info = "'permissions.hasPresence' must be a boolean"
        raise rest_error(400, "invalid-request-error", info)
    try:
        token = make_token(
            node.settings.api_key,
            props["room_name"],
            user_name=props.get("user_name"),
            user_id=props.get("user_id"),
            owner=props.get("is_owner") is True,
            exp=props.get("exp"),
            nbf=props.get("nbf"),
            has_presence=has_presence,
        )
    except ValueError as exc:  # a room name or user name a join would refuse
        raise rest_error(400, "invalid-request-error", str(exc)) from None
    return json_response({"token": token})
