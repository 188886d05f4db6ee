"""What the provider fakes need to play a multi-step tool loop: read the conversation.

A fake whose scenario has `tool_steps` answers turn k with the tool calls of
`tool_steps[k]`, where k is the number of tool rounds (assistant/model turns with tool
calls) the request's conversation already holds; past the script it gives the final
answer, which with `echo_tool_results` repeats the last round's results so a test can
assert the model received each one.

Each reader checks the conversation the way the real API does and says why that API
would answer 400; the fakes answer with the provider's own error body.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

S = TypeVar("S", bound="DataclassInstance")

ECHO_PREFIX = "tool results: "
ECHO_SEPARATOR = " | "


@dataclass
class Conversation:
    """What a fake needs to know about the conversation of one request."""

    rounds: int = 0
    """Assistant/model turns with tool calls: the index of the turn to play now."""
    last_results: list[str] | None = None
    """The plain text of the last round's results, in call order (None: no round yet)."""
    error: str | None = None
    """Why the real API would refuse the conversation (an HTTP 400)."""
    error_param: str | None = None
    """OpenAI's `error.param`: where the conversation went wrong."""


@dataclass(frozen=True)
class Turn:
    """The turn a scripted scenario plays for one request."""

    step: int
    """The turn's index k (0-based)."""
    calls: list[dict[str, str]] = field(default_factory=list)
    """The tool calls to make (`{"name", "arguments"}`); empty: the final answer."""
    echo: str | None = None
    """The final answer echoing the last round's results, when the scenario asks for it."""


def scripted_turn(
    tool_steps: list[list[dict[str, str]]], echo_tool_results: bool, conversation: Conversation
) -> Turn | None:
    """The turn to play, or None when the scenario scripts no tool loop (answer as before)."""
    if not tool_steps and not echo_tool_results:
        return None
    k = conversation.rounds
    if k < len(tool_steps):
        return Turn(step=k, calls=list(tool_steps[k]))
    echo = None
    if echo_tool_results and conversation.last_results is not None:
        echo = ECHO_PREFIX + ECHO_SEPARATOR.join(conversation.last_results)
    return Turn(step=k, echo=echo)


def play(
    scenario: S,
    conversation: Conversation,
    *,
    calls_field: str = "tool_calls",
    to_call: Callable[[dict[str, str]], Any] = lambda call: call,
) -> tuple[S, Turn | None]:
    """The fake's scenario for this turn of the conversation, and the scripted turn (if any).

    The scenario's delays are dropped for turns before its `delays_from_step`; a scripted turn
    replaces its `calls_field` (each call through `to_call`) and, for an echoing final answer,
    its `answer` (and `tokens`).
    """
    if conversation.rounds < getattr(scenario, "delays_from_step", 0):
        scenario = dataclasses.replace(
            scenario,
            delay_before_headers=0.0,
            first_token_delay=0.0,
            token_delay=0.0,
        )
    steps = getattr(scenario, "tool_steps", [])
    turn = scripted_turn(steps, getattr(scenario, "echo_tool_results", False), conversation)
    if turn is not None:
        changes: dict[str, Any] = {calls_field: [to_call(c) for c in turn.calls]}
        if turn.echo is not None:
            changes.update(answer=turn.echo, tokens=None)
        scenario = dataclasses.replace(scenario, **changes)
    return scenario, turn


def _texts(content: Any) -> str:
    """Plain text of a string or a list of text parts/blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    return "" if content is None else json.dumps(content, separators=(",", ":"))


# --- OpenAI chat completions -------------------------------------------------------------------


def openai_conversation(messages: list[dict[str, Any]]) -> Conversation:
    """Read OpenAI `messages`: each assistant `tool_calls` entry must be answered by a
    `role: tool` message right after it, and every tool message must answer such a call."""
    conversation = Conversation()
    pending: dict[str, None] = {}
    answered: dict[str, str] = {}
    order: list[str] = []
    for n, message in enumerate(messages):
        role = message.get("role")
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in pending:
                conversation.error = (
                    "Invalid parameter: messages with role 'tool' must be a response to a"
                    " preceeding message with 'tool_calls'."
                )
                conversation.error_param = f"messages.[{n}].role"
                return conversation
            del pending[call_id]
            answered[call_id] = _texts(message.get("content"))
            if not pending:
                conversation.last_results = [answered[i] for i in order]
            continue
        if pending:
            conversation.error = (
                "An assistant message with 'tool_calls' must be followed by tool messages"
                " responding to each 'tool_call_id'. The following tool_call_ids did not have"
                f" response messages: {', '.join(pending)}"
            )
            conversation.error_param = f"messages.[{n}].role"
            return conversation
        calls = (message.get("tool_calls") or []) if role == "assistant" else []
        if calls:
            conversation.rounds += 1
            order = [str(c.get("id")) for c in calls]
            pending = dict.fromkeys(order)
            answered = {}
    if pending:
        conversation.error = (
            "An assistant message with 'tool_calls' must be followed by tool messages"
            " responding to each 'tool_call_id'. The following tool_call_ids did not have"
            f" response messages: {', '.join(pending)}"
        )
        conversation.error_param = "messages"
    return conversation


# --- Anthropic Messages ------------------------------------------------------------------------


def _blocks(message: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    content = message.get("content")
    if not isinstance(content, list):
        return []
    return [b for b in content if isinstance(b, dict) and b.get("type") == kind]


def _tool_result_text(block: dict[str, Any]) -> str:
    text = _texts(block.get("content", ""))
    return f"error: {text}" if block.get("is_error") else text


def anthropic_conversation(messages: list[dict[str, Any]]) -> Conversation:
    """Read Anthropic `messages`: each assistant `tool_use` block needs a `tool_result` with its
    id in the very next (user) message, and every `tool_result` must answer such a block."""
    conversation = Conversation()
    for n, message in enumerate(messages):
        uses = _blocks(message, "tool_use") if message.get("role") == "assistant" else []
        results = _blocks(message, "tool_result") if message.get("role") == "user" else []
        previous = messages[n - 1] if n else {}
        asked = {
            str(b.get("id"))
            for b in (_blocks(previous, "tool_use") if previous.get("role") == "assistant" else [])
        }
        stray = [str(b.get("tool_use_id")) for b in results if b.get("tool_use_id") not in asked]
        if stray:
            conversation.error = (
                f"messages.{n}.content: unexpected `tool_use_id` found in `tool_result` blocks:"
                f" {', '.join(stray)}. Each `tool_result` block must have a corresponding"
                " `tool_use` block in the previous message."
            )
            return conversation
        if not uses:
            continue
        conversation.rounds += 1
        following = messages[n + 1] if n + 1 < len(messages) else {}
        given = {
            str(b.get("tool_use_id")): b
            for b in (_blocks(following, "tool_result") if following.get("role") == "user" else [])
        }
        missing = [str(b.get("id")) for b in uses if str(b.get("id")) not in given]
        if missing:
            conversation.error = (
                f"messages.{n + 1}: `tool_use` ids were found without `tool_result` blocks"
                f" immediately after: {', '.join(missing)}. Each `tool_use` block must have a"
                " corresponding `tool_result` block in the next message."
            )
            return conversation
        conversation.last_results = [_tool_result_text(given[str(b.get("id"))]) for b in uses]
    return conversation


# --- Gemini generateContent --------------------------------------------------------------------


def gemini_signature(step: int) -> str:
    """The thought signature (base64) the fake puts on the first function call of turn `step`."""
    return base64.b64encode(f"sig-{step}-0".encode()).decode()


def _signature_bytes(value: Any) -> bytes | None:
    if not isinstance(value, str):
        return None
    normal = value.replace("-", "+").replace("_", "/")  # the SDK sends URL-safe base64
    try:
        return base64.b64decode(normal + "=" * (-len(normal) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _field(part: dict[str, Any], camel: str, snake: str) -> Any:
    return part.get(camel, part.get(snake))


def _function_parts(content: dict[str, Any], camel: str, snake: str) -> list[dict[str, Any]]:
    return [p for p in content.get("parts") or () if _field(p, camel, snake) is not None]


def _response_text(response: Any) -> str:
    if isinstance(response, dict) and len(response) == 1:
        ((key, value),) = response.items()
        if isinstance(value, str) and key in ("result", "output"):
            return value
        if isinstance(value, str) and key == "error":
            return f"error: {value}"
    return json.dumps(response, separators=(",", ":"), ensure_ascii=False)


def gemini_conversation(contents: list[dict[str, Any]], *, signatures: bool) -> Conversation:
    """Read Gemini `contents`: each model turn of function calls needs as many function responses
    in the next user turn; with `signatures` (a Gemini 3 model) the first function call of each
    step of the current turn must carry back the fake's thought signature for that step."""
    conversation = Conversation()
    current_turn = 0  # Gemini validates signatures from the last user turn with text on
    for n, content in enumerate(contents):
        if content.get("role", "user") == "user" and any(
            "text" in p for p in content.get("parts") or ()
        ):
            current_turn = n
    for n, content in enumerate(contents):
        calls = _function_parts(content, "functionCall", "function_call")
        if content.get("role") != "model" or not calls:
            continue
        step = conversation.rounds
        conversation.rounds += 1
        if signatures and n > current_turn:
            sent = _field(calls[0], "thoughtSignature", "thought_signature")
            name = _field(calls[0], "functionCall", "function_call").get("name")
            position = content["parts"].index(calls[0]) + 1
            if sent is None:
                conversation.error = (
                    "Function call is missing a thought_signature in functionCall parts. This is"
                    " required for tools to work correctly, and missing thought_signature may"
                    " lead to degraded model performance. Additional data, function call"
                    f" `default_api:{name}` , position {position}. Please refer to"
                    " https://ai.google.dev/gemini-api/docs/thought-signatures for more details."
                )
                return conversation
            if _signature_bytes(sent) != _signature_bytes(gemini_signature(step)):
                conversation.error = (
                    f"Corrupted thought signature in function call `default_api:{name}`,"
                    f" position {position}."
                )
                return conversation
        following = contents[n + 1] if n + 1 < len(contents) else {}
        responses = (
            _function_parts(following, "functionResponse", "function_response")
            if following.get("role", "user") == "user"
            else []
        )
        if len(responses) != len(calls):
            conversation.error = (
                "Please ensure that the number of function response parts is equal to the number"
                " of function call parts of the function call turn."
            )
            return conversation
        conversation.last_results = _results_in_call_order(calls, responses)
    return conversation


def _results_in_call_order(
    calls: list[dict[str, Any]], responses: list[dict[str, Any]]
) -> list[str]:
    bodies = [_field(r, "functionResponse", "function_response") for r in responses]
    by_id = {b.get("id"): b for b in bodies if b.get("id")}
    out: list[str] = []
    for i, part in enumerate(calls):
        call_id = _field(part, "functionCall", "function_call").get("id")
        body = by_id.get(call_id) if call_id else None
        out.append(_response_text((body or bodies[i]).get("response")))
    return out
