"""Shared test configuration: Hypothesis profiles.

Choose one with HYPOTHESIS_PROFILE (default ``dev``):

- ``dev``: 100 examples per property, for quick local runs;
- ``ci``: 500 examples per property (what `.ci/run` uses);
- ``nightly``: 10,000 examples per property.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from hypothesis import HealthCheck, settings

from roomstate.sdk.client import CallClient

settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile(
    "ci",
    max_examples=500,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "nightly",
    max_examples=10_000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture
def room() -> str:
    """A fresh room name for each test."""
    return f"room-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def clients() -> AsyncIterator[list[CallClient]]:
    """Clients a test makes go in this list; all are closed at the end."""
    made: list[CallClient] = []
    yield made
    for client in made:
        await client.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
