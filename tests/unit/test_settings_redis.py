"""Redis access settings: TLS, ACL credentials, Sentinel, and any setting read from a file."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest

from roomstate import cli
from roomstate.settings import Settings


def test_a_secret_is_read_from_the_file_its_file_variable_names(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("  the-api-key-from-a-k8s-secret\n")
    (tmp_path / "pw").write_text("s3cret\n")
    settings = Settings.from_env(
        {
            "ROOMSTATE_API_KEY_FILE": str(tmp_path / "key"),
            "ROOMSTATE_REDIS_PASSWORD_FILE": str(tmp_path / "pw"),
            "ROOMSTATE_REDIS": "rediss://r.example:6380/0",
        }
    )
    assert settings.api_key == "the-api-key-from-a-k8s-secret"  # whitespace stripped
    assert settings.redis_password == "s3cret"


def test_a_number_can_come_from_a_file_too(tmp_path: Path) -> None:
    (tmp_path / "port").write_text("9001\n")
    assert Settings.from_env({"ROOMSTATE_PORT_FILE": str(tmp_path / "port")}).port == 9001


def test_a_setting_given_both_directly_and_by_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("a")
    env = {"ROOMSTATE_REDIS_PASSWORD": "b", "ROOMSTATE_REDIS_PASSWORD_FILE": str(tmp_path / "pw")}
    with pytest.raises(
        ValueError, match="ROOMSTATE_REDIS_PASSWORD and ROOMSTATE_REDIS_PASSWORD_FILE are both set"
    ):
        Settings.from_env(env)


def test_a_missing_or_empty_secret_file_is_refused_with_its_variable(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"ROOMSTATE_API_KEY_FILE=.*cannot read the file"):
        Settings.from_env({"ROOMSTATE_API_KEY_FILE": str(tmp_path / "absent")})
    (tmp_path / "empty").write_text(" \n")
    with pytest.raises(ValueError, match=r"ROOMSTATE_API_KEY_FILE=.*the file is empty"):
        Settings.from_env({"ROOMSTATE_API_KEY_FILE": str(tmp_path / "empty")})


def test_tls_is_on_for_rediss_a_tls_file_or_the_switch() -> None:
    assert not Settings(redis="redis://r:6379/0").redis_tls_on
    assert Settings(redis="rediss://r:6380/0").redis_tls_on
    assert Settings(redis_cluster="r:7000", redis_tls_ca="ca.pem").redis_tls_on
    assert Settings(redis_cluster="r:7000", redis_tls=True).redis_tls_on


def test_a_plain_url_with_tls_files_is_refused() -> None:
    with pytest.raises(ValueError, match="plain redis:// URL but TLS is asked for"):
        Settings(redis="redis://r:6379/0", redis_tls_ca="ca.pem")


def test_a_client_certificate_needs_its_key() -> None:
    with pytest.raises(ValueError, match="REDIS_TLS_CERT and ROOMSTATE_REDIS_TLS_KEY go together"):
        Settings(redis="rediss://r:6380/0", redis_tls_cert="client.pem")


def test_credentials_are_given_once() -> None:
    with pytest.raises(ValueError, match="give the credentials once"):
        Settings(redis="rediss://u:pw@r:6380/0", redis_password="other")
    assert Settings(redis="rediss://r:6380/0", redis_username="u", redis_password="p")


def test_sentinel_needs_the_master_name_and_no_other_redis() -> None:
    with pytest.raises(ValueError, match="REDIS_SENTINEL and ROOMSTATE_REDIS_SENTINEL_MASTER"):
        Settings(redis_sentinel="s1:26379")
    with pytest.raises(ValueError, match="give one way to reach Redis"):
        Settings(redis_sentinel="s1:26379", redis_sentinel_master="m", redis="redis://r:1/0")
    env = {"ROOMSTATE_REDIS_SENTINEL": "s1:26379,s2:26379", "ROOMSTATE_REDIS_SENTINEL_MASTER": "m"}
    assert Settings.from_env(env).redis_sentinel_master == "m"


def test_the_token_command_signs_with_the_key_from_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key = "k" * 32
    (tmp_path / "api-key").write_text(key + "\n")
    monkeypatch.delenv("ROOMSTATE_API_KEY", raising=False)
    monkeypatch.setenv("ROOMSTATE_API_KEY_FILE", str(tmp_path / "api-key"))
    cli.main(["token", "--room", "r1"])
    signed = capsys.readouterr().out.strip()
    assert jwt.decode(signed, key, algorithms=["HS256"])["r"] == "r1"
