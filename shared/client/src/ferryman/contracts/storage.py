"""Storage operations (the `data` of Ferryman's storage CloudEvents): the place the
storage_worker's request and reply models go. Only the topics are fixed so far."""

from typing import Final

DEFAULT_STORAGE_REQUEST_TOPIC: Final = "storage.requests"
DEFAULT_STORAGE_REPLY_TOPIC: Final = "storage.results"
