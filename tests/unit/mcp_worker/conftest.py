"""The inventory API (tests/fakes/openapi_api.py) for the OpenAPI tests, and its v1 tools."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mcp_worker.openapi import api_tools, load_spec
from tests.fakes.openapi_api import ApiOptions, InventoryApi

INVENTORY_V1 = load_spec(
    (Path(__file__).resolve().parents[2] / "fakes" / "openapi" / "api-v1.json").read_bytes(),
    source="api-v1.json",
)
INVENTORY_TOOLS = api_tools(INVENTORY_V1).by_name()
INVENTORY_SCHEMES: dict[str, Any] = INVENTORY_V1.document["components"]["securitySchemes"]


@pytest.fixture
async def api() -> AsyncIterator[InventoryApi]:
    """The inventory API on a free port: 429 twice on `/limited`, 503 twice on `/flaky`."""
    server = InventoryApi(ApiOptions(limited_failures=2, flaky_failures=2))
    await server.start()
    yield server
    await server.stop()
