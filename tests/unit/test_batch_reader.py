"""The batch reader's bookkeeping, without servers: which fetched records the ingest gets,
and which offsets Faust's own commit logic then commits once they are acked."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from intervaltree import IntervalTree

from streams.batch_reader import BatchConsumer


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int


def tp(topic: str, partition: int) -> Any:
    return BatchConsumer._new_topicpartition(None, topic, partition)


def consumer(read_offset: dict[Any, int] | None = None) -> BatchConsumer:
    """The consumer's offset bookkeeping alone, as Faust's ``Consumer.__init__`` sets it."""
    c = BatchConsumer.__new__(BatchConsumer)
    c._read_offset = defaultdict(lambda: None, read_offset or {})
    c._buffered_partitions = set()
    c._committed_offset = defaultdict(lambda: None)
    c._gap = defaultdict(IntervalTree)
    c._acked = defaultdict(list)
    c._acked_index = defaultdict(set)
    c._n_acked = 0
    c.app = SimpleNamespace(monitor=SimpleNamespace(stream_inbound_time={}))
    return c


def records(topic: str, partition: int, *offsets: int) -> list[Record]:
    return [Record(topic, partition, o) for o in offsets]


async def test_a_fetch_becomes_one_batch_of_the_sources_and_the_rest_goes_apart() -> None:
    c = consumer({tp("orders", 0): 4})
    fetched = {
        tp("orders", 0): records("orders", 0, 3, 4, 5, 6),  # 3 was read before the seek
        tp("logins", 1): records("logins", 1, 0, 1),
        tp("other", 0): records("other", 0, 9),
        tp("orders", 2): records("orders", 2, 7),  # neither active nor buffered
    }
    active = {tp("orders", 0), tp("logins", 1), tp("other", 0)}
    batch, others = await c._take_new(fetched, active, frozenset({"orders", "logins"}))
    assert [(r.topic, r.offset) for r in batch] == [
        ("orders", 4),
        ("orders", 5),
        ("orders", 6),
        ("logins", 0),
        ("logins", 1),
    ]
    assert [(t.topic, r.offset) for t, r in others] == [("other", 9)]
    assert c._read_offset[tp("orders", 0)] == 6
    assert c._read_offset[tp("orders", 2)] is None
    # the partitions read are marked as flowing for Faust's livelock check
    assert set(c.app.monitor.stream_inbound_time) == active


async def test_acked_batches_commit_past_a_hole_in_the_log() -> None:
    """Offsets 3 and 4 are gone (compaction): once 0-2 and 5-6 are stored, Faust commits 7."""
    c = consumer()
    fetched = {tp("orders", 0): records("orders", 0, 0, 1, 2, 5, 6)}
    batch, _ = await c._take_new(fetched, None, frozenset({"orders"}))
    assert c.ack_records(batch[:3]) == 3
    assert c._new_offset(tp("orders", 0)) == 3
    assert c.ack_records(batch[3:] + batch[3:]) == 2  # an offset acked twice counts once
    assert c._new_offset(tp("orders", 0)) == 7
    assert c._n_acked == 5


async def test_offsets_below_the_committed_one_are_not_acked_again() -> None:
    c = consumer()
    c._committed_offset[tp("orders", 0)] = 10
    assert c.ack_records(records("orders", 0, 8, 9, 10, 11)) == 2
    assert sorted(c._acked[tp("orders", 0)]) == [10, 11]
