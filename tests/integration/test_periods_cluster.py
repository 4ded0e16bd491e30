"""Period bitmaps on a real three-node Redis Cluster: each shard's bitmaps are rewritten
in their own slot, and each shard's cohort bitmaps start at their own first customer."""

from __future__ import annotations

from tests.integration.cluster import (  # noqa: F401  (fixtures: the cluster in place of the single Redis)
    redis_on_the_cluster,
    stack_on_the_cluster,
)
from tests.integration.test_periods import (
    test_closing_a_period_gives_its_bitmaps_their_exact_size as compaction_on_the_cluster,
)
from tests.integration.test_periods import (
    test_cohort_bitmaps_start_at_their_first_customer as cohort_starts_on_the_cluster,
)

test_closing_a_period_gives_its_bitmaps_their_exact_size_on_the_cluster = compaction_on_the_cluster
test_cohort_bitmaps_start_at_their_first_customer_on_the_cluster = cohort_starts_on_the_cluster
