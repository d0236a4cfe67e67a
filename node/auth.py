"""Meeting tokens (JWT, HS256, signed with the API key) and the REST API key check.

Claims follow Daily's short names: ``r`` room, ``u`` user name, ``ud`` user id, ``o`` owner,
``exp`` and ``nbf``, and ``p`` permissions: ``{"hp": false}`` for a participant without presence
(hidden: Daily's ``hasPresence: false``). PyJWT verifies the signature, the algorithm (HS256
only: ``alg: none`` and every other algorithm are refused) and the time claims.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

import jwt

from roomstate.errors import RequestError
from roomstate.wire.protocol import MAX_NAME_LENGTH, ROOM_NAME

__all__ = ["TokenClaims", "check_api_key", "make_token", "verify_token"]

ALGORITHM = "HS256"


@dataclass(frozen=True)
class TokenClaims:
    room: str
    user_name: str | None
    user_id: str | None
    owner: bool
    has_presence: bool = True  # False: hidden (never listed to the others)


def make_token(
    api_key: str,
    room: str,
    *,
    user_name: str | None = None,
    user_id: str | None = None,
    owner: bool = False,
    exp: int | None = None,
    nbf: int | None = None,
    has_presence: bool = True,
) -> str:
    """A meeting token for `room`; `exp` and `nbf` are Unix times in seconds. ValueError
    for a room name or a user name or id that a join would refuse."""
    if not ROOM_NAME.match(room):
        raise ValueError("room_name is 1-64 characters of A-Z a-z 0-9 . _ -")
    for field, value in (("user_name", user_name), ("user_id", user_id)):
        if value is not None and len(value) > MAX_NAME_LENGTH:  # as a join's userName
            raise ValueError(f"'{field}' must be at most {MAX_NAME_LENGTH} characters")
    claims: dict[str, Any] = {"r": room, "o": owner}
    optional = {"u": user_name, "ud": user_id, "exp": exp, "nbf": nbf}
    claims.update({name: value for name, value in optional.items() if value is not None})
    if not has_presence:  # (present: no claim, so such tokens stay as they were)
        claims["p"] = {"hp": False}
    return jwt.encode(claims, api_key, algorithm=ALGORITHM)


def verify_token(api_key: str, token: str, room: str) -> TokenClaims:
    """The claims of a valid token for `room`, or `RequestError` (unauthorized / forbidden)."""
    try:
        claims = jwt.decode(
            token, api_key, algorithms=[ALGORITHM], options={"require": ["r"]}, leeway=0
        )
    except jwt.ExpiredSignatureError:
        raise RequestError("unauthorized", "the meeting token has expired (exp)") from None
    except jwt.ImmatureSignatureError:
        info = "the meeting token is not valid yet (nbf or iat is in the future)"
        raise RequestError("unauthorized", info) from None
    except jwt.PyJWTError as exc:
        raise RequestError("unauthorized", f"invalid meeting token: {exc}") from None
    if claims["r"] != room:
        raise RequestError("forbidden", f"the meeting token is for another room, not {room!r}")
    user_name, user_id = claims.get("u"), claims.get("ud")
    for claim, value in (("u", user_name), ("ud", user_id)):
        if isinstance(value, str) and len(value) > MAX_NAME_LENGTH:  # (signed elsewhere)
            info = f"the meeting token's {claim!r} is longer than {MAX_NAME_LENGTH} characters"
            raise RequestError("unauthorized", info)
    permissions = claims.get("p", {})
    if not isinstance(permissions, dict):
        raise RequestError("unauthorized", "the meeting token's 'p' must be an object")
    has_presence = permissions.get("hp", True)
    if not isinstance(has_presence, bool):
        raise RequestError("unauthorized", "the meeting token's 'p.hp' must be a boolean")
    return TokenClaims(
        room=room,
        user_name=user_name if isinstance(user_name, str) else None,
        user_id=user_id if isinstance(user_id, str) else None,
        owner=claims.get("o") is True,
        has_presence=has_presence,
    )


def check_api_key(expected: str, authorization: str | None) -> bool:
    """Whether an ``Authorization: Bearer <key>`` header carries `expected` (constant time)."""
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        # (surrogateescape: a header's non-ASCII bytes come back as they were, to compare unequal)
        given.strip().encode("utf-8", "surrogateescape"),
        expected.encode(),
    )
