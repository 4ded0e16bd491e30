"""Which offsets the notifier may commit while alerts are still with some subscribers."""

from __future__ import annotations

from aiokafka import TopicPartition

from retention.dispatch import OffsetTracker

P0, P1 = TopicPartition("alerts", 0), TopicPartition("alerts", 1)


def test_only_the_finished_prefix_of_each_partition_is_committed() -> None:
    offsets = OffsetTracker()
    a = offsets.add(P0, 10, waiting=2)  # two subscribers want it
    b = offsets.add(P0, 11, waiting=1)
    offsets.add(P0, 12, waiting=0)  # undecodable, or wanted by nobody
    c = offsets.add(P1, 5, waiting=1)
    assert offsets.committable() == {}
    offsets.finish(b)  # a later message done first: still nothing on P0
    offsets.finish(c)
    assert offsets.committable() == {P1: 6}
    offsets.finish(a)
    assert offsets.committable() == {}  # one of a's two subscribers is not done
    offsets.finish(a)
    assert offsets.committable() == {P0: 13}
    assert offsets.committable() == {}  # nothing new since
    assert offsets.in_flight() == 0


def test_revoked_partitions_are_forgotten_and_their_alerts_cancelled() -> None:
    offsets = OffsetTracker()
    mine, theirs = offsets.add(P0, 1, waiting=1), offsets.add(P1, 1, waiting=1)
    offsets.revoke([P1])
    assert theirs.cancelled and not mine.cancelled
    offsets.finish(theirs)  # a lane that was already sending it
    offsets.finish(mine)
    assert offsets.committable() == {P0: 2}
