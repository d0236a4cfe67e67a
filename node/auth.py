"""Meeting tokens (JWT, HS256, signed with the API key) and the REST API key check.

Claims follow Daily's short names: ``r`` room, ``u`` user name, ``ud`` user id, ``o`` owner,
``exp`` and ``nbf``, ``ejt`` (eject_at_token_exp: ejected when ``exp`` passes) and ``eje``
(eject_after_elapsed: ejected this many seconds after joining), and ``p`` permissions:
``{"hp": false}`` for a participant without presence (hidden: Daily's ``hasPresence: false``),
``{"ca": ...}`` for canAdmin (true, false, or Daily's comma-separated codes such as ``"p"`` for
participants: who may eject others). PyJWT verifies the signature, the algorithm (HS256
only: ``alg: none`` and every other algorithm are refused) and the time claims.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import jwt

from roomstate.errors import RequestError
from roomstate.wire.protocol import MAX_NAME_LENGTH, ROOM_NAME

__all__ = ["TokenClaims", "check_api_key", "make_token", "read_token", "verify_token"]

ALGORITHM = "HS256"


@dataclass(frozen=True)
class TokenClaims:
    room: str
    user_name: str | None
    user_id: str | None
    owner: bool
    has_presence: bool = True  # False: hidden (never listed to the others)
    exp: int | None = None  # the token's expiry, Unix seconds
    eject_at_token_exp: bool = False  # ejected when `exp` passes
    eject_after_elapsed: int | None = None  # ejected this many seconds after joining
    can_admin: frozenset[str] = frozenset()  # canAdmin, as full names: {"participants", ...}

    def eject_at_ms(self, joined_ms: int) -> int | None:
        """When a participant who joined at `joined_ms` with this token is ejected (Unix ms),
        or None: the earlier of `exp` (with eject_at_token_exp) and eject_after_elapsed."""
        times = []
        if self.eject_after_elapsed is not None:
            times.append(joined_ms + self.eject_after_elapsed * 1000)
        if self.eject_at_token_exp and self.exp is not None:
            times.append(self.exp * 1000)
        return min(times, default=None)


# canAdmin in a self-signed token: Daily's one-letter codes, comma-separated.
CAN_ADMIN_CODES: Final = {"p": "participants", "s": "streaming", "t": "transcription"}


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
    eject_at_token_exp: bool = False,
    eject_after_elapsed: int | None = None,
    can_admin: bool | Iterable[str] = False,
) -> str:
    """A meeting token for `room`; `exp` and `nbf` are Unix times in seconds,
    `eject_after_elapsed` seconds; `can_admin`: True (all) or names from
    ``participants``, ``streaming``, ``transcription``. ValueError for a room name or a user
    name or id that a join would refuse."""
    if not ROOM_NAME.match(room):
        raise ValueError("room_name is 1-64 characters of A-Z a-z 0-9 . _ -")
    for field, value in (("user_name", user_name), ("user_id", user_id)):
        if value is not None and len(value) > MAX_NAME_LENGTH:  # as a join's userName
            raise ValueError(f"'{field}' must be at most {MAX_NAME_LENGTH} characters")
    claims: dict[str, Any] = {"r": room, "o": owner}
    optional = {"u": user_name, "ud": user_id, "exp": exp, "nbf": nbf}
    claims.update({name: value for name, value in optional.items() if value is not None})
    permissions: dict[str, Any] = {}
    if not has_presence:  # (present: no claim, so such tokens stay as they were)
        permissions["hp"] = False
    if eject_at_token_exp:
        claims["ejt"] = True
    if eject_after_elapsed is not None:
        if isinstance(eject_after_elapsed, bool) or not isinstance(eject_after_elapsed, int):
            raise ValueError("'eject_after_elapsed' must be an integer (seconds)")
        if eject_after_elapsed < 0:
            raise ValueError("'eject_after_elapsed' must be 0 or more seconds")
        claims["eje"] = eject_after_elapsed
    if can_admin is True:
        permissions["ca"] = True
    elif can_admin is not False:
        codes = {name: code for code, name in CAN_ADMIN_CODES.items()}
        unknown = sorted(set(can_admin) - codes.keys())
        if unknown:
            known = ", ".join(codes)
            raise ValueError(f"canAdmin names {', '.join(unknown)}; it takes {known}")
        permissions["ca"] = ",".join(codes[name] for name in codes if name in set(can_admin))
    if permissions:
        claims["p"] = permissions
    return jwt.encode(claims, api_key, algorithm=ALGORITHM)


def read_token(api_key: str, token: str, *, ignore_nbf: bool = False) -> dict[str, Any]:
    """The claims of a token this API key signed, for any room (REST's check of a token).
    ValueError names what is wrong: not a token, another key, expired, not valid yet."""
    try:
        claims = jwt.decode(
            token,
            api_key,
            algorithms=[ALGORITHM],
            options={"require": ["r"], "verify_nbf": not ignore_nbf},
            leeway=0,
        )
    except jwt.ExpiredSignatureError:
        raise ValueError("the meeting token has expired (exp)") from None
    except jwt.ImmatureSignatureError:
        raise ValueError("the meeting token is not valid yet (nbf); see ignoreNbf") from None
    except jwt.PyJWTError as exc:
        raise ValueError(f"invalid meeting token: {exc}") from None
    return dict(claims)


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
    eject_at_token_exp = claims.get("ejt", False)
    if not isinstance(eject_at_token_exp, bool):
        raise RequestError("unauthorized", "the meeting token's 'ejt' must be a boolean")
    eject_after_elapsed = claims.get("eje")
    if eject_after_elapsed is not None and (
        isinstance(eject_after_elapsed, bool)
        or not isinstance(eject_after_elapsed, int)
        or eject_after_elapsed < 0
    ):
        info = "the meeting token's 'eje' must be a whole number of seconds, 0 or more"
        raise RequestError("unauthorized", info)
    exp = claims.get("exp")
    return TokenClaims(
        room=room,
        user_name=user_name if isinstance(user_name, str) else None,
        user_id=user_id if isinstance(user_id, str) else None,
        owner=claims.get("o") is True,
        has_presence=has_presence,
        exp=exp if isinstance(exp, int) else None,
        eject_at_token_exp=eject_at_token_exp,
        eject_after_elapsed=eject_after_elapsed,
        can_admin=_can_admin(permissions.get("ca", False)),
    )


def _can_admin(value: Any) -> frozenset[str]:
    """The canAdmin claim (``p.ca``) as full names: true (all), false, Daily's codes
    comma-separated (``"p,s"``), or a list of codes or full names."""
    if value is True:
        return frozenset(CAN_ADMIN_CODES.values())
    if value is False:
        return frozenset()
    parts = value.split(",") if isinstance(value, str) else value
    if isinstance(parts, list) and all(isinstance(part, str) for part in parts):
        names = {CAN_ADMIN_CODES.get(part.strip(), part.strip()) for part in parts}
        if names <= set(CAN_ADMIN_CODES.values()):
            return frozenset(names)
    codes = ", ".join(f"{code} ({name})" for code, name in CAN_ADMIN_CODES.items())
    info = f"the meeting token's 'p.ca' must be a boolean or a comma-separated list of {codes}"
    raise RequestError("unauthorized", info)


def check_api_key(expected: str, authorization: str | None) -> bool:
    """Whether an ``Authorization: Bearer <key>`` header carries `expected` (constant time)."""
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        # (surrogateescape: a header's non-ASCII bytes come back as they were, to compare unequal)
        given.strip().encode("utf-8", "surrogateescape"),
        expected.encode(),
    )
