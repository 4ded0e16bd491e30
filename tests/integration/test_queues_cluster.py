"""The evaluation queues on a real three-node Redis Cluster: every key a script touches
lies in its shard's slot."""

from __future__ import annotations

from tests.integration.cluster import (  # noqa: F401  (fixtures: the cluster in place of the single Redis)
    redis_on_the_cluster,
    stack_on_the_cluster,
)
from tests.integration.test_queues import (
    test_a_recheck_is_taken_at_its_time_and_a_lost_lease_changes_nothing as recheck_on_the_cluster,
)
from tests.integration.test_queues import (
    test_changed_customers_wait_once_in_the_order_of_their_first_change as fifo_on_the_cluster,
)
from tests.integration.test_queues import (
    test_the_queues_follow_a_model_through_splits_leases_and_changes as model_on_the_cluster,
)

test_changed_customers_wait_once_in_order_on_the_cluster = fifo_on_the_cluster
test_a_recheck_is_taken_at_its_time_on_the_cluster = recheck_on_the_cluster
test_the_queues_follow_a_model_on_the_cluster = model_on_the_cluster
