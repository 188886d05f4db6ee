"""OpenAPI-described HTTP APIs as tools: loading specs, generating tools, comparing versions."""

from mcp_worker.openapi.compat import CompatEntry, CompatReport, compare
from mcp_worker.openapi.operations import (
    ApiTools,
    Binding,
    OperationFilter,
    OperationTool,
    api_tools,
)
from mcp_worker.openapi.spec import ApiSpec, load_spec

__all__ = [
    "ApiSpec",
    "ApiTools",
    "Binding",
    "CompatEntry",
    "CompatReport",
    "OperationFilter",
    "OperationTool",
    "api_tools",
    "compare",
    "load_spec",
]
