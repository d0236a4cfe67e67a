"""How the settings become Redis access (node/bus/redis/access.py): credentials, database,
addresses, TLS. No server: what each connection would be made with."""

from __future__ import annotations

from roomstate.bus.redis.access import MASTER, Access
from roomstate.settings import Settings


def test_credentials_come_from_the_url_unquoted() -> None:
    access = Access(Settings(redis="rediss://app%40x:p%3Ass@r.example:6380/2"))
    assert access.auth == ("app@x", "p:ss")
    assert (access.standalone, access.db) == (("r.example", 6380), 2)
    assert access.ssl is not None  # rediss://: the system's CAs


def test_credentials_come_from_settings_when_the_url_has_none() -> None:
    access = Access(Settings(redis="redis://r:6379/0", redis_username="u", redis_password="p"))
    assert access.auth == ("u", "p")
    assert access.ssl is None


def test_a_password_alone_is_the_default_users_and_none_sends_no_auth() -> None:
    assert Access(Settings(redis="redis://:pw@r:6379/0")).auth == ("pw",)
    assert Access(Settings(redis="redis://r:6379/0")).auth == ()


def test_a_cluster_gets_the_same_credentials_and_tls_for_every_seed() -> None:
    access = Access(
        Settings(redis_cluster="a:7000, b:7001", redis_username="u", redis_password="p",
                 redis_tls=True)
    )  # fmt: skip
    assert access.seeds == [("a", 7000), ("b", 7001)]
    assert access.auth == ("u", "p")
    assert access.ssl is not None


def test_sentinel_has_its_own_credentials() -> None:
    access = Access(
        Settings(
            redis_sentinel="s1:26379,s2:26380",
            redis_sentinel_master="m",
            redis_password="data",
            redis_sentinel_password="sentinel",
        )
    )
    assert access.sentinels == [("s1", 26379), ("s2", 26380)]
    assert (access.auth, access.sentinel_auth) == (("data",), ("sentinel",))
    assert access.standalone is None and MASTER == ("", 0)
