"""The webhook settings (node/settings.py): read from the environment, the secret from a file,
refused with their names."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from roomstate.settings import Settings

SECRET = base64.b64encode(b"k" * 32).decode()


def test_urls_are_comma_separated_and_off_by_default() -> None:
    assert Settings().webhook_urls == ()
    env = {"ROOMSTATE_WEBHOOK_URL": "http://a/h, http://b/h", "ROOMSTATE_WEBHOOK_SECRET": SECRET}
    assert Settings.from_env(env).webhook_urls == ("http://a/h", "http://b/h")


def test_the_secret_is_read_from_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    env = {"ROOMSTATE_WEBHOOK_URL": "http://a/h", "ROOMSTATE_WEBHOOK_SECRET_FILE": str(secret_file)}
    assert Settings.from_env(env).webhook_secret == SECRET


def test_a_url_without_a_secret_is_refused_with_the_rule() -> None:
    with pytest.raises(ValueError, match=r"ROOMSTATE_WEBHOOK_URL is set without .*SECRET"):
        Settings.from_env({"ROOMSTATE_WEBHOOK_URL": "http://a/h"})


@pytest.mark.parametrize(
    ("name", "raw"),
    [("WEBHOOK_TIMEOUT_S", "0"), ("WEBHOOK_RETRY_S", "-1"), ("WEBHOOK_CONCURRENCY", "0")],
)
def test_webhook_numbers_out_of_range_are_refused_with_their_name(name: str, raw: str) -> None:
    with pytest.raises(ValueError, match=f"ROOMSTATE_{name}={raw} is out of range"):
        Settings.from_env({f"ROOMSTATE_{name}": raw})


@pytest.mark.parametrize(
    ("variable", "raw"),
    [("ROOMSTATE_WEBHOOK_SECRET", "not base64!"), ("ROOMSTATE_WEBHOOK_TYPES", "room.exploded")],
)
def test_a_bad_secret_or_type_stops_the_node_with_its_name(variable: str, raw: str) -> None:
    env = {"ROOMSTATE_WEBHOOK_URL": "http://a/h", "ROOMSTATE_WEBHOOK_SECRET": SECRET, variable: raw}
    with pytest.raises(ValueError, match=variable):
        Settings.from_env(env)


def test_a_claim_timeout_within_the_request_timeout_is_refused_with_the_rule() -> None:
    env = {
        "ROOMSTATE_WEBHOOK_URL": "http://a/h",
        "ROOMSTATE_WEBHOOK_SECRET": SECRET,
        "ROOMSTATE_WEBHOOK_CLAIM_S": "5",
    }
    with pytest.raises(ValueError, match="ROOMSTATE_WEBHOOK_CLAIM_S=5 must be more than"):
        Settings.from_env(env)
    assert Settings.from_env({**env, "ROOMSTATE_WEBHOOK_TIMEOUT_S": "4"}).webhook_claim_s == 5
