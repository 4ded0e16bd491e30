"""The fit grid on a real three-node Redis Cluster: each shard's grid lives in its slot,
and the refit read from the grids equals the per-customer one."""

from __future__ import annotations

from tests.integration.cluster import (  # noqa: F401  (fixtures: the cluster in place of the single Redis)
    redis_on_the_cluster,
    stack_on_the_cluster,
)
from tests.integration.test_fit_grid import (
    test_refit_from_the_grid_equals_the_per_customer_refit as refit_on_the_cluster,
)
from tests.integration.test_fit_grid import (
    test_the_grid_follows_every_customers_order_days as grid_on_the_cluster,
)

test_the_grid_follows_every_customers_order_days_on_the_cluster = grid_on_the_cluster
test_refit_from_the_grid_equals_the_per_customer_refit_on_the_cluster = refit_on_the_cluster
