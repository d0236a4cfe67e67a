"""Meeting-token properties (Daily's names) to a signed token and back: what POST
/v1/meeting-tokens carries into a token is what GET /v1/meeting-tokens/{token} reads out."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomstate.auth import make_token, read_token
from roomstate.server.tokens import (
    TokenPropertyError,
    claims_to_properties,
    token_arguments,
)

KEY = "unit-test-key-0123456789abcdef0123456789"
TASKS = ["participants", "streaming", "transcription"]

names = st.text(min_size=1, max_size=20)
optional = {
    "user_name": names,
    "user_id": names,
    "is_owner": st.booleans(),
    "exp": st.integers(4_000_000_000, 4_100_000_000),  # in the future: the token reads back
    "nbf": st.integers(0, 1_600_000_000),  # in the past
    "eject_after_elapsed": st.integers(0, 86_400),
}
permissions = st.fixed_dictionaries(
    {},
    optional={
        "hasPresence": st.booleans(),
        "canAdmin": st.one_of(st.booleans(), st.lists(st.sampled_from(TASKS), unique=True)),
    },
)


@st.composite
def properties(draw: st.DrawFn) -> dict[str, Any]:
    props = draw(st.fixed_dictionaries({"room_name": st.just("demo")}, optional=optional))
    if "exp" in props and draw(st.booleans()):
        props["eject_at_token_exp"] = draw(st.booleans())
    perms = draw(permissions)
    if draw(st.booleans()):
        props["permissions"] = perms
    return props


def expected(props: dict[str, Any]) -> dict[str, Any]:
    """What reads back: defaults are not claims (no eject, present, no admin tasks), an owner
    flag always is, and canAdmin lists come back in Daily's order."""
    out = {k: v for k, v in props.items() if k != "permissions"}
    out["is_owner"] = props.get("is_owner", False)
    if not out.get("eject_at_token_exp", False):
        out.pop("eject_at_token_exp", None)
    perms: dict[str, Any] = {}
    given_perms = props.get("permissions", {})
    if given_perms.get("hasPresence") is False:
        perms["hasPresence"] = False
    can_admin = given_perms.get("canAdmin", False)
    if can_admin is True:
        perms["canAdmin"] = True
    elif can_admin:
        perms["canAdmin"] = [task for task in TASKS if task in can_admin]
    if perms:
        out["permissions"] = perms
    return out


@given(properties())
def test_properties_read_back_from_the_token_they_made(props: dict[str, Any]) -> None:
    args = token_arguments({"properties": props})
    token = make_token(KEY, args.pop("room"), **args)
    assert claims_to_properties(read_token(KEY, token)) == expected(props)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({}, "'properties' is required"),
        ({"properties": []}, "'properties' is required"),
        ({"properties": {"room_name": "r"}, "extra": 1}, "unknown field 'extra'"),
        ({"properties": {"room_name": "r", "lang": "en"}}, "'lang' is not a meeting-token"),
        ({"properties": {"room_name": "r", "exp": True}}, "'exp' must be an integer"),
        ({"properties": {"room_name": "r", "is_owner": 1}}, "'is_owner' must be a boolean"),
        ({"properties": {"room_name": "r", "permissions": []}}, "'permissions' must be an object"),
        (
            {"properties": {"room_name": "r", "permissions": {"hasPresence": "no"}}},
            "'permissions.hasPresence' must be a boolean",
        ),
        (
            {"properties": {"room_name": "r", "permissions": {"canAdmin": "participants"}}},
            "'permissions.canAdmin' must be a boolean or a list",
        ),
    ],
)
def test_what_cannot_be_carried_is_refused_by_name(body: dict[str, Any], words: str) -> None:
    with pytest.raises(TokenPropertyError, match=words.replace("(", r"\(")):
        token_arguments(body)


def test_an_empty_can_admin_list_grants_nothing_and_adds_no_claim() -> None:
    args = token_arguments({"properties": {"room_name": "r", "permissions": {"canAdmin": []}}})
    token = make_token(KEY, args.pop("room"), **args)
    assert "p" not in read_token(KEY, token)
