"""The Redis ACL user of docs/security.md on a real three-node Redis Cluster."""

from __future__ import annotations

from tests.integration.cluster import (  # noqa: F401  (fixtures: the cluster in place of the single Redis)
    redis_on_the_cluster,
    stack_on_the_cluster,
)
from tests.integration.test_redis_acl import (
    test_the_readme_acl_user_runs_a_worker_and_the_exporter as acl_on_the_cluster,
)

test_the_readme_acl_user_runs_a_worker_and_the_exporter_on_the_cluster = acl_on_the_cluster
