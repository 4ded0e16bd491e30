"""The record's fields are named once (store/record.py); the batch script's header names
them in the same order, and the builders fill every one."""

from __future__ import annotations

from pathlib import Path

from contract.events import build_event
from store.record import FIELDS_PER_RECORD, RECORD_FIELDS
from store.store import accepted_record, rejected_record

SCRIPT = Path(__file__).resolve().parents[2] / "store" / "batch_setup.lua"


def test_the_batch_script_names_the_fields_in_the_same_order() -> None:
    header = [line for line in SCRIPT.read_text().splitlines() if line.startswith("--   kind")]
    assert len(header) == 1, header
    names = header[0].removeprefix("--").split()
    assert [name.split("(")[0] for name in names] == list(RECORD_FIELDS)
    assert f"arrays of {FIELDS_PER_RECORD} strings" in SCRIPT.read_text()


def test_every_record_builder_fills_every_field() -> None:
    events = [
        {"type": "order", "amount": 5, "currency": "EUR"},
        {"type": "login"},
        {"type": "support", "ticket_id": "t", "action": "rated", "survey": "nps", "score": 9},
    ]
    for extra in events:
        event = build_event({"event_id": "e", "customer_id": "c", "ts": 1_700_000_000, **extra})
        record = accepted_record(event, "orders", 1, 2, 3)
        assert len(record) == FIELDS_PER_RECORD
        assert dict(zip(RECORD_FIELDS, record, strict=True))["customer_id"] == "c"
    refused = rejected_record("orders", 1, 2, "invalid_json", 3)
    assert dict(zip(RECORD_FIELDS, refused, strict=True))["a1"] == "invalid_json"
