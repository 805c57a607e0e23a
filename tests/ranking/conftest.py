"""Fixtures for the ranking core's tests: plain numpy, no Django, no database."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded random generator, so every test's data is the same on every run."""
    return np.random.default_rng(42)
