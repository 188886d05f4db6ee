"""The mcp_worker's control events: cancels and tool approvals, decoded for their
callbacks (the topic is read by the runtime's `ControlReader`)."""

from __future__ import annotations

from collections.abc import Callable

from ferryman.codec import IncomingEvent
from ferryman.contracts.mcp import (
    MCP_CANCEL_REQUESTED,
    MCP_TOOL_APPROVED,
    CancelRequest,
    ToolApproval,
)


def control_handlers(
    on_cancel: Callable[[CancelRequest], None],
    on_approval: Callable[[ToolApproval], None],
) -> dict[str, Callable[[IncomingEvent], None]]:
    """The `ControlReader` handlers of the mcp_worker's control events.

    Each raises `pydantic.ValidationError` for invalid event data (the reader logs and
    skips the event).
    """

    def cancel(event: IncomingEvent) -> None:
        on_cancel(CancelRequest.model_validate(event.data))

    def approval(event: IncomingEvent) -> None:
        on_approval(ToolApproval.model_validate(event.data))

    return {MCP_CANCEL_REQUESTED: cancel, MCP_TOOL_APPROVED: approval}
