"""What the mcp_worker accepts and answers, declared to the shared request pipeline."""

from __future__ import annotations

from typing import cast

from pydantic import BaseModel

from ferryman.contracts.mcp import (
    MCP_CATALOG_LIST_REQUESTED,
    MCP_FAILED,
    MCP_PROMPT_GET_REQUESTED,
    MCP_RESOURCE_READ_REQUESTED,
    MCP_TOOL_CALL_REQUESTED,
    CatalogListRequest,
    McpFailed,
    PromptGetRequest,
    ResourceReadRequest,
    ToolCallRequest,
)
from ferryman_runtime.job import Job, RequestSpec
from mcp_worker.execution.service import McpRequest, McpService

MCP_REQUESTS = RequestSpec[BaseModel](
    requests={
        MCP_TOOL_CALL_REQUESTED: ToolCallRequest,
        MCP_RESOURCE_READ_REQUESTED: ResourceReadRequest,
        MCP_PROMPT_GET_REQUESTED: PromptGetRequest,
        MCP_CATALOG_LIST_REQUESTED: CatalogListRequest,
    },
    failed_type=MCP_FAILED,
    failed_model=McpFailed,
    noun="MCP request",
)
"""Tool calls, resource reads, prompt gets and catalog listings in; progress and one
`completed` of the request's kind or `failed` out."""


class McpRequests:
    """The pipeline's service: hands each job to the `McpService`.

    Args:
        service: executes MCP requests.
    """

    def __init__(self, service: McpService) -> None:
        self._service = service

    async def execute(self, job: Job[BaseModel]) -> None:
        """Run one request to its terminal event.

        Raises:
            aiokafka.errors.KafkaError: results were not acknowledged.
        """
        # The spec admits only the four request models, so the job is an McpRequest job.
        await self._service.execute(cast(Job[McpRequest], job))
