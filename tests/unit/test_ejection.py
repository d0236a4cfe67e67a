"""Owner controls, the pure parts: the eject claims of a token, the `update-participant` frame,
who may eject."""

from __future__ import annotations

from typing import Any

import jwt
import orjson
import pytest

from roomstate.auth import make_token, verify_token
from roomstate.edge.ejection import may_eject
from roomstate.errors import RequestError
from roomstate.wire.protocol import Limits, UpdateParticipant, parse

KEY = "a-signing-key-of-thirty-two-bytes"


def claims_of(payload: dict[str, Any]) -> Any:
    return verify_token(KEY, jwt.encode({"r": "demo", **payload}, KEY, algorithm="HS256"), "demo")


def test_minted_eject_claims_read_back_as_daily_names_them() -> None:
    token = make_token(
        KEY,
        "demo",
        exp=2_000_000_000,
        eject_at_token_exp=True,
        eject_after_elapsed=30,
        can_admin=["participants"],
    )
    payload = jwt.decode(token, KEY, algorithms=["HS256"])
    assert (payload["ejt"], payload["eje"], payload["p"]) == (True, 30, {"ca": "p"})
    claims = verify_token(KEY, token, "demo")
    assert claims.can_admin == {"participants"}
    assert (claims.eject_at_token_exp, claims.eject_after_elapsed) == (True, 30)


def test_the_eject_time_is_the_earlier_of_exp_and_the_elapsed_limit() -> None:
    exp_ms, joined = 2_000_000_000_000, 1_999_999_000_000  # joined 1,000 s before exp
    both = claims_of({"exp": 2_000_000_000, "ejt": True, "eje": 30})
    assert both.eject_at_ms(joined) == joined + 30_000  # the elapsed limit first
    assert both.eject_at_ms(exp_ms - 10_000) == exp_ms  # joined 10 s before exp: exp first
    assert claims_of({"exp": 2_000_000_000}).eject_at_ms(joined) is None  # no ejt: never
    assert claims_of({"eje": 0}).eject_at_ms(joined) == joined  # at once
    assert claims_of({}).eject_at_ms(joined) is None


@pytest.mark.parametrize(
    ("ca", "names"),
    [
        (True, {"participants", "streaming", "transcription"}),
        (False, set()),
        ("p", {"participants"}),
        ("s,t", {"streaming", "transcription"}),
        (["participants"], {"participants"}),
    ],
)
def test_can_admin_takes_a_boolean_or_dailys_codes(ca: Any, names: set[str]) -> None:
    assert claims_of({"p": {"ca": ca}}).can_admin == names


@pytest.mark.parametrize(
    ("payload", "rule"),
    [
        ({"ejt": "yes"}, "'ejt' must be a boolean"),
        ({"eje": -1}, "'eje' must be a whole number of seconds"),
        ({"eje": 1.5}, "'eje' must be a whole number of seconds"),
        ({"p": {"ca": "x"}}, "'p.ca' must be a boolean or a comma-separated list"),
        ({"p": {"ca": 1}}, "'p.ca' must be a boolean or a comma-separated list"),
    ],
)
def test_bad_eject_claims_are_refused_naming_the_claim(payload: dict[str, Any], rule: str) -> None:
    with pytest.raises(RequestError, match=rule) as refused:
        claims_of(payload)
    assert refused.value.code == "unauthorized"


def test_a_token_with_bad_eject_fields_is_not_minted() -> None:
    with pytest.raises(ValueError, match="0 or more seconds"):
        make_token(KEY, "demo", eject_after_elapsed=-5)
    with pytest.raises(ValueError, match="canAdmin names bogus"):
        make_token(KEY, "demo", can_admin=["bogus"])


def test_update_participant_parses_an_eject() -> None:
    frame = orjson.dumps({"type": "update-participant", "id": 4, "sessionId": "s1", "eject": True})
    assert parse(frame, Limits()) == UpdateParticipant(4, "s1", eject=True)


@pytest.mark.parametrize(
    ("fields", "rule"),
    [
        ({"eject": True}, "needs 'sessionId'"),
        ({"sessionId": "", "eject": True}, "needs 'sessionId'"),
        ({"sessionId": "s" * 65, "eject": True}, "needs 'sessionId'"),
        ({"sessionId": "s1"}, "supports one update: 'eject': true"),
        ({"sessionId": "s1", "eject": False}, "supports one update"),
        ({"sessionId": "s1", "setAudio": False}, "supports one update"),
    ],
)
def test_a_bad_update_participant_is_refused(fields: dict[str, Any], rule: str) -> None:
    frame = orjson.dumps({"type": "update-participant", "id": 4, **fields})
    with pytest.raises(RequestError, match=rule) as refused:
        parse(frame, Limits())
    assert (refused.value.code, refused.value.request_id) == ("bad-request", 4)


@pytest.mark.parametrize(
    ("info", "allowed"),
    [
        ({"owner": True}, True),
        ({"owner": False, "can_admin": ["participants"]}, True),
        ({"owner": False, "can_admin": ["streaming", "transcription"]}, False),
        ({"owner": False}, False),
        ({}, False),
    ],
)
def test_owners_and_participant_admins_may_eject(info: dict[str, Any], allowed: bool) -> None:
    assert may_eject(info) is allowed
