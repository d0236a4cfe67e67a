"""The webinar study's pure parts: a client's view built from frames and its convergence check,
the phase accounting summed over generators, the growth exponent, the join order of roles."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from bench.harness.webinar_report import exponents, shape_summary
from bench.harness.webinar_view import (
    Expect,
    SidTable,
    Tally,
    View,
    combine,
    fingerprint,
    growth_exponent,
    merge,
    trouble,
)
from bench.studies.webinar import Shape, roles


def person(sid: str, hidden: bool = False, user_data: Any = None) -> dict[str, Any]:
    p: dict[str, Any] = {"session_id": sid, "user_id": sid, "user_name": "", "joined_at": 1,
                         "owner": False, "userData": user_data}  # fmt: skip
    if hidden:
        p["permissions"] = {"hasPresence": False}
    return p


def frame(kind: str, **fields: Any) -> bytes:
    return orjson.dumps({"type": kind, **fields})


def joined(me: str, present: list[str], hidden_me: bool = False, counts: Any = None) -> bytes:
    participants = {sid: person(sid) for sid in present}
    participants[me] = person(me, hidden=hidden_me)
    extra = {"participantCounts": counts} if counts else {}
    return frame("joined", id=0, sessionId=me, participants=participants,
                 meetingSessionState={"data": {}}, **extra)  # fmt: skip


def test_a_present_client_converges_on_the_roster_counts_and_session_data() -> None:
    t, v = Tally(), View(SidTable())
    v.apply(joined("a", ["h"], counts={"hidden": 0, "present": 2}), 10, t)
    v.apply(frame("participant-joined", participant=person("b")), 20, t)
    events = [{"type": "participant-joined", "participant": person("c")},
              {"type": "participant-joined", "participant": person("a")}]  # fmt: skip
    v.apply(frame("participant-events", events=events), 30, t)  # its own entry is skipped
    v.apply(frame("participant-counts-updated", participantCounts={"hidden": 5, "present": 4}),
            40, t)  # fmt: skip
    n, x = fingerprint(["h", "a", "b", "c"])
    want = Expect(n, x, counts=(5, 4))
    assert v.matches(want)
    assert not v.matches(Expect(n, x, counts=(5, 3)))
    assert not v.matches(Expect(n, x, counts=(5, 4), session_seq=0))
    v.apply(frame("meeting-session-state-updated",
                  meetingSessionState={"data": {"s": f"1:{0}"}}), 1_000_050, t)  # fmt: skip
    assert v.session_seq == 1 and v.changed_ns == 1_000_050
    assert v.matches(Expect(n, x, counts=(5, 4), session_seq=1))
    v.apply(frame("participant-left", participant=person("b"), reason="left"), 60, t)
    assert not v.matches(want) and v.matches(Expect(*fingerprint(["h", "a", "c"]), counts=(5, 4)))
    assert t.dups == 0 and t.leaks == 0 and t.frames["participant-joined"] == 1


def test_a_hidden_client_is_not_in_its_own_roster() -> None:
    t, v = Tally(), View(SidTable(), hidden=True)
    v.apply(joined("me", ["h1", "h2"], hidden_me=True), 1, t)
    assert v.matches(Expect(*fingerprint(["h1", "h2"])))
    assert t.leaks == 0


def test_a_hidden_participant_shown_to_others_is_a_leak_and_spoils_nothing_else() -> None:
    t, v = Tally(), View(SidTable())
    v.apply(joined("a", []), 1, t)
    v.apply(frame("participant-joined", participant=person("x", hidden=True)), 2, t)
    hand = person("x", hidden=True, user_data={"hand": True, "t": 0})
    v.apply(frame("participant-updated", participant=hand), 3, t)
    assert t.leaks == 2
    assert v.matches(Expect(*fingerprint(["a"])))


def test_an_owner_counts_each_raised_hand_once_with_its_latency() -> None:
    t, v = Tally(), View(SidTable(), owner=True)
    v.apply(joined("o", []), 1, t)
    for sid in ("x", "y", "x"):
        hand = person(sid, hidden=True, user_data={"hand": True, "t": 1_000})
        v.apply(frame("participant-updated", participant=hand), 3_001_000, t)
    assert v.hands_n == 2 and list(t.latency_us) == [3_000, 3_000]
    base = fingerprint(["o"])
    assert v.matches(Expect(*base, hands=2)) and not v.matches(Expect(*base, hands=3))
    assert View(SidTable()).matches(Expect(0, 0, hands=3))  # only owners are held to hands


def test_broadcasts_are_counted_once_and_a_second_copy_is_a_duplicate() -> None:
    t, v = Tally(), View(SidTable())
    for seq in (0, 1, 1):
        v.apply(frame("app-message", data={"b": f"{seq}:1000"}, fromId="h"), 2_001_000, t)
    assert v.bcast_got == 2 and t.dups == 1 and list(t.latency_us) == [2_000, 2_000]
    assert v.matches(Expect(0, 0, bcast=2)) and not v.matches(Expect(0, 0, bcast=3))


def test_unavailable_returns_its_retry_after_and_is_no_trouble() -> None:
    t, v = Tally(), View(SidTable())
    error = frame("error", id=0, code="unavailable", message="busy", retryAfter=250)
    assert v.apply(error, 1, t) == 250
    assert v.apply(frame("error", id=1, code="too-large", message="x"), 1, t) is None
    t.close(4002)
    totals = merge([t.summary(), Tally().summary()])
    assert totals["unavailable"] == 1 and totals["errors"] == {"too-large": 1, "unavailable": 1}
    assert trouble(totals) == 2  # too-large and the 4002 close, not the refusal


def test_merge_sums_the_generators() -> None:
    a, b = Tally(), Tally()
    a.count_frame("ack")
    b.count_frame("ack")
    b.retries, a.join_failures = 3, 1
    totals = merge([a.summary(), b.summary()])
    assert totals["frames"] == {"ack": 2} and totals["retries"] == 3
    assert trouble(totals) == 1


def test_fingerprints_of_disjoint_parts_combine_into_the_whole() -> None:
    assert combine([fingerprint(["a", "b"]), fingerprint(["c"])]) == fingerprint(["c", "a", "b"])
    assert fingerprint(["a", "b"]) != fingerprint(["a", "c"])


def test_growth_exponent_is_the_slope_on_log_log_axes() -> None:
    assert growth_exponent([1000, 2000, 4000], [1.0, 2.0, 4.0]) == 1.0
    assert growth_exponent([1000, 2000, 4000], [1.0, 4.0, 16.0]) == 2.0
    assert growth_exponent([1000, 2000], [3.0, None]) is None
    assert growth_exponent([1000, 1000], [1.0, 2.0]) is None


def phase(name: str, cpu: float, ok: bool = True, trouble_count: int = 0) -> dict[str, Any]:
    return {"phase": name, "node_cpu_s": cpu, "all_converged": ok, "trouble": trouble_count,
            "converge_s": 1.0, "scheduled_s": 1.0, "latency": {"p99_ms": 5.0},
            "totals": {"unavailable": 2}, "gens_saturated": False}  # fmt: skip


def shape(total: int, phases: list[dict[str, Any]]) -> dict[str, Any]:
    return {"label": f"s{total}", "shape": {"total": total}, "phases": phases,
            "nodes_alive": [True, True]}  # fmt: skip


def test_a_shape_is_ok_only_if_every_phase_converged_without_trouble() -> None:
    good = shape_summary(shape(10, [phase("join", 1.0), phase("leave", 1.0)]))
    assert good["ok"] and good["unavailable"] == 4
    assert not shape_summary(shape(10, [phase("join", 1.0, ok=False)]))["ok"]
    assert not shape_summary(shape(10, [phase("join", 1.0, trouble_count=1)]))["ok"]
    assert not shape_summary(shape(10, []))["ok"]


def test_exponents_per_phase_over_a_group() -> None:
    group = [shape(n, [phase("join", n * n / 1e6), phase("leave", n / 1e3)]) for n in (1000, 2000)]
    got = exponents(group)
    assert got["join"] == 2.0 and got["leave"] == 1.0 and got["hands"] is None


@pytest.mark.parametrize(("present", "hidden"), [(2, 98), (10, 990), (7, 0)])
def test_roles_put_the_hosts_first_and_spread_the_present(present: int, hidden: int) -> None:
    order = roles(Shape("x", present, hidden, 10.0))
    assert order[:2] == ["host", "host"]
    assert order.count("present") == present - 2 and order.count("hidden") == hidden
