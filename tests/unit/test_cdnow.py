"""The CDNOW reader: both layouts, a header, bad lines, and what the events look like."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from contract.events import OrderEvent, Rejection, build_event
from retention.cdnow import CdnowLine, parse_lines, read_cdnow

# as shipped: leading blanks, runs of spaces, CRLF line ends
MASTER = (
    " customer_id  date number_of_cds  dollar_value\r\n"
    " 00001 19970101  1   11.77\r\n"
    " 00002 19970112  1   12.00\r\n"
    " 00002 19970112  5   77.00\r\n"
    " 00003 19980630  2    0.00\r\n"
)
SAMPLE = (
    " 00004 0001 19970101  2   29.33\r\n"
    " 00004 0001 19970118  2   29.73\r\n"
    "\r\n"
    " 23569 2357 19970325  2   25.74\r\n"
)


def events(result: list[CdnowLine]) -> list[tuple[int, dict[str, Any]]]:
    return [(n, item) for n, item in result if isinstance(item, dict)]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


def test_master_layout(tmp_path: Path) -> None:
    result = list(read_cdnow(write(tmp_path, "CDNOW_master.txt", MASTER)))
    assert [n for n, _ in result] == [2, 3, 4, 5]  # the header is line 1 and is skipped
    assert all(isinstance(item, dict) for _, item in result)
    assert result[0][1] == {
        "event_id": "cdnow-2",
        "customer_id": "00001",
        "ts": "1997-01-01T00:00:00Z",
        "type": "order",
        "amount": 11.77,
        "items": 1,
        "status": "placed",
    }
    item = result[2][1]
    assert isinstance(item, dict)
    event = build_event(item)
    assert isinstance(event, OrderEvent)
    assert (event.customer_id, event.items, event.amount, event.status) == (
        "00002",
        5,
        77.0,
        "placed",
    )
    assert event.ts == datetime(1997, 1, 12, tzinfo=UTC)


def test_sample_layout_ignores_the_sample_id(tmp_path: Path) -> None:
    result = events(list(read_cdnow(write(tmp_path, "CDNOW_sample.txt", SAMPLE))))
    assert [n for n, _ in result] == [1, 2, 4]  # no header; the blank line 3 is skipped
    assert [item["customer_id"] for _, item in result] == ["00004", "00004", "23569"]
    assert [item["event_id"] for _, item in result] == ["cdnow-1", "cdnow-2", "cdnow-4"]
    assert [item["items"] for _, item in result] == [2, 2, 2]
    assert result[1][1]["amount"] == 29.73


@pytest.mark.parametrize("text", [MASTER, SAMPLE])
def test_every_event_is_valid_and_at_midnight_utc(tmp_path: Path, text: str) -> None:
    for _, item in events(list(read_cdnow(write(tmp_path, "cdnow.txt", text)))):
        event = build_event(item)
        assert isinstance(event, OrderEvent)
        assert event.ts.tzinfo is UTC
        assert (event.ts.hour, event.ts.minute, event.ts.second, event.ts.microsecond) == (
            0,
            0,
            0,
            0,
        )
        assert event.ts_ms % 86_400_000 == 0


def test_ids_are_deterministic_and_can_carry_a_prefix(tmp_path: Path) -> None:
    path = write(tmp_path, "CDNOW_master.txt", MASTER)
    assert list(read_cdnow(path)) == list(read_cdnow(path))
    ids = [item["event_id"] for _, item in events(list(read_cdnow(path, id_prefix="master")))]
    assert ids == ["master-2", "master-3", "master-4", "master-5"]


def test_the_layout_is_chosen_per_line() -> None:
    result = events(list(parse_lines([" 7 19970101 1 1.00", " 8 0002 19970102 3 2.50"])))
    assert [(item["customer_id"], item["items"]) for _, item in result] == [("7", 1), ("8", 3)]


@pytest.mark.parametrize(
    ("line", "detail"),
    [
        # three columns fit neither layout
        ("00001 19970101 1", "got 3"),
        ("00001 0001 19970101 1 2.00 9", "got 6"),
        # no such date
        ("00001 19970231 1 11.77", "19970231"),
        ("00001 1997-01-01 1 11.77", "1997-01-01"),
        ("00001 19970101 -1 11.77", "quantity"),
        ("00001 19970101 1.5 11.77", "quantity"),
        ("00001 19970101 1 -3.00", "amount"),
        ("00001 19970101 1 nan", "amount"),
        ("00001 19970101 1 $11.77", "amount"),
        # a non-numeric line after the first is not a header
        ("customer_id date number_of_cds dollar_value", "date"),
    ],
)
def test_a_bad_line_is_yielded_as_a_rejection_with_its_number(line: str, detail: str) -> None:
    result = list(parse_lines([" 00009 19970101 1 1.00", line, " 00009 19970102 1 1.00"]))
    assert [n for n, _ in result] == [1, 2, 3]  # the read goes on after the bad line
    number, rejection = result[1]
    assert isinstance(rejection, Rejection)
    assert rejection.reason == "invalid_field"
    assert rejection.detail.startswith("line 2: ")
    assert detail in rejection.detail
    assert number == 2


def test_undecodable_bytes_reject_the_line_only(tmp_path: Path) -> None:
    path = tmp_path / "cdnow.txt"
    path.write_bytes(b"00001 19970101 1 1.00\n00002 1997\xff0101 1 1.00\n00003 19970101 1 1.00\n")
    result = list(read_cdnow(path))
    assert [type(item).__name__ for _, item in result] == ["dict", "Rejection", "dict"]


def test_empty_input() -> None:
    assert list(parse_lines([])) == []
    assert list(parse_lines(["", "  ", " customer_id date quantity amount"])) == []
