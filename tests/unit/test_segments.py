"""Who is in a segment, the row a segment lists, and the paging cursor."""

from __future__ import annotations

from dataclasses import replace

import pytest

from processors.segments import COLUMNS, Filters, attribute_filter, member, row
from processors.state import Attribute, CustomerState
from retention.segments import BadCursor, decode_cursor, encode_cursor

DAY = 86_400_000
STATE = CustomerState(
    "c-1", last_activity_ms=100 * DAY, orders=4, placed_micros=200_000_000, open_tickets=1
)
AT_RISK = {"st": "at_risk", "sc": "0.6", "rr": "silence,refunds", "hv": "1", "at": str(101 * DAY),
           "no": "4", "cl": "792390000", "cr": "475434000", "bd": "m"}  # fmt: skip


def test_membership_follows_the_stored_evaluation_and_every_filter() -> None:
    assert member("at_risk", STATE, AT_RISK, Filters())
    assert member("high_value", STATE, AT_RISK, Filters())
    assert not member("active", STATE, AT_RISK, Filters())
    assert not member("at_risk", STATE, {}, Filters())  # not evaluated yet: in no segment
    assert member("at_risk", STATE, AT_RISK, Filters(bands=frozenset({"medium", "high"})))
    assert not member("at_risk", STATE, AT_RISK, Filters(bands=frozenset({"high"})))
    assert member("at_risk", STATE, AT_RISK, Filters(min_cltv=792.39))
    assert not member("at_risk", STATE, AT_RISK, Filters(min_cltv=792.40))
    assert not member("at_risk", STATE, {**AT_RISK, "cl": ""}, Filters(min_cltv=1))
    assert member("at_risk", STATE, AT_RISK, Filters(active_before_ms=100 * DAY + 1))
    assert not member("at_risk", STATE, AT_RISK, Filters(active_before_ms=100 * DAY))
    assert member("at_risk", STATE, AT_RISK, Filters(active_after_ms=100 * DAY))
    assert not member("at_risk", STATE, AT_RISK, Filters(active_after_ms=100 * DAY + 1))


def test_a_row_has_every_column_in_person_units() -> None:
    got = row(STATE, AT_RISK, "EUR")
    assert tuple(got) == COLUMNS
    assert (got["band"], got["cltv"], got["cltv_at_risk"], got["aov"]) == (
        "medium",
        792.39,
        475.434,
        50.0,
    )
    assert got["evaluated_at"] == "1970-04-12T00:00:00.000Z" and got["currency"] == "EUR"
    assert row(STATE, {**AT_RISK, "cl": "", "cr": ""}, "EUR")["cltv_at_risk"] is None


def test_attributes_narrow_a_segment_by_the_latest_values() -> None:
    moved = replace(
        STATE,
        attributes={
            "country": Attribute("FR", 1 * DAY, "DE", 90 * DAY),
            "channel": Attribute("web", 1 * DAY, "web", 1 * DAY),
        },
    )
    assert attribute_filter({"country": "de, at", "shop": ""}) == {"country": {"DE", "AT"}}
    assert attribute_filter({"country": None}) is None

    def kept(**given: str) -> bool:
        return member("at_risk", moved, AT_RISK, Filters(attributes=attribute_filter(given)))

    assert kept(country="de") and kept(country="DE", channel="web,app")
    assert not kept(country="FR")  # the first country, not the latest
    assert not kept(shop="eu")  # no event carried a shop
    got = row(moved, AT_RISK, "EUR")
    assert (got["country"], got["channel"], got["shop"]) == ("DE", "web", None)


def test_cursors_round_trip_and_strangers_are_refused() -> None:
    assert decode_cursor(encode_cursor(3, 12345)) == (3, 12345)
    assert decode_cursor(None) == (0, 0)
    for bad in ("not-a-cursor", encode_cursor(0, 0)[:-2] + "!!", "WyJhIiwgMV0"):
        with pytest.raises(BadCursor):
            decode_cursor(bad)
