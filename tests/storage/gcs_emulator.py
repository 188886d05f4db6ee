"""gcp-storage-emulator (2026.7.19) for the tests, taught the two GCS features the storage
contract needs and it lacks, so the GCS backend is tested on what real GCS does:

- preconditions: `ifGenerationMatch` on uploads (media, multipart, resumable: checked when
  the session starts and with each chunk), rewrites, copies and metadata patches; the
  stock emulator ignores it, so every `if_absent` write would overwrite;
- paging: `maxResults` and `pageToken` on objects.list (entries and prefixes counted
  together, as GCS does); the stock emulator returns everything in one page;
- cancelling a resumable upload (`DELETE` on its session URI, answered 499); the stock
  emulator answers 501 and keeps the session, so its bucket cannot be deleted.

Everything else is the emulator's own code. The server is single-threaded, so a
precondition checked here holds until the write it guards is done (as GCS's atomic check).

Run: `python tests/storage/gcs_emulator.py <port>` (in memory, on 127.0.0.1).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from enum import IntEnum
from http import HTTPStatus
from typing import Any

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects
from gcp_storage_emulator.settings import UPLOAD_API_ENDPOINT
from gcp_storage_emulator.storage import RESUMABLE_DIR

Handler = Callable[..., Any]
Target = Callable[[Any, Any], "tuple[str, str] | None"]

_PRECONDITION_FAILED = {
    "error": {
        "code": 412,
        "message": "At least one of the pre-conditions you specified did not hold.",
        "errors": [{"domain": "global", "reason": "conditionNotMet", "message": "failed"}],
    }
}


def _generation(storage: Any, bucket: str, name: str) -> int:
    try:
        return int(storage.get_file_obj(bucket, name)["generation"])
    except NotFound:
        return 0


def _guarded(handler: Handler, target: Target) -> Handler:
    def handle(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> Any:
        wanted = request.query.get("ifGenerationMatch")
        written = target(request, storage) if wanted else None
        if written is not None and _generation(storage, *written) != int(wanted[0]):
            response.status = HTTPStatus.PRECONDITION_FAILED
            response.json(_PRECONDITION_FAILED)
            return None
        return handler(request, response, storage, *args, **kwargs)

    return handle


def _inserted(request: Any, storage: Any) -> tuple[str, str] | None:
    if "upload_id" in request.query:
        return _resumed(request, storage)
    name = (request.query.get("name") or [None])[0]
    data = request.data
    if name is None and isinstance(data, dict):
        meta: Any = data.get("meta", data)
        name = meta.get("name") if isinstance(meta, dict) else None
    return (request.params["bucket_name"], name) if name else None


def _resumed(request: Any, storage: Any) -> tuple[str, str] | None:
    try:
        found = storage.get_resumable_file_obj(request.query["upload_id"][0])
    except NotFound:
        return None
    return found["bucket"], found["name"]


def _destination(request: Any, storage: Any) -> tuple[str, str]:
    del storage
    return request.params["dest_bucket_name"], request.params["dest_object_id"]


def _patched(request: Any, storage: Any) -> tuple[str, str]:
    del storage
    return request.params["bucket_name"], request.params["object_id"]


def _paged(handler: Handler) -> Handler:
    def handle(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> Any:
        handler(request, response, storage, *args, **kwargs)
        if response.status != HTTPStatus.OK:
            return
        listing = json.loads(response._content)
        entries = sorted(
            [(item["name"], item) for item in listing.get("items") or []]
            + [(prefix, None) for prefix in listing.get("prefixes") or []],
            key=lambda entry: entry[0],
        )
        after = (request.query.get("pageToken") or [""])[0]
        entries = [entry for entry in entries if entry[0] > after]
        limit = int((request.query.get("maxResults") or ["1000"])[0])
        page, rest = entries[:limit], entries[limit:]
        answer: dict[str, Any] = {
            "kind": "storage#objects",
            "items": [item for _, item in page if item is not None],
            "prefixes": [name for name, item in page if item is None],
        }
        if rest:
            answer["nextPageToken"] = page[-1][0]
        response.json(answer)

    return handle


class _Cancelled(IntEnum):
    """GCS's answer to a cancelled upload (not an HTTP status `http` knows)."""

    CLIENT_CLOSED_REQUEST = 499

    @property
    def phrase(self) -> str:
        return "Client Closed Request"


def _cancel_upload(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> None:
    upload_id = (request.query.get("upload_id") or [""])[0]
    try:
        storage.delete_resumable_file_obj(upload_id)
    except NotFound:
        response.status = HTTPStatus.NOT_FOUND
        return
    storage._delete_file(RESUMABLE_DIR, storage.safe_id(upload_id))
    response.status = _Cancelled.CLIENT_CLOSED_REQUEST


def patch_emulator() -> None:
    """Teach the emulator's handlers preconditions and paging (in this process)."""
    replaced: dict[Handler, Handler] = {
        objects.insert: _guarded(objects.insert, _inserted),
        objects.upload_partial: _guarded(objects.upload_partial, _resumed),
        objects.rewrite: _guarded(objects.rewrite, _destination),
        objects.copy: _guarded(objects.copy, _destination),
        objects.patch: _guarded(objects.patch, _patched),
        objects.ls: _paged(objects.ls),
    }
    for _, handlers in server.HANDLERS:
        for method, handler in handlers.items():
            handlers[method] = replaced.get(handler, handler)
    objects.insert = replaced[objects.insert]  # the router's fallback for uploads
    uploads = f"^{UPLOAD_API_ENDPOINT}/b/(?P<bucket_name>[-.\\w]+)/o$"
    upload_handlers: dict[str, Handler] = next(
        handlers for pattern, handlers in server.HANDLERS if pattern == uploads
    )
    upload_handlers["DELETE"] = _cancel_upload


def main(port: int) -> None:
    logging.basicConfig(level=logging.CRITICAL)
    patch_emulator()
    server.create_server("127.0.0.1", port, in_memory=True).run()


if __name__ == "__main__":
    main(int(sys.argv[1]))
