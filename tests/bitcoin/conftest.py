"""Fixtures shared by the Bitcoin tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kofo.settlement.chains.bitcoin.embedded import EmbeddedChain


@pytest.fixture(scope="module")
def chain() -> Iterator[EmbeddedChain]:
    """A fresh embedded regtest chain per test module (modules mine their own coins)."""
    c = EmbeddedChain()
    yield c
    c.close()
