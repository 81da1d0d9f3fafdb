"""In-process command-line tests leave JAX's global compilation-cache setting alone (subprocess tests of the
cache set ``BITNET_JAX_CACHE`` themselves)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    monkeypatch.setenv("BITNET_JAX_CACHE", "off")
