"""Reader for the CDNOW transaction files (docs/metrics.md, Input formats for backtest).

Two layouts, as shipped in the ``lifetimes`` package, told apart per line by the number of
whitespace-separated columns:

- ``CDNOW_master.txt``: a header line, then ``customer_id date quantity amount``;
- ``CDNOW_sample.txt``: no header, ``customer_id sample_id date quantity amount`` (the
  sample id is ignored).

Each row is one placed order. Dates are ``YYYYMMDD`` and mean 00:00 UTC of that date
(docs/metrics.md, Time). Event ids come from the line number (``cdnow-<line>``), so reading the
same file twice yields the same ids and a replay is deduplicated like any other.

A bad line does not stop the read: it is yielded as a :class:`~contract.events.Rejection`
with its line number, the way ``retention produce`` treats bad JSON lines, so that a
backtest can count it as rejected and go on. Blank lines and one header line (the first
non-blank line, when none of its fields is a number) are skipped silently.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contract.events import Rejection

ID_PREFIX = "cdnow"
_COLUMNS = {4: "master", 5: "sample"}

CdnowLine = tuple[int, dict[str, Any] | Rejection]


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _is_header(fields: list[str]) -> bool:
    return not any(_is_number(f) for f in fields)


def _digits(token: str) -> bool:
    return token.isascii() and token.isdigit()


@functools.lru_cache(maxsize=4096)
def _date(token: str) -> str:
    """``YYYYMMDD`` to ISO 8601 at 00:00 UTC; ``ValueError`` when it is no such date.

    Cached: a file holds few distinct days, and ``strptime`` is most of a line's cost."""
    if len(token) != 8 or not _digits(token):
        raise ValueError(f"date {token!r} is not YYYYMMDD")
    try:
        day = datetime.strptime(token, "%Y%m%d").replace(tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"date {token!r}: {exc}") from exc
    return day.isoformat().replace("+00:00", "Z")


def _quantity(token: str) -> int:
    if not _digits(token):
        raise ValueError(f"quantity {token!r} is not a whole number >= 0")
    return int(token)


def _amount(token: str) -> float:
    value = float(token) if _is_number(token) else math.nan
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"amount {token!r} is not a finite number >= 0")
    return value


def parse_line(fields: list[str], line_no: int, id_prefix: str = ID_PREFIX) -> dict[str, Any]:
    """One row's fields as an order event mapping for :func:`contract.events.build_event`.

    Raises ``ValueError`` naming the first bad field.
    """
    if len(fields) not in _COLUMNS:
        raise ValueError(f"expected 4 (master) or 5 (sample) columns, got {len(fields)}")
    customer_id, *_, date, quantity, amount = fields
    return {
        "event_id": f"{id_prefix}-{line_no}",
        "customer_id": customer_id,
        "ts": _date(date),
        "type": "order",
        "amount": _amount(amount),
        "items": _quantity(quantity),
        "status": "placed",
    }


def parse_lines(lines: Iterable[str], id_prefix: str = ID_PREFIX) -> Iterator[CdnowLine]:
    """``(line number, event mapping or rejection)`` for each data line; numbers start at 1."""
    seen_content = False
    for line_no, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        first, seen_content = not seen_content, True
        if first and _is_header(fields):
            continue
        try:
            yield line_no, parse_line(fields, line_no, id_prefix)
        except ValueError as exc:
            yield line_no, Rejection("invalid_field", f"line {line_no}: {exc}"[:300])


def read_cdnow(path: Path | str, id_prefix: str = ID_PREFIX) -> Iterator[CdnowLine]:
    """Stream a CDNOW file (either layout) as :func:`parse_lines` does.

    Give each file its own ``id_prefix`` when several are replayed together, since line
    numbers repeat across files.
    """
    # undecodable bytes become U+FFFD, so such a line is rejected rather than ending the read
    with Path(path).open(encoding="utf-8", errors="replace") as handle:
        yield from parse_lines(handle, id_prefix)
