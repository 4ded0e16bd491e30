"""The backtest's own steps before the batch script: reading the file once, the records
it sends, the currency conversion it skips, and the paused garbage collector."""

from __future__ import annotations

import gc
from dataclasses import replace
from datetime import date
from pathlib import Path

from contract.events import Event, OrderEvent, build_event
from retention.backtest import (
    Options,
    Unconverted,
    load,
    load_all,
    no_cycle_collection,
    rates_for,
    replay_records,
)
from retention.config import Settings
from store.record import OFFSET, PARTITION, RECORD_FIELDS, STAMP, TOPIC
from store.store import accepted_record
from streams.topics import Topics

# master layout, in customer order as CDNOW_master is: the times interleave
CDNOW = """\
customer_id date quantity amount
1 19970101 1 10.00
1 19971001 2 20.00
2 19970930 1 5.50
2 19980301 1 7.25
3 19980701 3 9.99
3 19970930 1 1.00
"""


def options(tmp_path: Path, **kw: object) -> Options:
    path = tmp_path / "cdnow.txt"
    path.write_text(CDNOW)
    return replace(Options(path, "cdnow", "month", 90, ("order",), tmp_path / "r.json"), **kw)


def ids(events: list[Event]) -> list[str]:
    return [e.event_id for e in events]


def test_the_calibration_is_the_head_of_the_events_through_the_holdout(tmp_path: Path) -> None:
    o = options(tmp_path, until=date(1997, 9, 30), holdout_until=date(1998, 6, 30))
    events, bad, later = load_all(o)
    assert ids(events) == ids(load(o)[0]) == ["cdnow-2", "cdnow-4", "cdnow-7"]
    assert ids(later) == ids(load(replace(o, until=date(1998, 6, 30)))[0])
    assert ids(later) == ["cdnow-2", "cdnow-4", "cdnow-7", "cdnow-3", "cdnow-5"]
    assert bad == []


def test_without_a_holdout_end_nothing_more_is_kept(tmp_path: Path) -> None:
    events, _, later = load_all(options(tmp_path, until=date(1997, 9, 30)))
    assert len(events) == 3 and later == []


def test_records_are_the_workers_numbered_per_topic_across_batches() -> None:
    topics = Topics("bt-")
    rates = Unconverted("USD", "USD")
    events = [
        build_event(
            {"event_id": f"e{n}", "customer_id": "c", "ts": f"2024-01-0{n + 1}T00:00:00Z"}
            | ({"type": "order", "amount": 1.5} if n % 2 == 0 else {"type": "login"})
        )
        for n in range(5)
    ]
    offsets: dict[str, int] = {}
    records = replay_records(events[:3], topics, rates, offsets)
    records += replay_records(events[3:], topics, rates, offsets)
    assert [(r[TOPIC], r[PARTITION], r[OFFSET]) for r in records] == [
        ("bt-orders", "0", "0"),
        ("bt-logins", "0", "0"),
        ("bt-orders", "0", "1"),
        ("bt-logins", "0", "1"),
        ("bt-orders", "0", "2"),
    ]
    first = accepted_record(events[0], "bt-orders", 0, 0, int(records[0][STAMP]), rates)
    assert records[0] == first
    # the order's currency as a worker records it (a3), not left empty
    assert first[RECORD_FIELDS.index("a3")] == "USD"


def test_the_ecb_rates_are_not_loaded_when_every_order_is_in_the_reporting_currency() -> None:
    settings = Settings(reporting_currency="EUR", default_currency="EUR")
    orders = [
        build_event(
            {"event_id": "a", "customer_id": "c", "ts": "2024-01-01T00:00:00Z"}
            | {"type": "order", "amount": 2.0, "currency": "EUR"}
        ),
        build_event(
            {"event_id": "b", "customer_id": "c", "ts": "2024-01-02T00:00:00Z"}
            | {"type": "order", "amount": 3.0}
        ),
    ]
    rates = rates_for(settings, orders)
    assert isinstance(rates, Unconverted)
    assert [rates.reporting_micros(e) for e in orders if isinstance(e, OrderEvent)] == [
        2_000_000,
        3_000_000,
    ]
    assert [rates.currency_of(e) for e in orders if isinstance(e, OrderEvent)] == ["EUR"] * 2


def test_the_collector_is_paused_for_the_run_and_restored_after() -> None:
    assert gc.isenabled()
    with no_cycle_collection():
        assert not gc.isenabled()
    assert gc.isenabled()
