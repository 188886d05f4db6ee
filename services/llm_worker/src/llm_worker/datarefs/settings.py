"""Settings of dataref resolution (`LLM_WORKER_STORAGE__<FIELD>`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_STORAGE_REPLY_TOPIC = "llm.storage.results"


class DataRefSettings(BaseModel):
    """How the worker reaches the storage_worker to resolve `dataref` content parts.

    Resolution is off until `request_topic` is set (for example
    `LLM_WORKER_STORAGE__REQUEST_TOPIC=storage.requests`): a request with datarefs then
    fails `invalid_request`.
    """

    model_config = ConfigDict(extra="forbid")

    request_topic: str | None = None
    """The storage_worker's request topic (None: datarefs are refused)."""
    reply_topic: str = DEFAULT_STORAGE_REPLY_TOPIC
    """Where the storage_worker's replies to this worker come (created at start with the
    worker's other topics; it must be one of the storage_worker's accepted reply topics)."""
    timeout: float = Field(default=30.0, gt=0)
    """Seconds one storage request (head, get, presign) may take, within the chat request's
    deadline."""
    process_timeout: float = Field(default=120.0, gt=0)
    """Seconds the text pipeline may take on one object, within the chat request's deadline."""
    text_pipeline: str = Field(default="text", pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    """The storage pipeline that extracts text from documents that are not text already."""
    text_step: str = "extract_text"
    """The step of `text_pipeline` whose output (`lineage.step`) is the text."""
    text_max_chars: int = Field(default=100_000, ge=100)
    """Characters of one object's text given to the model at most (the rest is cut, and
    said)."""
    image_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    """Bytes of one image sent inline (as a `data:` URL) at most; larger ones fail
    `too_large`."""
    image_delivery: Literal["auto", "inline"] = "auto"
    """`auto`: presigned URLs for providers that fetch image URLs (OpenAI, Azure, Anthropic)
    when the object's backend signs them, the bytes otherwise; `inline`: always the bytes
    (when the storage's URLs are not reachable from the providers, e.g. a local backend
    signing URLs on an internal address)."""
    image_url_expires_in: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    """Seconds a presigned image URL given to a provider stays valid at least (until the
    request's deadline when that is later)."""
    max_refs: int = Field(default=16, ge=1)
    """Datarefs one chat request may hold."""

    @property
    def enabled(self) -> bool:
        """Whether datarefs are resolved."""
        return self.request_topic is not None
