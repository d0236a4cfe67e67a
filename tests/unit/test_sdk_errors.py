"""The SDK's errors and rules are the wire's: its error codes, its room-name rule."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import roomstate.sdk.errors
from roomstate.errors import ERROR_CODES
from roomstate.sdk.client import room_ws_url
from roomstate.sdk.errors import SERVER_ERRORS, ClientError, ServerError, server_error
from roomstate.sdk.rest import RestClient
from roomstate.wire.protocol import ROOM_NAME

SDK = Path(roomstate.sdk.errors.__file__).resolve().parent


def _string_constants(path: Path) -> list[tuple[ast.AST, str]]:
    """Every string literal in `path`, with the node that holds it."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Constant) and isinstance(child.value, str):
                found.append((node, child.value))
    return found


def test_the_sdk_knows_exactly_the_wire_error_codes() -> None:
    assert set(SERVER_ERRORS) == ERROR_CODES


@pytest.mark.parametrize("code", sorted(ERROR_CODES))
def test_every_wire_error_code_maps_to_an_sdk_error_of_its_own(code: str) -> None:
    error = server_error(code, "the rule broken")
    assert type(error) is SERVER_ERRORS[code] and type(error) is not ServerError
    assert (error.code, error.message) == (code, "the rule broken")
    assert isinstance(error, ClientError)


def test_every_code_has_its_own_class() -> None:
    assert len(set(SERVER_ERRORS.values())) == len(ERROR_CODES)


def test_a_code_the_wire_does_not_list_is_still_a_server_error() -> None:
    error = server_error("from-a-newer-node", "?")
    assert type(error) is ServerError and error.code == "from-a-newer-node"


def test_the_sdk_copies_neither_the_room_rule_nor_the_error_code_list() -> None:
    """The SDK once had its own room-name pattern and its own table of the codes."""
    for path in sorted(SDK.glob("*.py")):
        for holder, text in _string_constants(path):
            assert "[A-Za-z0-9._-]" not in text, f"{path.name} spells the room-name rule"
            if isinstance(holder, ast.Dict | ast.Set | ast.List | ast.Tuple):
                assert text not in ERROR_CODES, f"{path.name} lists the error code {text!r}"


# (not the characters that end a URL's path, nor those urlsplit drops)
NAMELIKE = st.text(st.characters(blacklist_characters="/?#\t\r\n"), max_size=70)


@given(st.one_of(st.from_regex(ROOM_NAME, fullmatch=True), NAMELIKE))
def test_a_room_name_is_what_the_wire_says(name: str) -> None:
    valid = ROOM_NAME.match(name) is not None
    try:
        url = room_ws_url(f"http://h:1/rooms/{name}")
    except ValueError:
        assert not valid
    else:
        assert valid and url == f"ws://h:1/v1/rooms/{name}/ws"


@pytest.mark.parametrize("name", ["demo", "a.b_c-9", "x" * 64])
def test_room_urls_with_a_good_name(name: str) -> None:
    assert room_ws_url(f"https://h/p/rooms/{name}/") == f"wss://h/p/v1/rooms/{name}/ws"
    assert room_ws_url(f"ws://h/v1/rooms/{name}/ws") == f"ws://h/v1/rooms/{name}/ws"


@pytest.mark.parametrize("name", ["", "x" * 65, "a b", "é", "a\x00"])
def test_room_urls_and_rest_calls_with_a_bad_name_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        room_ws_url(f"http://h/rooms/{name}")
    with pytest.raises(ValueError):
        room_ws_url(f"ws://h/v1/rooms/{name}/ws")


async def test_a_rest_call_with_a_bad_room_name_is_refused_before_it_is_sent() -> None:
    async with RestClient("http://127.0.0.1:9") as rest:
        with pytest.raises(ValueError, match="room name"):
            await rest.presence("a b")


def test_the_documented_error_tree_names_every_exception() -> None:
    tree = (inspect.getdoc(roomstate.sdk.errors) or "").replace("\n", " ")
    classes = [
        name
        for name, value in vars(roomstate.sdk.errors).items()
        if inspect.isclass(value)
        and issubclass(value, Exception)
        and value.__module__ == roomstate.sdk.errors.__name__
    ]
    missing = [name for name in classes if f" {name} " not in f" {tree} "]
    assert classes and not missing, f"{missing} are missing from the tree in the docstring"
