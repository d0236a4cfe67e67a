"""The reply to a join: `joined`, and the ``participants-page`` frames of a roster too large
for one frame."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from roomstate.wire.protocol import encode_state

__all__ = ["JoinReply", "members"]


@dataclass(frozen=True)
class JoinReply:
    """What a `joined` frame says besides the room's state."""

    request_id: str | int | None
    session_id: str
    resume_token: str | None = None
    seq: str | None = None  # the room's log position the state stands at
    resumed: bool | None = None  # None: not a resume attempt (left out)
    replayed: bool | None = None

    def frames(self, pages: list[bytes], counts: dict[str, int], data: Any) -> list[bytes]:
        """`joined` with the first page of participants (JSON objects), then one
        ``participants-page`` per other page; ``"paged": true`` on `joined` says pages follow,
        ``"last": true`` marks the last."""
        # a refused resume says `"resumed": false`; `paged` only when pages follow
        flags = {
            "resumed": self.resumed,
            "replayed": self.replayed,
            "paged": len(pages) > 1 or None,
        }
        joined = encode_state(
            "joined",
            id=self.request_id,
            sessionId=self.session_id,
            participants=orjson.Fragment(pages[0]),
            participantCounts=counts,
            meetingSessionState={"data": data},
            resumeToken=self.resume_token,
            seq=self.seq,
            **{name: value for name, value in flags.items() if value is not None},
        )
        last = len(pages) - 1
        return [joined] + [
            encode_state("participants-page", participants=orjson.Fragment(page), last=n == last)
            for n, page in enumerate(pages[1:], 1)
        ]


def members(participants: dict[str, Any]) -> list[bytes]:
    """Participants as JSON object members (``"sid":{...}``), by session id, as
    `encode_state` sorts them."""
    sort = orjson.OPT_SORT_KEYS
    return [orjson.dumps(sid) + b":" + orjson.dumps(participants[sid], option=sort)
            for sid in sorted(participants)]  # fmt: skip
