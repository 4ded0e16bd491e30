"""Shared pieces for unit and integration tests."""

from __future__ import annotations

import os
import random

import pytest


@pytest.fixture
def rng() -> random.Random:
    """A seeded generator; the seed is printed so a failure can be replayed."""
    seed = int(os.environ.get("TEST_SEED", random.randrange(1 << 30)))
    print(f"TEST_SEED={seed}")
    return random.Random(seed)
