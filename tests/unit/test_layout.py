"""Key names are stored data: these rows pin them, so a change of spelling is seen here
before it strands what a running deployment wrote."""

from __future__ import annotations

import pytest

from store.layout import Keys


@pytest.mark.parametrize(
    ("prefix", "parts", "expected"),
    [
        ("rt:", ("c", "42"), "rt:c:42"),
        ("rt:", ("stats",), "rt:stats"),
        # a family name that holds a colon itself is joined as it is
        ("rt:", ("life:counts",), "rt:life:counts"),
        ("rt:", ("notify", "delivered", "crm"), "rt:notify:delivered:crm"),
        ("rt:", ("notify", "last", "crm", "at_risk", "a:b"), "rt:notify:last:crm:at_risk:a:b"),
        # the prefix is used as given: no separator is added after it
        ("", ("keys",), "keys"),
        ("bt-1", ("ingest", "stats"), "bt-1ingest:stats"),
        # customer ids are free text, kept as they are
        ("rt:", ("c", "émile ∂"), "rt:c:émile ∂"),
    ],
)
def test_a_key_is_the_prefix_and_its_parts_joined_by_colons(
    prefix: str, parts: tuple[str, ...], expected: str
) -> None:
    assert Keys(prefix).key(*parts) == expected
