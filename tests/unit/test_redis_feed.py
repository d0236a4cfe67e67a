"""The Redis bus's feed (roomstate.bus.redis.feed), driven by hand: where each read room stands
in its stream, and what a pushed or read event means for it. No Redis, no event loop.

The chain tests: a state write this node stored and got an answer for, that the chain then
skips, was lost by Redis (killed with the last second of its AOF unwritten, or a failover to a
replica that was behind) and must be reported, so that the node merges its replica back."""

from __future__ import annotations

from roomstate.bus.redis.feed import Feed, Step

ROOM = "chain"


def feed_at(position: str) -> Feed:
    feed = Feed()
    assert feed.follow(ROOM, position)
    return feed


def push(feed: Feed, entry_id: str, prev: str) -> Step:
    return feed.push(ROOM, entry_id, prev, f"event {entry_id}".encode())


def test_a_chain_that_skips_a_stored_write_reports_the_room_lost() -> None:
    # The node stored 200-0 (answered); its push never came before Redis was killed, and the
    # restarted Redis, its AOF short of that second, goes on from 100-0.
    feed = feed_at("100-0")
    feed.stored_write(ROOM, "200-0")
    assert push(feed, "300-0", "100-0") is Step.NEXT_PAST_WRITE
    assert feed.position(ROOM) == "300-0"
    assert feed.take_gaps() == {ROOM}, "the write 200-0 is not in the stream any more"
    assert feed.take_gaps() == set(), "reported once"
    assert push(feed, "400-0", "300-0") is Step.NEXT, "looked for once"


def test_a_chain_that_holds_the_stored_write_reports_nothing() -> None:
    feed = feed_at("100-0")
    feed.stored_write(ROOM, "200-0")
    assert push(feed, "150-0", "100-0") is Step.NEXT  # another node's, stored before ours
    assert push(feed, "200-0", "150-0") is Step.NEXT  # ours
    assert push(feed, "300-0", "200-0") is Step.NEXT
    assert feed.take_gaps() == set()


def test_only_the_newest_stored_write_after_the_position_is_looked_for() -> None:
    feed = feed_at("100-0")
    feed.stored_write(ROOM, "50-0")  # read already: nothing to look for
    feed.stored_write(ROOM, "300-0")
    feed.stored_write(ROOM, "200-0")  # older than 300-0: a lost suffix would hold 300-0 too
    assert push(feed, "250-0", "100-0") is Step.NEXT
    assert push(feed, "300-0", "250-0") is Step.NEXT
    assert feed.take_gaps() == set()


def test_a_room_not_followed_drops_everything_and_keeps_no_stored_write() -> None:
    feed = Feed()
    feed.stored_write(ROOM, "200-0")
    assert push(feed, "300-0", "100-0") is Step.DROP
    assert feed.read(ROOM, "300-0") is Step.DROP
    assert feed.position(ROOM) is None and not feed.follows(ROOM)
    assert feed.follow(ROOM, "100-0")
    assert push(feed, "300-0", "100-0") is Step.NEXT, "no stored write was kept from before"
    assert feed.take_gaps() == set()


def test_following_again_keeps_the_position_and_dropping_forgets_the_room() -> None:
    feed = feed_at("100-0")
    assert not feed.follow(ROOM, "0-0")
    assert feed.position(ROOM) == "100-0"
    feed.hold(ROOM)
    feed.drop(ROOM)
    assert not feed.follows(ROOM) and not feed.catching_up(ROOM)
    assert feed.release(ROOM) == []


def test_a_push_out_of_the_chain_is_held_until_the_room_caught_up() -> None:
    feed = feed_at("100-0")
    assert push(feed, "300-0", "200-0") is Step.CATCH_UP  # 200-0 never came: pub/sub dropped it
    assert feed.catching_up(ROOM)
    assert push(feed, "400-0", "300-0") is Step.HOLD
    assert feed.position(ROOM) == "100-0"
    # The catch-up reads the stream after 100-0: it holds 200-0 and 300-0 already.
    assert [feed.read(ROOM, i) for i in ("200-0", "300-0")] == [Step.NEXT, Step.NEXT]
    held = feed.release(ROOM)
    assert held == [("300-0", b"event 300-0"), ("400-0", b"event 400-0")]
    assert [feed.read(ROOM, entry_id) for entry_id, _ in held] == [Step.DROP, Step.NEXT]
    assert not feed.catching_up(ROOM) and feed.position(ROOM) == "400-0"
    assert push(feed, "500-0", "400-0") is Step.NEXT


def test_a_read_at_or_before_the_position_is_dropped() -> None:
    feed = feed_at("5-1")
    assert feed.read(ROOM, "5-1") is Step.DROP
    assert feed.read(ROOM, "5-0") is Step.DROP
    assert feed.read(ROOM, "5-2") is Step.NEXT


def test_positions_are_ordered_as_numbers_not_as_text() -> None:
    feed = feed_at("999-9")
    assert feed.read(ROOM, "1000-0") is Step.NEXT  # "1000-0" < "999-9" as text
    assert feed.read(ROOM, "999-10") is Step.DROP
    feed.stored_write(ROOM, "1000-10")
    assert feed.read(ROOM, "1000-9") is Step.NEXT
    assert feed.read(ROOM, "1000-11") is Step.NEXT_PAST_WRITE


def test_a_stream_that_no_longer_holds_the_position_is_a_gap_until_resynced() -> None:
    feed = feed_at("100-0")
    assert feed.still_holds(ROOM, "100-0", "100-0")
    assert feed.take_gaps() == set()
    feed.stored_write(ROOM, "150-0")
    assert not feed.still_holds(ROOM, "100-0", "120-0")  # trimmed past it
    assert not feed.still_holds(ROOM, "100-0", None)  # or gone
    assert feed.resync(ROOM, "160-0")
    assert feed.position(ROOM) == "160-0"
    assert push(feed, "170-0", "160-0") is Step.NEXT, "the stored write goes back with the room"
    assert feed.take_gaps() == {ROOM}
    feed.drop(ROOM)
    assert not feed.resync(ROOM, "200-0"), "the room went while its snapshot was read"
    assert not feed.follows(ROOM)
