"""Closing periods on a real three-node Redis Cluster: each shard's bitmaps are rewritten
in their own slot."""

from __future__ import annotations

from tests.integration.cluster import (  # noqa: F401  (fixtures: the cluster in place of the single Redis)
    redis_on_the_cluster,
    stack_on_the_cluster,
)
from tests.integration.test_periods import (
    test_closing_a_period_gives_its_bitmaps_their_exact_size as compaction_on_the_cluster,
)

test_closing_a_period_gives_its_bitmaps_their_exact_size_on_the_cluster = compaction_on_the_cluster
