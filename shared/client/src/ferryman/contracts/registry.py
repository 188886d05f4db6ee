"""Every domain's channels; the AsyncAPI document is built from this list.

A new worker's domain module declares a `RequestDomain` and is added here.
"""

from __future__ import annotations

from ferryman.contracts import llm, llm_cache, llm_tools, mcp, storage
from ferryman.contracts.channels import EventMessage, ExtraChannel, RequestDomain

LLM = RequestDomain(
    name="llm",
    title="Chat completions on LLM providers",
    request_topic=llm.DEFAULT_LLM_REQUEST_TOPIC,
    reply_topic=llm.DEFAULT_LLM_REPLY_TOPIC,
    requests=(EventMessage("chatRequested", llm.LLM_CHAT_REQUESTED, llm.ChatRequest),),
    replies=(
        EventMessage("chatChunk", llm.LLM_CHAT_CHUNK, llm.ChatChunk),
        EventMessage("chatRestarted", llm.LLM_CHAT_RESTARTED, llm.ChatRestarted),
        EventMessage("chatProgress", llm_tools.LLM_CHAT_PROGRESS, llm_tools.ChatProgress),
        EventMessage("chatToolCalled", llm_tools.LLM_CHAT_TOOL_CALLED, llm_tools.ToolCallStarted),
        EventMessage("chatToolResult", llm_tools.LLM_CHAT_TOOL_RESULT, llm_tools.ToolCallFinished),
        EventMessage("chatCompleted", llm.LLM_CHAT_COMPLETED, llm.ChatCompleted),
        EventMessage("chatFailed", llm.LLM_CHAT_FAILED, llm.ChatFailed),
    ),
)

MCP = RequestDomain(
    name="mcp",
    title="Tool calls, resources and prompts on MCP servers",
    request_topic=mcp.DEFAULT_MCP_REQUEST_TOPIC,
    reply_topic=mcp.DEFAULT_MCP_REPLY_TOPIC,
    requests=(
        EventMessage("toolCallRequested", mcp.MCP_TOOL_CALL_REQUESTED, mcp.ToolCallRequest),
        EventMessage(
            "resourceReadRequested", mcp.MCP_RESOURCE_READ_REQUESTED, mcp.ResourceReadRequest
        ),
        EventMessage("promptGetRequested", mcp.MCP_PROMPT_GET_REQUESTED, mcp.PromptGetRequest),
        EventMessage(
            "catalogListRequested", mcp.MCP_CATALOG_LIST_REQUESTED, mcp.CatalogListRequest
        ),
    ),
    replies=(
        EventMessage("mcpProgress", mcp.MCP_PROGRESS, mcp.McpProgress),
        EventMessage("toolCallCompleted", mcp.MCP_TOOL_CALL_COMPLETED, mcp.ToolCallCompleted),
        EventMessage(
            "resourceReadCompleted", mcp.MCP_RESOURCE_READ_COMPLETED, mcp.ResourceReadCompleted
        ),
        EventMessage("promptGetCompleted", mcp.MCP_PROMPT_GET_COMPLETED, mcp.PromptGetCompleted),
        EventMessage(
            "catalogListCompleted", mcp.MCP_CATALOG_LIST_COMPLETED, mcp.CatalogListCompleted
        ),
        EventMessage("mcpFailed", mcp.MCP_FAILED, mcp.McpFailed),
    ),
    extra=(
        ExtraChannel(
            name="mcpControl",
            address=mcp.DEFAULT_MCP_CONTROL_TOPIC,
            description="Cancellations (keyed by request id), tool approvals and LLM"
            " response-cache invalidations; every replica reads the whole topic.",
            messages=(
                EventMessage("cancelRequested", mcp.MCP_CANCEL_REQUESTED, mcp.CancelRequest),
                EventMessage("toolApproved", mcp.MCP_TOOL_APPROVED, mcp.ToolApproval),
                EventMessage(
                    "llmCacheInvalidateRequested",
                    llm_cache.LLM_CACHE_INVALIDATE_REQUESTED,
                    llm_cache.CacheInvalidation,
                ),
            ),
            action="receive",
        ),
        ExtraChannel(
            name="mcpCatalog",
            address=mcp.DEFAULT_MCP_CATALOG_TOPIC,
            description="Compacted: the latest catalog record per server (key: the server"
            " name; a tombstone when it left the registry).",
            messages=(EventMessage("catalogUpdated", mcp.MCP_CATALOG_UPDATED, mcp.CatalogRecord),),
            action="send",
        ),
        ExtraChannel(
            name="mcpAudit",
            address=mcp.DEFAULT_MCP_AUDIT_TOPIC,
            description="One record per call (arguments digested, configured fields"
            " redacted), tool definition changes, and API document changes.",
            messages=(
                EventMessage("callAudited", mcp.MCP_CALL_AUDITED, mcp.CallAudit),
                EventMessage("toolChanged", mcp.MCP_TOOL_CHANGED, mcp.ToolChanged),
                EventMessage("apiChanged", mcp.MCP_API_CHANGED, mcp.ApiChanged),
            ),
            action="send",
        ),
    ),
)
"""Tool calls, resources, prompts and the catalog on MCP servers (the mcp_worker)."""

STORAGE = RequestDomain(
    name="storage",
    title="Objects on local disk, S3, Azure Blob and GCS",
    request_topic=storage.DEFAULT_STORAGE_REQUEST_TOPIC,
    reply_topic=storage.DEFAULT_STORAGE_REPLY_TOPIC,
    requests=(
        EventMessage("putRequested", storage.STORAGE_PUT_REQUESTED, storage.PutRequest),
        EventMessage("getRequested", storage.STORAGE_GET_REQUESTED, storage.GetRequest),
        EventMessage("headRequested", storage.STORAGE_HEAD_REQUESTED, storage.HeadRequest),
        EventMessage("listRequested", storage.STORAGE_LIST_REQUESTED, storage.ListRequest),
        EventMessage("deleteRequested", storage.STORAGE_DELETE_REQUESTED, storage.DeleteRequest),
        EventMessage("copyRequested", storage.STORAGE_COPY_REQUESTED, storage.CopyRequest),
        EventMessage("presignRequested", storage.STORAGE_PRESIGN_REQUESTED, storage.PresignRequest),
        EventMessage(
            "metadataUpdateRequested",
            storage.STORAGE_METADATA_UPDATE_REQUESTED,
            storage.MetadataUpdateRequest,
        ),
        EventMessage("processRequested", storage.STORAGE_PROCESS_REQUESTED, storage.ProcessRequest),
    ),
    replies=(
        EventMessage("storageProgress", storage.STORAGE_PROGRESS, storage.StorageProgress),
        EventMessage("putCompleted", storage.STORAGE_PUT_COMPLETED, storage.PutCompleted),
        EventMessage("getCompleted", storage.STORAGE_GET_COMPLETED, storage.GetCompleted),
        EventMessage("headCompleted", storage.STORAGE_HEAD_COMPLETED, storage.HeadCompleted),
        EventMessage("listCompleted", storage.STORAGE_LIST_COMPLETED, storage.ListCompleted),
        EventMessage("deleteCompleted", storage.STORAGE_DELETE_COMPLETED, storage.DeleteCompleted),
        EventMessage("copyCompleted", storage.STORAGE_COPY_COMPLETED, storage.CopyCompleted),
        EventMessage(
            "presignCompleted", storage.STORAGE_PRESIGN_COMPLETED, storage.PresignCompleted
        ),
        EventMessage(
            "metadataUpdateCompleted",
            storage.STORAGE_METADATA_UPDATE_COMPLETED,
            storage.MetadataUpdateCompleted,
        ),
        EventMessage(
            "processCompleted", storage.STORAGE_PROCESS_COMPLETED, storage.ProcessCompleted
        ),
        EventMessage("storageFailed", storage.STORAGE_FAILED, storage.StorageFailed),
    ),
    extra=(
        ExtraChannel(
            name="storageEvents",
            address=storage.DEFAULT_STORAGE_EVENTS_TOPIC,
            description="Object events (created, deleted, metadata changed), keyed by"
            " `tenant/backend/key`, for consumers that react to new documents.",
            messages=(
                EventMessage("objectCreated", storage.STORAGE_OBJECT_CREATED, storage.ObjectEvent),
                EventMessage("objectDeleted", storage.STORAGE_OBJECT_DELETED, storage.ObjectEvent),
                EventMessage(
                    "objectMetadataChanged",
                    storage.STORAGE_OBJECT_METADATA_CHANGED,
                    storage.ObjectEvent,
                ),
            ),
            action="send",
        ),
    ),
)
"""Objects in the tenant's space on a storage backend (the storage_worker)."""

DOMAINS: tuple[RequestDomain, ...] = (LLM, MCP, STORAGE)
"""The domains whose workers exist (and the AsyncAPI document describes)."""
