"""Settings from the environment (node/settings.py)."""

from __future__ import annotations

import os

import pytest

from roomstate import cli
from roomstate.server import app
from roomstate.settings import Settings


def test_gc_thresholds_default_override_and_python_default() -> None:
    assert Settings().gc_threshold_values() == (10_000, 10, 10)
    env = {"ROOMSTATE_GC_THRESHOLDS": "700,10,10"}
    assert Settings.from_env(env).gc_threshold_values() == (700, 10, 10)
    python = Settings.from_env({"ROOMSTATE_GC_THRESHOLDS": "python"})
    assert python.gc_threshold_values() is None
    # An empty variable is not set (as for every setting): the default stays.
    empty = Settings.from_env({"ROOMSTATE_GC_THRESHOLDS": ""})
    assert empty.gc_threshold_values() == (10_000, 10, 10)


@pytest.mark.parametrize("raw", ["10000,10", "a,b,c", "0,10,10", "1,2,3,4"])
def test_gc_thresholds_that_are_not_three_positive_integers_are_refused(raw: str) -> None:
    with pytest.raises(ValueError, match=r"ROOMSTATE_GC_THRESHOLDS=.* three positive integers"):
        Settings.from_env({"ROOMSTATE_GC_THRESHOLDS": raw})


@pytest.mark.parametrize("raw", ["inf", "-inf", "nan", "Infinity"])
def test_a_float_setting_that_is_not_finite_is_refused(raw: str) -> None:
    # float() takes these, but a rate or a timeout of infinity is a mistake (a rate of
    # "inf" would make the token bucket's refill NaN and refuse every request)
    with pytest.raises(ValueError, match=r"ROOMSTATE_RATE_PER_S=.* is not a finite number"):
        Settings.from_env({"ROOMSTATE_RATE_PER_S": raw})


def test_a_float_setting_that_is_not_a_number_is_refused_with_its_name() -> None:
    with pytest.raises(ValueError, match=r"ROOMSTATE_HEARTBEAT_S='soon' is not a valid float"):
        Settings.from_env({"ROOMSTATE_HEARTBEAT_S": "soon"})
    assert Settings.from_env({"ROOMSTATE_HEARTBEAT_S": "2.5"}).heartbeat_s == 2.5


def test_each_kind_of_setting_is_read_from_its_variable() -> None:
    env = {
        "ROOMSTATE_PORT": "9001",  # int
        "ROOMSTATE_ROOM_GRACE_S": "1.5",  # float
        "ROOMSTATE_REDIS": "redis://127.0.0.1:7000/0",  # str, None by default
        "ROOMSTATE_ALLOWED_ORIGINS": "https://a.example, ,https://b.example",  # a list
    }
    s = Settings.from_env(env)
    assert (s.port, s.room_grace_s, s.redis) == (9001, 1.5, "redis://127.0.0.1:7000/0")
    assert s.allowed_origins == ("https://a.example", "https://b.example")
    with pytest.raises(ValueError, match=r"ROOMSTATE_PORT='80.5' is not a valid int"):
        Settings.from_env({"ROOMSTATE_PORT": "80.5"})
    huge = "9" * 400  # too big for a float: the finiteness check is for floats only
    assert Settings.from_env({"ROOMSTATE_MAX_DEPTH": huge}).max_depth == int(huge)


@pytest.mark.parametrize("url", ["unix:///run/redis.sock", "r:6379", "http://r:6379"])
def test_a_redis_url_the_node_cannot_use_stops_it_with_its_name(url: str) -> None:
    # The node's own connections (bus/redis/resp.py) speak TCP only: a socket URL would fail at
    # the first publish, long after start.
    with pytest.raises(ValueError, match=r"ROOMSTATE_REDIS=.* only redis://"):
        Settings.from_env({"ROOMSTATE_REDIS": url})
    assert Settings.from_env({"ROOMSTATE_REDIS": "redis://:pw@r:6379/2"}).redis is not None
    assert Settings.from_env({"ROOMSTATE_REDIS": "rediss://u:pw@r:6380/0"}).redis_tls_on


@pytest.mark.parametrize(
    ("variable", "raw", "rule"),
    [
        # aiohttp reads a frame or body limit of 0 as "no limit": both limits would be gone
        ("FRAME_BYTES", "0", "at least 1"),
        ("FRAME_BYTES", "-1", "at least 1"),
        ("APP_MESSAGE_BYTES", "-5", "at least 1"),
        ("USER_DATA_BYTES", "0", "at least 1"),
        ("SESSION_DATA_BYTES", "0", "at least 1"),
        ("MAX_DEPTH", "0", "at least 1"),
        ("SEND_QUEUE_BYTES", "0", "at least 1"),
        ("RATE_BURST", "0", "at least 1"),
        ("MAX_HEADERS", "0", "at least 1"),
        ("RATE_PER_S", "0", "more than 0"),
        ("RATE_PER_S", "-1", "more than 0"),
        ("HEARTBEAT_S", "0", "more than 0"),
        ("HANDSHAKE_TIMEOUT_S", "-2", "more than 0"),
        ("ROOM_GRACE_S", "-10", "at least 0"),
        ("RESUME_GRACE_S", "-1", "at least 0"),
        ("USER_DATA_INTERVAL_MS", "-1", "at least 0"),
        ("SESSION_DATA_INTERVAL_MS", "-1", "at least 0"),
        ("MAX_DRIFT_MS", "-1", "at least 0"),
        # a port past 65535 was taken modulo 65536: the node listened on another port
        ("PORT", "70000", "at most 65535"),
        ("PORT", "-1", "at least 0"),
    ],
)
def test_a_setting_out_of_its_range_stops_the_node_with_its_name(
    variable: str, raw: str, rule: str
) -> None:
    with pytest.raises(ValueError, match=rf"ROOMSTATE_{variable}={raw} .*must be {rule}"):
        Settings.from_env({f"ROOMSTATE_{variable}": raw})


def test_the_ends_of_each_range_are_taken() -> None:
    # 0 turns batching and the resume grace off, and lets the system pick the port
    env = {
        "ROOMSTATE_PORT": "0",
        "ROOMSTATE_USER_DATA_INTERVAL_MS": "0",
        "ROOMSTATE_SESSION_DATA_INTERVAL_MS": "0",
        "ROOMSTATE_RESUME_GRACE_S": "0",
        "ROOMSTATE_FRAME_BYTES": "1",
    }
    settings = Settings.from_env(env)
    assert (settings.port, settings.resume_grace_s, settings.frame_bytes) == (0, 0.0, 1)
    assert Settings(port=65535).port == 65535


@pytest.mark.parametrize("key", ["", " ", "key "])
def test_an_empty_api_key_is_refused_not_taken_as_a_key(key: str) -> None:
    # "" was a key: REST took an empty bearer, the loopback-only rule of development mode was
    # skipped, and signing a token failed (HMAC keys must not be empty) with a 500
    with pytest.raises(ValueError, match="API key must not be empty or start or end with a space"):
        Settings.from_env({}, api_key=key)
    with pytest.raises(ValueError, match="API key"):
        Settings(api_key=key)


@pytest.mark.parametrize("node_id", ["a b", "n" * 65, ""])
def test_a_node_id_a_stamp_cannot_carry_stops_the_node_with_its_name(node_id: str) -> None:
    # it stopped with a traceback from the clock, after connecting to Redis
    with pytest.raises(ValueError, match="ROOMSTATE_NODE_ID / --node-id: node id must be 1-64"):
        Settings(node_id=node_id)


# -- large rooms: presence, counts and load --


def test_the_large_room_settings_are_read_from_their_variables() -> None:
    defaults = Settings()
    assert defaults.default_has_presence is True
    assert (defaults.counts_interval_ms, defaults.max_loop_lag_ms) == (1000, 500)
    assert (defaults.max_joins_in_flight, defaults.loop_stuck_s) == (200, 30.0)
    env = {
        "ROOMSTATE_DEFAULT_HAS_PRESENCE": "false",
        "ROOMSTATE_COUNTS_INTERVAL_MS": "250",
        "ROOMSTATE_MAX_LOOP_LAG_MS": "75",
        "ROOMSTATE_MAX_JOINS_IN_FLIGHT": "4",
        "ROOMSTATE_LOOP_STUCK_S": "12.5",
    }
    s = Settings.from_env(env)
    assert s.default_has_presence is False
    assert (s.counts_interval_ms, s.max_loop_lag_ms, s.max_joins_in_flight) == (250, 75, 4)
    assert s.loop_stuck_s == 12.5
    # the ends of the ranges: 0 sends every counts change at once; 10 s is the shortest stall
    ends = {"ROOMSTATE_COUNTS_INTERVAL_MS": "0", "ROOMSTATE_LOOP_STUCK_S": "10"}
    assert (Settings.from_env(ends).counts_interval_ms, Settings.from_env(ends).loop_stuck_s) == (
        0,
        10.0,
    )


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        *[("true", True), ("TRUE", True), ("1", True), ("yes", True), ("on", True)],
        *[("false", False), ("False", False), ("0", False), ("no", False), ("off", False)],
    ],
)
def test_default_has_presence_takes_the_usual_spellings_of_a_boolean(raw: str, value: bool) -> None:
    settings = Settings.from_env({"ROOMSTATE_DEFAULT_HAS_PRESENCE": raw})
    assert settings.default_has_presence is value


@pytest.mark.parametrize("raw", ["maybe", "2", "hidden", "t"])
def test_a_default_has_presence_that_is_not_a_boolean_is_refused_with_its_name(raw: str) -> None:
    with pytest.raises(
        ValueError, match=rf"ROOMSTATE_DEFAULT_HAS_PRESENCE='{raw}' is not a boolean"
    ):
        Settings.from_env({"ROOMSTATE_DEFAULT_HAS_PRESENCE": raw})


@pytest.mark.parametrize(
    ("variable", "raw", "rule"),
    [
        ("COUNTS_INTERVAL_MS", "-1", "at least 0"),
        ("MAX_LOOP_LAG_MS", "0", "at least 1"),
        ("MAX_LOOP_LAG_MS", "-50", "at least 1"),
        ("MAX_JOINS_IN_FLIGHT", "0", "at least 1"),
        # below the lease's lifetime a node merely busy would let its lease go
        ("LOOP_STUCK_S", "9.5", "at least 10"),
        ("LOOP_STUCK_S", "0", "at least 10"),
    ],
)
def test_a_large_room_setting_out_of_its_range_is_refused_with_its_name(
    variable: str, raw: str, rule: str
) -> None:
    with pytest.raises(ValueError, match=rf"ROOMSTATE_{variable}={raw} .*must be {rule}"):
        Settings.from_env({f"ROOMSTATE_{variable}": raw})


@pytest.mark.parametrize(
    ("variable", "raw", "words"),
    [
        ("COUNTS_INTERVAL_MS", "1s", "is not a valid int"),
        ("COUNTS_INTERVAL_MS", "2.5", "is not a valid int"),
        ("MAX_LOOP_LAG_MS", "lots", "is not a valid int"),
        ("MAX_JOINS_IN_FLIGHT", "1e3", "is not a valid int"),
        ("LOOP_STUCK_S", "half a minute", "is not a valid float"),
        ("LOOP_STUCK_S", "inf", "is not a finite number"),
    ],
)
def test_a_large_room_setting_that_is_not_a_number_is_refused_with_its_name(
    variable: str, raw: str, words: str
) -> None:
    with pytest.raises(ValueError, match=rf"ROOMSTATE_{variable}='{raw}' {words}"):
        Settings.from_env({f"ROOMSTATE_{variable}": raw})


# -- the same settings through the `roomstate serve` command line --


@pytest.fixture
def serve_settings(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """The CLI's `serve` stops at the Settings it would run with (the server is not started):
    the list receives them."""
    seen: list[Settings] = []

    async def stop_here(settings: Settings, started: object) -> None:
        seen.append(settings)

    for name in list(os.environ):
        if name.startswith("ROOMSTATE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ROOMSTATE_GC_THRESHOLDS", "python")  # leave this process's gc alone
    monkeypatch.setattr(app, "serve", stop_here)
    return seen


def test_the_cli_reads_default_has_presence_and_wins_over_the_environment(
    serve_settings: list[Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROOMSTATE_DEFAULT_HAS_PRESENCE", "true")
    monkeypatch.setenv("ROOMSTATE_COUNTS_INTERVAL_MS", "400")
    monkeypatch.setenv("ROOMSTATE_MAX_JOINS_IN_FLIGHT", "7")
    cli.main(["serve", "--port", "0", "--default-has-presence", "false"])
    cli.main(["serve", "--port", "0"])
    given, from_env = serve_settings
    assert given.default_has_presence is False
    assert from_env.default_has_presence is True
    assert (given.counts_interval_ms, given.max_joins_in_flight) == (400, 7)


def test_the_cli_refuses_a_default_has_presence_that_is_not_true_or_false(
    serve_settings: list[Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", "--default-has-presence", "no"])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "--default-has-presence: invalid choice: 'no'" in error
    assert serve_settings == []


@pytest.mark.parametrize(
    ("variable", "raw", "words"),
    [
        ("COUNTS_INTERVAL_MS", "-5", "ROOMSTATE_COUNTS_INTERVAL_MS=-5 is out of range"),
        ("LOOP_STUCK_S", "1", "ROOMSTATE_LOOP_STUCK_S=1 is out of range: must be at least 10"),
        ("DEFAULT_HAS_PRESENCE", "nope", "ROOMSTATE_DEFAULT_HAS_PRESENCE='nope' is not a boolean"),
    ],
)
def test_the_cli_stops_with_the_settings_name_for_a_bad_value(
    serve_settings: list[Settings],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    raw: str,
    words: str,
) -> None:
    monkeypatch.setenv(f"ROOMSTATE_{variable}", raw)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", "--port", "0"])
    assert isinstance(exit_.value.code, str)
    assert exit_.value.code.startswith("roomstate: ")
    assert words in exit_.value.code
    assert serve_settings == []


# -- workers --


def test_more_than_one_worker_on_the_in_memory_bus_is_refused_naming_the_rule() -> None:
    with pytest.raises(
        ValueError, match=r"ROOMSTATE_WORKERS=2: more than one worker needs a Redis"
    ):
        Settings(workers=2)
    assert Settings(workers=2, redis="redis://127.0.0.1:6379/0").workers == 2
    assert Settings(workers=3, redis_cluster="127.0.0.1:7000").workers == 3


def test_workers_auto_is_one_per_core_and_fewer_than_one_is_refused() -> None:
    redis = {"ROOMSTATE_REDIS": "redis://127.0.0.1:6379/0"}
    cores = os.cpu_count() or 1
    assert Settings.from_env({**redis, "ROOMSTATE_WORKERS": "auto"}).workers == cores
    assert Settings.from_env({**redis, "ROOMSTATE_WORKERS": "AUTO"}).workers == cores
    assert Settings.from_env({}).workers == 1
    with pytest.raises(
        ValueError, match=r"ROOMSTATE_WORKERS=0 is out of range: must be at least 1"
    ):
        Settings.from_env({**redis, "ROOMSTATE_WORKERS": "0"})
    with pytest.raises(ValueError, match=r"ROOMSTATE_WORKERS='many' is not a valid int"):
        Settings.from_env({**redis, "ROOMSTATE_WORKERS": "many"})


def test_a_node_id_without_room_for_the_worker_suffix_is_refused() -> None:
    redis = "redis://127.0.0.1:6379/0"
    assert Settings(workers=10, redis=redis, node_id="n" * 61).workers == 10  # "-w9" fits 64
    with pytest.raises(ValueError, match=r"each worker's id is the node id and -w<index>"):
        Settings(workers=11, redis=redis, node_id="n" * 61)  # "-w10" does not


def test_the_cli_hands_more_than_one_worker_to_the_supervisor(
    serve_settings: list[Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    import roomstate.supervisor

    supervised: list[tuple[int, list[str]]] = []

    def supervise(settings: Settings, serve_args: list[str], json_logs: bool) -> int:
        supervised.append((settings.workers, serve_args))
        return 0

    monkeypatch.setattr(roomstate.supervisor, "supervise", supervise)
    args = ["--port", "0", "--workers", "2", "--redis", "redis://127.0.0.1:6379/0"]
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", *args])
    assert exit_.value.code == 0
    assert supervised == [(2, args)]  # the workers are given the same options
    cli.main(["serve", "--port", "0", "--workers", "1"])  # one: this process is the node
    assert [s.workers for s in serve_settings] == [1]
