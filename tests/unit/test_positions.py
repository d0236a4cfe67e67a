"""Positions are ordered and read the same way by every layer (roomstate.wire.positions)."""

from __future__ import annotations

import pytest

from roomstate.wire.positions import location, position_clock_ms, position_key


def test_stream_ids_order_by_clock_then_counter() -> None:
    ids = ["1700000000001-0", "1700000000000-12", "1700000000000-3", b"1700000000000-4"]
    assert sorted(ids, key=position_key) == [
        "1700000000000-3",
        b"1700000000000-4",
        "1700000000000-12",
        "1700000000001-0",
    ]


def test_counters_order_as_numbers() -> None:
    assert sorted(["10", "9", "100"], key=position_key) == ["9", "10", "100"]


def test_a_malformed_position_is_refused() -> None:
    with pytest.raises(ValueError):
        position_key("not-a-position")


@pytest.mark.parametrize(
    ("position", "ms"),
    [("1700000000000-3", 1700000000000), ("42", None), (None, None), ("", None), ("a-1", None)],
)
def test_only_a_stream_id_carries_the_store_clock(position: str | None, ms: int | None) -> None:
    assert position_clock_ms(position) == ms


def test_a_location_names_the_node_and_its_incarnation() -> None:
    assert location("n1", "i7") == {"node": "n1", "incarnation": "i7"}
