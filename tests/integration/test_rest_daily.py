"""The REST API in Daily's paths and shapes, against real node processes: session data
(get-session-data, set-session-data and the older alias), presence items and their query
parameters, meeting tokens with every property carried into the token, and the token check."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest

from roomstate.auth import make_token
from roomstate.sdk.client import CallClient

from .conftest import API_KEY, NodeProcess

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {API_KEY}"}
OPENAPI = Path(__file__).resolve().parents[2] / "node" / "server" / "openapi.json"


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    data = None if body is None else orjson.dumps(body)
    async with http.request(method, url, data=data, headers=headers or {}) as response:
        return response.status, orjson.loads(await response.read())


# -- session data --


async def test_set_and_get_session_data_in_dailys_paths(
    http: aiohttp.ClientSession, node: NodeProcess, room: str, clients: list[CallClient]
) -> None:
    watcher = CallClient()
    clients.append(watcher)
    await watcher.join(node.room_url(room), user_name="watcher")
    base = f"{node.url}/v1/rooms/{room}"
    status, body = await call(http, "POST", f"{base}/set-session-data", {"data": {"a": 1, "b": 2}})
    assert (status, body) == (200, {"sent": True, "data": {"a": 1, "b": 2}})
    merge = {"data": {"c": 3}, "mergeStrategy": "shallow-merge", "keysToDelete": ["a"]}
    status, body = await call(http, "POST", f"{base}/set-session-data", merge)
    assert (status, body) == (200, {"sent": True, "data": {"b": 2, "c": 3}})
    assert await call(http, "GET", f"{base}/get-session-data") == (200, {"data": {"b": 2, "c": 3}})
    event = await watcher.next_event(
        "meeting-session-state-updated",
        predicate=lambda e: e["meetingSessionState"]["data"] == {"b": 2, "c": 3},
    )
    assert event["meetingSessionState"]["data"] == {"b": 2, "c": 3}
    # Daily's default: no data replaces the state with {}
    assert await call(http, "POST", f"{base}/set-session-data", {}) == (
        200,
        {"sent": True, "data": {}},
    )
    status, body = await call(
        http, "POST", f"{base}/set-session-data", {"data": {"x": 1}, "mergeStrategy": "deep"}
    )
    assert status == 400
    assert body == {
        "error": "invalid-request-error",
        "info": '\'mergeStrategy\' must be "replace" or "shallow-merge"',
    }


async def test_the_older_session_data_path_is_an_alias(
    http: aiohttp.ClientSession, node: NodeProcess, room: str
) -> None:
    old = f"{node.url}/v1/rooms/{room}/session-data"
    assert await call(http, "POST", old, {"data": {"k": "v"}}) == (200, {"data": {"k": "v"}})
    assert await call(http, "GET", old) == (200, {"data": {"k": "v"}})
    new = f"{node.url}/v1/rooms/{room}/get-session-data"
    assert await call(http, "GET", new) == (200, {"data": {"k": "v"}})
    status, body = await call(http, "POST", old, {})  # data stays required on the old path
    assert status == 400
    assert body["info"] == "meeting session 'data' must be a JSON object"


# -- presence --


async def test_presence_items_have_dailys_fields_and_roomstates_additions(
    http: aiohttp.ClientSession, node: NodeProcess, room: str, clients: list[CallClient]
) -> None:
    for name in ("ann", "bob", "cy"):
        client = CallClient()
        clients.append(client)
        await client.join(node.room_url(room), user_name=name, user_data={"n": name})
        await asyncio.sleep(0.01)  # distinct join times: the items are in join order
    before = time.time()
    status, body = await call(http, "GET", f"{node.url}/v1/rooms/{room}/presence")
    assert status == 200
    assert body["total_count"] == 3
    assert body["participant_counts"] == {"hidden": 0, "present": 3}
    assert [item["userName"] for item in body["data"]] == ["ann", "bob", "cy"]
    first = body["data"][0]
    assert set(first) == {
        *("room", "id", "userId", "userName", "mtgSessionId", "joinTime", "duration"),
        *("userData", "owner"),
    }
    assert (first["room"], first["id"]) == (room, clients[0].session_id)
    assert first["userId"] == clients[0].session_id  # no token: the user id is the session id
    assert (first["userData"], first["owner"], first["mtgSessionId"]) == ({"n": "ann"}, False, None)
    assert first["joinTime"].endswith("Z")
    joined = datetime.fromisoformat(first["joinTime"].replace("Z", "+00:00")).timestamp()
    assert before - 30 < joined <= before + 1
    assert isinstance(first["duration"], int)
    assert 0 <= first["duration"] <= time.time() - joined + 1


async def test_presence_takes_limit_user_id_and_user_name(
    http: aiohttp.ClientSession, node: NodeProcess, room: str, clients: list[CallClient]
) -> None:
    for name in ("ann", "bob", "bob"):
        client = CallClient()
        clients.append(client)
        await client.join(node.room_url(room), user_name=name)
    url = f"{node.url}/v1/rooms/{room}/presence"
    status, body = await call(http, "GET", f"{url}?limit=1")
    assert (status, body["total_count"], len(body["data"])) == (200, 3, 1)
    status, body = await call(http, "GET", f"{url}?userName=bob")
    assert (body["total_count"], {item["userName"] for item in body["data"]}) == (2, {"bob"})
    sid = clients[1].session_id
    status, body = await call(http, "GET", f"{url}?userId={sid}&limit=5")
    assert [item["id"] for item in body["data"]] == [sid]
    status, body = await call(http, "GET", f"{url}?userName=nobody")
    assert (body["total_count"], body["data"]) == (0, [])
    for bad in ("-1", "x", "1.5", ""):
        status, body = await call(http, "GET", f"{url}?limit={bad}")
        assert status == 400, bad
        assert body["info"] == "'limit' must be a whole number, 0 or more"


# -- meeting tokens --

ALL_PROPERTIES = {
    "room_name": "demo",
    "user_name": "Host",
    "user_id": "u-1",
    "is_owner": True,
    "exp": 4102444800,
    "nbf": 1700000000,
    "eject_at_token_exp": True,
    "eject_after_elapsed": 600,
    "permissions": {"hasPresence": False, "canAdmin": ["participants"]},
}


async def test_every_token_property_is_carried_into_the_token_and_read_back(
    http: aiohttp.ClientSession, keyed_node: NodeProcess
) -> None:
    url = f"{keyed_node.url}/v1/meeting-tokens"
    status, body = await call(http, "POST", url, {"properties": ALL_PROPERTIES}, AUTH)
    assert status == 200, body
    claims = jwt.decode(body["token"], API_KEY, algorithms=["HS256"])
    assert claims == {
        "r": "demo",
        "u": "Host",
        "ud": "u-1",
        "o": True,
        "exp": 4102444800,
        "nbf": 1700000000,
        "ejt": True,
        "eje": 600,
        "p": {"hp": False, "ca": "p"},
    }
    assert await call(http, "GET", f"{url}/{body['token']}", headers=AUTH) == (200, ALL_PROPERTIES)
    status, body = await call(http, "POST", url, {"properties": {"room_name": "demo"}}, AUTH)
    assert await call(http, "GET", f"{url}/{body['token']}", headers=AUTH) == (
        200,
        {"room_name": "demo", "is_owner": False},
    )


async def test_a_rest_token_joins_with_its_permissions(
    http: aiohttp.ClientSession, keyed_node: NodeProcess, room: str, clients: list[CallClient]
) -> None:
    props = {"room_name": room, "user_name": "Mod", "permissions": {"canAdmin": True}}
    status, body = await call(
        http, "POST", f"{keyed_node.url}/v1/meeting-tokens", {"properties": props}, AUTH
    )
    assert status == 200
    client = CallClient()
    clients.append(client)
    joined = await client.join(keyed_node.room_url(room), token=body["token"])
    me = joined["participants"][joined["sessionId"]]
    assert (me["user_name"], me["owner"]) == ("Mod", False)


@pytest.mark.parametrize(
    ("properties", "info"),
    [
        (
            {"room_name": "demo", "start_video_off": True},
            "'start_video_off' is not a meeting-token property roomstate carries; it takes"
            " room_name, user_name, user_id, is_owner, exp, nbf, eject_at_token_exp,"
            " eject_after_elapsed, permissions",
        ),
        (
            {"room_name": "demo", "permissions": {"canSend": False}},
            "'permissions.canSend' is not a permission roomstate carries; it takes hasPresence"
            " and canAdmin",
        ),
        (
            {"room_name": "demo", "eject_at_token_exp": True},
            "'eject_at_token_exp' needs 'exp': the time to eject at",
        ),
        (
            {"room_name": "demo", "eject_after_elapsed": "60"},
            "'eject_after_elapsed' must be an integer (seconds)",
        ),
        (
            {"room_name": "demo", "eject_after_elapsed": -1},
            "'eject_after_elapsed' must be 0 or more seconds",
        ),
        ({"room_name": "demo", "eject_at_token_exp": 1}, "'eject_at_token_exp' must be a boolean"),
        (
            {"room_name": "demo", "permissions": {"canAdmin": ["everything"]}},
            "'permissions.canAdmin' lists 'everything'; it takes \"participants\","
            ' "streaming", "transcription"',
        ),
        ({"room_name": "demo", "exp": "tomorrow"}, "'exp' must be an integer (Unix seconds)"),
        ({"user_name": "x"}, "'properties.room_name' is required"),
    ],
)
async def test_a_property_it_cannot_carry_is_refused_by_name(
    http: aiohttp.ClientSession, keyed_node: NodeProcess, properties: dict[str, Any], info: str
) -> None:
    status, body = await call(
        http, "POST", f"{keyed_node.url}/v1/meeting-tokens", {"properties": properties}, AUTH
    )
    assert (status, body) == (400, {"error": "invalid-request-error", "info": info})


async def test_a_field_beside_properties_is_refused(
    http: aiohttp.ClientSession, keyed_node: NodeProcess
) -> None:
    body = {"properties": {"room_name": "demo"}, "room_name": "demo"}
    status, answer = await call(http, "POST", f"{keyed_node.url}/v1/meeting-tokens", body, AUTH)
    assert status == 400
    assert answer["info"] == "unknown field 'room_name'; the body is {\"properties\": …}"


@pytest.mark.parametrize(
    ("case", "info"),
    [
        ("expired", "the meeting token has expired (exp)"),
        ("not-yet", "the meeting token is not valid yet (nbf); see ignoreNbf"),
        ("other-key", "invalid meeting token: Signature verification failed"),
        ("garbage", "invalid meeting token: Not enough segments"),
    ],
)
async def test_the_token_check_refuses_what_a_join_would(
    http: aiohttp.ClientSession, keyed_node: NodeProcess, case: str, info: str
) -> None:
    now = int(time.time())
    token = {
        "expired": make_token(API_KEY, "demo", exp=now - 5),
        "not-yet": make_token(API_KEY, "demo", nbf=now + 600),
        "other-key": make_token("another-key-of-at-least-32-bytes-length", "demo"),
        "garbage": "not-a-token",
    }[case]
    status, body = await call(
        http, "GET", f"{keyed_node.url}/v1/meeting-tokens/{token}", headers=AUTH
    )
    assert (status, body) == (400, {"error": "invalid-request-error", "info": info})


async def test_ignore_nbf_reads_a_token_not_valid_yet(
    http: aiohttp.ClientSession, keyed_node: NodeProcess
) -> None:
    nbf = int(time.time()) + 600
    url = f"{keyed_node.url}/v1/meeting-tokens/{make_token(API_KEY, 'demo', nbf=nbf)}"
    status, body = await call(http, "GET", f"{url}?ignoreNbf=true", headers=AUTH)
    assert (status, body) == (200, {"room_name": "demo", "is_owner": False, "nbf": nbf})
    status, body = await call(http, "GET", f"{url}?ignoreNbf=yes", headers=AUTH)
    assert (status, body["info"]) == (400, "'ignoreNbf' must be true or false")


async def test_tokens_need_an_api_key_and_development_mode_has_none(
    http: aiohttp.ClientSession, node: NodeProcess
) -> None:
    info = "meeting tokens need an API key (ROOMSTATE_API_KEY); development mode has none"
    for method, path in [("POST", "/v1/meeting-tokens"), ("GET", "/v1/meeting-tokens/x.y.z")]:
        body = {"properties": {"room_name": "demo"}} if method == "POST" else None
        status, answer = await call(http, method, node.url + path, body)
        assert (status, answer["info"]) == (400, info), path


async def test_the_new_paths_need_the_api_key(
    http: aiohttp.ClientSession, keyed_node: NodeProcess, room: str
) -> None:
    for method, path in [
        ("GET", f"/v1/rooms/{room}/get-session-data"),
        ("POST", f"/v1/rooms/{room}/set-session-data"),
        ("GET", "/v1/meeting-tokens/x.y.z"),
    ]:
        status, body = await call(http, method, keyed_node.url + path, {})
        assert (status, body["error"]) == (401, "authorization-error"), path


# -- the OpenAPI document --


async def test_the_served_openapi_document_is_the_packaged_file(
    http: aiohttp.ClientSession, keyed_node: NodeProcess
) -> None:
    async with http.get(f"{keyed_node.url}/v1/openapi.json") as response:  # no key needed
        assert response.status == 200
        assert response.content_type == "application/json"
        served = await response.read()
    assert served == OPENAPI.read_bytes()
    document = orjson.loads(served)
    assert document["openapi"].startswith("3.1")
    paths = {
        f"{method.upper()} {path}"
        for path, operations in document["paths"].items()
        for method in operations
    }
    assert paths == {
        "POST /v1/rooms/{room}/send-app-message",
        "GET /v1/rooms/{room}/presence",
        "GET /v1/rooms/{room}/get-session-data",
        "POST /v1/rooms/{room}/set-session-data",
        "GET /v1/rooms/{room}/session-data",
        "POST /v1/rooms/{room}/session-data",
        "POST /v1/meeting-tokens",
        "GET /v1/meeting-tokens/{token}",
        "GET /v1/webhooks/dead-letters",
        "POST /v1/webhooks/dead-letters/{id}/replay",
        "GET /v1/openapi.json",
    }
