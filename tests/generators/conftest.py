"""Fixtures for the generator backends: a real llama.cpp server, and a scripted fake server for
the failures a real one will not produce on demand (429s, 500s, hangs, truncated bodies)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from generators.ratelimit import reset_shared_rate_limiters
from testbed.scripted_llm import ScriptedServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _fresh_rate_limiters() -> Iterator[None]:
    """Limiters are shared per endpoint for the whole process; keep tests from sharing them."""
    reset_shared_rate_limiters()
    yield
    reset_shared_rate_limiters()


@pytest.fixture
def fake_server() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    server.start()
    yield server
    server.stop()
