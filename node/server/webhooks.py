"""The REST API's webhook routes, for operators (the API key, as every REST route):

    GET  /v1/webhooks/dead-letters                ?limit (100; at most 1000)
    POST /v1/webhooks/dead-letters/{id}/replay    deliver it again (with its first id)

A dead letter is an event whose delivery gave up after the retry budget (docs/webhooks.md).
"""

from __future__ import annotations

import time

import orjson
from aiohttp import web

from roomstate.server.rest import NODE_KEY, json_response, rest, rest_error
from roomstate.webhooks.events import WebhookError, to_event

__all__ = ["rest_dead_letters", "rest_replay_dead_letter"]

MAX_LIMIT = 1000


@rest
async def rest_dead_letters(request: web.Request) -> web.Response:
    """``{total_count, data: [{id, error, event}]}``, oldest first; `event` as it would be
    sent now (an event this version cannot read: its stored `fields` instead)."""
    raw = request.query.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise rest_error(400, "invalid-request-error", f"limit is 1 to {MAX_LIMIT}")
    letters = await request.app[NODE_KEY].bus.webhook_queue.dead_letters(int(raw))
    now_ms = int(time.time() * 1000)
    data = []
    for letter in letters:
        item: dict[str, object] = {"id": letter.id, "error": letter.error}
        try:
            item["event"] = to_event(letter.recorded, now_ms)
        except WebhookError:
            item["fields"] = letter.recorded.fields
        data.append(item)
    return json_response({"total_count": len(data), "data": data})


@rest
async def rest_replay_dead_letter(request: web.Request) -> web.Response:
    dead_id = request.match_info["id"]
    if not await request.app[NODE_KEY].bus.webhook_queue.replay(dead_id):
        body = orjson.dumps({"error": "not-found", "info": f"no dead letter {dead_id!r}"})
        raise web.HTTPNotFound(body=body, content_type="application/json")
    return json_response({"replayed": dead_id})
