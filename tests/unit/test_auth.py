"""Meeting tokens (node/auth.py): what may be signed, and what a join takes."""

from __future__ import annotations

import jwt
import pytest

from roomstate.auth import make_token, verify_token
from roomstate.errors import RequestError

KEY = "a-signing-key-of-thirty-two-bytes"


@pytest.mark.parametrize(
    ("fields", "rule"),
    [
        ({"room": "a b"}, "room_name is 1-64 characters"),
        ({"room": "r" * 65}, "room_name is 1-64 characters"),
        ({"user_name": "n" * 257}, "'user_name' must be at most 256 characters"),
        ({"user_id": "i" * 257}, "'user_id' must be at most 256 characters"),
    ],
)
def test_a_token_a_join_would_refuse_is_not_signed(fields: dict[str, str], rule: str) -> None:
    # (the CLI's `token` signed these: a 5,000-character name then joined as such)
    room = fields.pop("room", "demo")
    with pytest.raises(ValueError, match=rule):
        make_token(KEY, room, **fields)


def test_a_token_with_a_name_longer_than_a_join_takes_is_refused() -> None:
    # signed by other tooling with the key: the join refuses it, naming the claim
    token = jwt.encode({"r": "demo", "u": "n" * 257}, KEY, algorithm="HS256")
    with pytest.raises(RequestError, match="'u' is longer than 256 characters") as refused:
        verify_token(KEY, token, "demo")
    assert refused.value.code == "unauthorized"
    claims = verify_token(KEY, make_token(KEY, "demo", user_name="n" * 256), "demo")
    assert claims.user_name == "n" * 256


def test_every_error_of_the_jwt_library_is_unauthorized() -> None:
    # An empty HMAC key is refused by PyJWT with InvalidKeyError, which is not an
    # InvalidTokenError: it escaped as `internal`. (Settings refuses an empty key too.)
    token = jwt.encode({"r": "demo"}, KEY, algorithm="HS256")
    with pytest.raises(RequestError) as refused:
        verify_token("", token, "demo")
    assert refused.value.code == "unauthorized"


def test_a_token_issued_in_the_future_is_not_valid_yet() -> None:
    token = jwt.encode({"r": "demo", "iat": 4102444800}, KEY, algorithm="HS256")
    with pytest.raises(RequestError, match=r"not valid yet \(nbf or iat is in the future\)"):
        verify_token(KEY, token, "demo")


def test_has_presence_false_is_the_p_hp_claim_and_present_tokens_have_none() -> None:
    key = "k" * 32
    hidden = make_token(key, "lobby", has_presence=False)
    assert jwt.decode(hidden, key, algorithms=["HS256"])["p"] == {"hp": False}
    assert verify_token(key, hidden, "lobby").has_presence is False
    present = make_token(key, "lobby")
    assert "p" not in jwt.decode(present, key, algorithms=["HS256"])
    assert verify_token(key, present, "lobby").has_presence is True


@pytest.mark.parametrize("claim", [["x"], {"hp": "no"}])
def test_a_bad_p_claim_is_unauthorized_naming_it(claim: object) -> None:
    key = "k" * 32
    signed = jwt.encode({"r": "lobby", "p": claim}, key, algorithm="HS256")
    with pytest.raises(RequestError) as caught:
        verify_token(key, signed, "lobby")
    assert caught.value.code == "unauthorized" and "'p" in caught.value.message
