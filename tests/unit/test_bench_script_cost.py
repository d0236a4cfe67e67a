"""bench.studies.script_cost drives the publish scripts of either layout: before the lease check
(3 keys) and with it (4 keys, the writer's incarnation as ARGV[4], the ops after it)."""

from __future__ import annotations

import subprocess

import roomstate.bus.redis.scripts as current
from bench.studies.script_cost import INCARNATION, LEASE, USERDATA_OP, arguments, scripts_at


def test_the_current_scripts_get_the_lease_and_the_incarnation() -> None:
    numkeys, keys_and_args = arguments(current.PUBLISH, USERDATA_OP)
    assert numkeys == 5 and keys_and_args[3] == LEASE and keys_and_args[8] == INCARNATION
    assert keys_and_args[9] == "" and keys_and_args[10:] == USERDATA_OP  # webhooks off


def test_scripts_before_the_lease_check_get_three_keys() -> None:
    try:
        message, state = scripts_at("4503922")  # the last commit before the lease check
    except subprocess.CalledProcessError:  # a shallow clone, or no repository
        message, state = OLD_MESSAGE, OLD_STATE
    assert "KEYS[4]" not in message and "KEYS[4]" not in state
    numkeys, keys_and_args = arguments(state, USERDATA_OP)
    assert numkeys == 3 and LEASE not in keys_and_args and keys_and_args[6:] == USERDATA_OP


def test_the_scripts_are_found_where_they_are_now() -> None:
    try:
        message, state = scripts_at("HEAD")  # node/bus/redis/scripts.py since b848918
    except subprocess.CalledProcessError:  # no repository
        return
    assert "KEYS[4]" in message and "KEYS[4]" in state


# The two scripts' heads before the lease check (the rest does not matter to `arguments`).
OLD_MESSAGE = 'local n_and_last = redis.call("HMGET", KEYS[2], "n", "l")'
OLD_STATE = "local log, state = KEYS[1], KEYS[2]\nfor i = 4, #ARGV, 4 do"
