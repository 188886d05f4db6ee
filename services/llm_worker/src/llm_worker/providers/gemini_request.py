"""Pure translation of a Ferryman `ChatRequest` into Gemini's (`google-genai`) request types.

A `ChatRequest` becomes `contents` plus a `GenerateContentConfig`:

- system messages → `system_instruction`;
- user text and images (`data:` URLs → `inline_data`, `http(s)` URLs → `file_data`);
- assistant text and tool calls → a `model` turn with `text` and `function_call` parts;
- tool messages → `function_response` parts of one `user` turn per run of tool messages;
- tools → `function_declarations` (`parameters_json_schema`), `tool_choice` → `tool_config`;
- sampling, stop sequences, JSON mode / JSON Schema output, safety settings.

Responses are mapped back to stream events by `gemini_response`.

Thought signatures: Gemini attaches an opaque `thought_signature` to function-call
parts that must come back verbatim on the next turn. Ferryman's tool call has
only `id`, `name` and `arguments`, so the signature travels in the id:
``"{call_id}~ts~{signature}"``, the signature as unpadded URL-safe base64 (which
never contains `~`). `split_tool_call_id` undoes it; other adapters that receive
Gemini-made ids in a conversation can use it to strip the suffix.

Safety settings: a deployment default (harm category → threshold) merged with a
per-request override, a JSON object string in `metadata["gemini_safety"]`, e.g.
``{"HARM_CATEGORY_HARASSMENT": "BLOCK_ONLY_HIGH"}``. Names are the SDK's
`HarmCategory` / `HarmBlockThreshold` names; unknown names are invalid requests.
"""

from __future__ import annotations

import base64
import binascii
import json
import mimetypes
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.genai import types

from ferryman.contracts import ChatRequest, ErrorCode, FerrymanError
from ferryman.contracts.llm import (
    AssistantMessage,
    DataRefPart,
    ImagePart,
    NamedToolChoice,
    SystemMessage,
    TextPart,
    ToolCall,
    ToolMessage,
    UserMessage,
)
from llm_worker.providers.tool_ids import SIGNATURE_SEPARATOR

PROVIDER = "gemini"

SAFETY_METADATA_KEY = "gemini_safety"
"""`metadata` key of the per-request safety override (a JSON object string)."""

_B64URL = re.compile(r"[A-Za-z0-9_-]+")

_IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".heic": "image/heic",
    ".heif": "image/heif",
}
_DEFAULT_IMAGE_TYPE = "image/jpeg"


def _invalid(message: str) -> FerrymanError:
    return FerrymanError(ErrorCode.INVALID_REQUEST, message, retryable=False, upstream=PROVIDER)


# --- thought signatures in tool-call ids ----------------------------------------------------


def join_tool_call_id(call_id: str, signature: bytes | None) -> str:
    """Return the Ferryman tool-call id carrying `signature` (the id alone when there is none)."""
    if not signature:
        return call_id
    encoded = base64.urlsafe_b64encode(signature).decode("ascii").rstrip("=")
    return f"{call_id}{SIGNATURE_SEPARATOR}{encoded}"


def split_tool_call_id(tool_call_id: str) -> tuple[str, bytes | None]:
    """Return `(call id, thought signature or None)` from a Ferryman tool-call id.

    Raises:
        FerrymanError: `invalid_request` when the signature suffix is not valid base64.
    """
    call_id, sep, encoded = tool_call_id.rpartition(SIGNATURE_SEPARATOR)
    if not sep:
        return tool_call_id, None
    if not _B64URL.fullmatch(encoded) or len(encoded) % 4 == 1:
        raise _invalid(f"tool call id {tool_call_id[:80]!r} has a corrupt thought signature")
    try:
        signature = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError) as exc:
        raise _invalid(
            f"tool call id {tool_call_id[:80]!r} has a corrupt thought signature"
        ) from exc
    return call_id, signature


# --- safety settings ------------------------------------------------------------------------


def parse_safety_settings(settings: Mapping[str, str], *, source: str) -> dict[str, str]:
    """Validate and normalise harm category → threshold names (upper-cased SDK enum names).

    Raises:
        ValueError: a category or threshold is unknown (the message names `source`).
    """
    categories = {c.name for c in types.HarmCategory} - {"HARM_CATEGORY_UNSPECIFIED"}
    thresholds = {t.name for t in types.HarmBlockThreshold} - {"HARM_BLOCK_THRESHOLD_UNSPECIFIED"}
    out: dict[str, str] = {}
    for raw_category, raw_threshold in settings.items():
        if not isinstance(raw_category, str) or not isinstance(raw_threshold, str):
            raise ValueError(f"{source}: categories and thresholds must be strings")
        category, threshold = raw_category.strip().upper(), raw_threshold.strip().upper()
        if category not in categories:
            raise ValueError(
                f"{source}: unknown harm category {raw_category!r}"
                f" (known: {', '.join(sorted(categories))})"
            )
        if threshold not in thresholds:
            raise ValueError(
                f"{source}: unknown block threshold {raw_threshold!r}"
                f" (known: {', '.join(sorted(thresholds))})"
            )
        out[category] = threshold
    return out


def safety_settings_for(
    request: ChatRequest, default: Mapping[str, str] | None
) -> list[types.SafetySetting] | None:
    """Merge the deployment's safety settings with the request's `metadata["gemini_safety"]`.

    Raises:
        FerrymanError: `invalid_request` when the override is not a JSON object of known names.
    """
    merged = dict(default or {})
    raw = (request.metadata or {}).get(SAFETY_METADATA_KEY)
    if raw is not None:
        try:
            override = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise _invalid(f"metadata[{SAFETY_METADATA_KEY!r}] is not valid JSON") from exc
        if not isinstance(override, dict):
            raise _invalid(
                f"metadata[{SAFETY_METADATA_KEY!r}] must be a JSON object of harm category"
                " → threshold"
            )
        try:
            merged.update(
                parse_safety_settings(override, source=f"metadata[{SAFETY_METADATA_KEY!r}]")
            )
        except ValueError as exc:
            raise _invalid(str(exc)) from exc
    if not merged:
        return None
    return [
        types.SafetySetting(
            category=types.HarmCategory[category],
            threshold=types.HarmBlockThreshold[threshold],
        )
        for category, threshold in merged.items()
    ]


# --- request --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeminiRequest:
    """A translated request: what `generate_content(_stream)` takes, plus where each
    Ferryman message ended up (to split off a cached prefix, see `gemini_prefix`)."""

    contents: list[types.Content]
    config: types.GenerateContentConfig
    message_ends: list[int]
    """For message i of the request, how many `contents` hold everything up to and
    including it (a tool message's whole run of results counts: they share one turn)."""


def to_gemini_request(
    request: ChatRequest, *, safety_settings: Mapping[str, str] | None = None
) -> tuple[list[types.Content], types.GenerateContentConfig]:
    """Return `(contents, config)` for `generate_content(_stream)`.

    Args:
        request: the chat request.
        safety_settings: the deployment's validated defaults (see `parse_safety_settings`).

    Raises:
        FerrymanError: `invalid_request` for what Gemini cannot express (bad tool-call JSON,
            a tool result answering no earlier call, a malformed image URL, bad safety names).
    """
    translated = translate_request(request, safety_settings=safety_settings)
    return translated.contents, translated.config


def translate_request(
    request: ChatRequest, *, safety_settings: Mapping[str, str] | None = None
) -> GeminiRequest:
    """Translate `request` like `to_gemini_request`, keeping the message boundaries.

    Raises:
        FerrymanError: as `to_gemini_request`.
    """
    system: list[types.Part] = []
    contents: list[types.Content] = []
    pending_results: list[types.Part] = []
    call_names: dict[str, str] = {}
    ends: list[int] = []

    def flush_results() -> None:
        if pending_results:
            contents.append(types.Content(role="user", parts=list(pending_results)))
            pending_results.clear()

    for message in request.messages:
        if isinstance(message, ToolMessage):
            pending_results.append(_function_response(message, call_names))
        else:
            flush_results()
        if isinstance(message, SystemMessage):
            system.extend(types.Part(text=text) for text in _texts(message.content))
        elif isinstance(message, UserMessage):
            contents.append(types.Content(role="user", parts=_user_parts(message)))
        elif isinstance(message, AssistantMessage):
            parts = [types.Part(text=text) for text in _texts(message.content) if text]
            for call in message.tool_calls or ():
                part, call_id = _function_call(call)
                call_names[call_id] = call.function.name
                parts.append(part)
            if parts:
                contents.append(types.Content(role="model", parts=parts))
        ends.append(len(contents) + (1 if pending_results else 0))
    flush_results()
    return GeminiRequest(contents, _config(request, system, safety_settings), ends)


def _texts(content: str | list[TextPart] | None) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    return [part.text for part in content]


def _user_parts(message: UserMessage) -> list[types.Part]:
    if isinstance(message.content, str):
        return [types.Part(text=message.content)]
    parts: list[types.Part] = []
    for part in message.content:
        if isinstance(part, ImagePart):
            parts.append(_image_part(part.image_url.url))
        elif isinstance(part, DataRefPart):  # the chat service resolves them before any call
            raise _invalid("a dataref part reached the provider unresolved")
        else:
            parts.append(types.Part(text=part.text))
    return parts


def _image_part(url: str) -> types.Part:
    scheme = url.split(":", 1)[0].lower()
    if scheme == "data":
        mime_type, data = _parse_data_url(url)
        return types.Part(inline_data=types.Blob(data=data, mime_type=mime_type))
    if scheme in ("http", "https"):
        return types.Part(file_data=types.FileData(file_uri=url, mime_type=_guess_mime(url)))
    raise _invalid(f"image URLs must be data: or http(s): URLs, got a {scheme!r} URL")


def _parse_data_url(url: str) -> tuple[str, bytes]:
    header, sep, payload = url[len("data:") :].partition(",")
    if not sep:
        raise _invalid("a data: URL needs a ',' before its data")
    params = [p.strip() for p in header.split(";")]
    mime_type = params[0].lower()
    if not mime_type or "/" not in mime_type:
        raise _invalid("a data: URL needs a media type (e.g. data:image/png;base64,...)")
    if "base64" in (p.lower() for p in params[1:]):
        try:
            data = base64.b64decode(urllib.parse.unquote(payload), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _invalid("a data: URL has invalid base64 data") from exc
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    return mime_type, data


def _guess_mime(url: str) -> str:
    path = urllib.parse.urlsplit(url).path.lower()
    dot = path.rfind(".")
    if dot != -1 and (known := _IMAGE_TYPES.get(path[dot:])) is not None:
        return known
    guessed, _ = mimetypes.guess_type(path)
    return guessed or _DEFAULT_IMAGE_TYPE


def _function_call(call: ToolCall) -> tuple[types.Part, str]:
    call_id, signature = split_tool_call_id(call.id)
    raw = call.function.arguments
    try:
        args = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as exc:
        raise _invalid(
            f"tool call {call_id[:80]!r} ({call.function.name}) has arguments that are not JSON"
        ) from exc
    if not isinstance(args, dict):
        raise _invalid(
            f"tool call {call_id[:80]!r} ({call.function.name}) has arguments that are not"
            " a JSON object"
        )
    part = types.Part(
        function_call=types.FunctionCall(id=call_id, name=call.function.name, args=args),
        thought_signature=signature,
    )
    return part, call_id


def _function_response(message: ToolMessage, call_names: Mapping[str, str]) -> types.Part:
    call_id, _ = split_tool_call_id(message.tool_call_id)
    name = call_names.get(call_id)
    if name is None:
        raise _invalid(
            f"tool message answers tool call {call_id[:80]!r}, which no earlier assistant"
            " message made (Gemini needs the function's name)"
        )
    text = "".join(_texts(message.content))
    response: dict[str, Any] | None = None
    if text.lstrip().startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            response = parsed
    return types.Part(
        function_response=types.FunctionResponse(
            id=call_id, name=name, response=response if response is not None else {"result": text}
        )
    )


def _config(
    request: ChatRequest,
    system: list[types.Part],
    safety_settings: Mapping[str, str] | None,
) -> types.GenerateContentConfig:
    stop = [request.stop] if isinstance(request.stop, str) else request.stop
    config = types.GenerateContentConfig(
        system_instruction=types.Content(parts=system) if system else None,
        temperature=request.temperature,
        top_p=request.top_p,
        max_output_tokens=request.max_tokens,
        stop_sequences=stop,
        safety_settings=safety_settings_for(request, safety_settings),
        # Tools are declarations only: the SDK must never try to call anything itself.
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        # The SDK would otherwise resume paused answers itself and silently reconnect
        # dropped streams; the adapter follows continuation tokens explicitly instead.
        automatic_continuation=False,
    )
    format_ = request.response_format
    if format_ is not None and format_.type == "json_object":
        config.response_mime_type = "application/json"
    elif format_ is not None and format_.type == "json_schema":
        config.response_mime_type = "application/json"
        config.response_json_schema = format_.json_schema.json_schema
    if tools := request.function_tools():
        config.tools = [
            types.Tool(
                function_declarations=[
                    types.FunctionDeclaration(
                        name=tool.function.name,
                        description=tool.function.description,
                        parameters_json_schema=tool.function.parameters,
                    )
                    for tool in tools
                ]
            )
        ]
        if request.tool_choice is not None:
            config.tool_config = types.ToolConfig(
                function_calling_config=_function_calling_config(request.tool_choice)
            )
    return config


def _function_calling_config(choice: str | NamedToolChoice) -> types.FunctionCallingConfig:
    if isinstance(choice, NamedToolChoice):
        return types.FunctionCallingConfig(
            mode=types.FunctionCallingConfigMode.ANY,
            allowed_function_names=[choice.function.name],
        )
    mode = {
        "auto": types.FunctionCallingConfigMode.AUTO,
        "none": types.FunctionCallingConfigMode.NONE,
        "required": types.FunctionCallingConfigMode.ANY,
    }[choice]
    return types.FunctionCallingConfig(mode=mode)
