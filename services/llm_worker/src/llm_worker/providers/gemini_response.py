"""Pure translation of Gemini's (`google-genai`) responses into Ferryman stream events.

`ResponseMapper` turns stream chunks or whole answers (candidate 0; thoughts skipped) into
text deltas, tool-call fragments (ids carry thought signatures, see `gemini_request`),
usage summed over continuation hops and one `Finish`. A blocked prompt and finish reasons
that mean the answer failed raise instead.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from google.genai import types

from ferryman.contracts import ErrorCode, FerrymanError, FinishReason
from llm_worker.chat.streaming import Finish, StreamEvent, TextDelta, ToolCallFragment, UsageReport
from llm_worker.providers.gemini_request import PROVIDER, join_tool_call_id

_FINISH_REASONS: dict[str, FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
    "MODEL_ARMOR": "content_filter",
}
"""Reasons not listed (OTHER, LANGUAGE, unspecified, new ones) count as `stop`."""

_FAILED_FINISH_REASONS: dict[str, tuple[ErrorCode, bool, str]] = {
    # The model produced nothing usable; the same request may well succeed again.
    "MALFORMED_FUNCTION_CALL": (ErrorCode.UNAVAILABLE, True, "a malformed function call"),
    "UNEXPECTED_TOOL_CALL": (ErrorCode.UNAVAILABLE, True, "an unexpected tool call"),
    "MALFORMED_RESPONSE": (ErrorCode.UNAVAILABLE, True, "a malformed response"),
    "TOO_MANY_TOOL_CALLS": (ErrorCode.UNAVAILABLE, True, "too many tool calls"),
    # The request lacked a thought signature a Gemini 3 model requires: resending will not help.
    "MISSING_THOUGHT_SIGNATURE": (
        ErrorCode.INVALID_REQUEST,
        False,
        "a request whose function calls lack their thought signatures",
    ),
}
"""Finish reasons that mean the answer failed: raised, never reported as a finished answer."""

CONTINUATION = "CONTINUATION"
"""Gemini paused a long answer; the next request resumes it with the continuation token."""


def _enum_name(value: Any) -> str | None:
    if value is None:
        return None
    return str(getattr(value, "value", value))


@dataclass
class _Tokens:
    input: int = 0
    output: int = 0
    cached: int | None = None
    reasoning: int | None = None

    def __add__(self, other: _Tokens) -> _Tokens:
        def plus(a: int | None, b: int | None) -> int | None:
            return None if a is None and b is None else (a or 0) + (b or 0)

        return _Tokens(
            self.input + other.input,
            self.output + other.output,
            plus(self.cached, other.cached),
            plus(self.reasoning, other.reasoning),
        )


def _tokens(usage: types.GenerateContentResponseUsageMetadata) -> _Tokens:
    # Ferryman counts like OpenAI: cached tokens are part of the input, reasoning tokens part
    # of the output. Gemini's prompt count already includes cached content; its candidates
    # count excludes thoughts (billed as output), and tool-use prompt tokens are billed input.
    thoughts = usage.thoughts_token_count
    return _Tokens(
        input=(usage.prompt_token_count or 0) + (usage.tool_use_prompt_token_count or 0),
        output=(usage.candidates_token_count or 0) + (thoughts or 0),
        cached=usage.cached_content_token_count,
        reasoning=thoughts,
    )


def blocked_prompt_error(feedback: types.GenerateContentResponsePromptFeedback) -> FerrymanError:
    """Return the `content_filter` error for a prompt Gemini refused to answer."""
    reason = _enum_name(feedback.block_reason) or "unspecified"
    blocked = [
        _enum_name(rating.category) or "unknown"
        for rating in feedback.safety_ratings or ()
        if rating.blocked
    ]
    message = f"Gemini blocked the prompt (block reason {reason})"
    if blocked:
        message += f"; blocked categories: {', '.join(blocked)}"
    return FerrymanError(ErrorCode.CONTENT_FILTER, message, retryable=False, upstream=PROVIDER)


class ResponseMapper:
    """Maps `GenerateContentResponse`s (stream chunks or whole answers) to stream events.

    One mapper serves one request, across continuation hops: tool-call indexes are
    stable (0, 1, 2… over the whole answer) and usage sums the hops.

    Args:
        id_prefix: prefix of the ids generated for calls Gemini gave no id
            (`call_<prefix><n>`); random by default, so ids stay unique in a conversation.
        cache_write_tokens: tokens of the cached content this call created (None: it
            created none). Reported as cache writes and added to the input: Gemini counts
            them as cached (read) prompt tokens of the call, and bills their creation too.
    """

    def __init__(
        self, *, id_prefix: str | None = None, cache_write_tokens: int | None = None
    ) -> None:
        self._id_prefix = id_prefix if id_prefix is not None else secrets.token_hex(6) + "_"
        self._written = cache_write_tokens
        self._calls = 0
        self._blocked: set[str] = set()
        self._finish: str | None = None
        self._model: str | None = None
        self._hops = _Tokens()
        self._hop_usage: _Tokens | None = None
        self._saw_usage = False
        self.continuation_token: bytes | None = None

    def events(self, response: types.GenerateContentResponse) -> list[StreamEvent]:
        """Return the events carried by one response (candidate 0 only; thoughts skipped).

        Raises:
            FerrymanError: `content_filter` when Gemini blocked the prompt.
        """
        feedback = response.prompt_feedback
        if feedback is not None and feedback.block_reason is not None:
            raise blocked_prompt_error(feedback)
        if response.model_version:
            self._model = response.model_version
        if response.usage_metadata is not None:
            # Each chunk carries the hop's running total: keep the latest.
            self._hop_usage = _tokens(response.usage_metadata)
            self._saw_usage = True
        out: list[StreamEvent] = []
        candidate = next((c for c in response.candidates or () if (c.index or 0) == 0), None)
        if candidate is None:
            return out
        for part in (candidate.content.parts if candidate.content else None) or ():
            if part.thought:
                continue
            if part.function_call is not None:
                out.append(self._fragment(part.function_call, part.thought_signature))
            elif part.text:
                out.append(TextDelta(text=part.text))
        if candidate.finish_reason is not None:
            self._finish = _enum_name(candidate.finish_reason)
        self._blocked.update(
            _enum_name(rating.category) or "unknown"
            for rating in candidate.safety_ratings or ()
            if rating.blocked
        )
        if candidate.continuation_token:
            self.continuation_token = candidate.continuation_token
        return out

    def _fragment(self, call: types.FunctionCall, signature: bytes | None) -> ToolCallFragment:
        index = self._calls
        self._calls += 1
        call_id = call.id or f"call_{self._id_prefix}{index}"
        return ToolCallFragment(
            index=index,
            id=join_tool_call_id(call_id, signature),
            name=call.name or "",
            arguments=json.dumps(call.args or {}, ensure_ascii=False),
        )

    def next_hop(self) -> bytes | None:
        """End a hop; return the continuation token when Gemini paused the answer to resume.

        The hop's finish reason and token are cleared so the next hop starts afresh.
        """
        token = self.continuation_token if self._finish == CONTINUATION else None
        if token is None:
            return None
        self._close_hop_usage()
        self._finish = None
        self.continuation_token = None
        return token

    def _close_hop_usage(self) -> None:
        if self._hop_usage is not None:
            self._hops = self._hops + self._hop_usage
            self._hop_usage = None

    def final_events(self) -> list[StreamEvent]:
        """Return usage (when reported) and `Finish` (only if Gemini finished the answer).

        Raises:
            FerrymanError: the finish reason says the answer failed (e.g. a malformed
                function call), or Gemini paused it and no continuation followed.
        """
        self._close_hop_usage()
        out: list[StreamEvent] = []
        if self._saw_usage:
            t = self._hops
            out.append(
                UsageReport(
                    input_tokens=t.input + (self._written or 0),
                    output_tokens=t.output,
                    cached_input_tokens=t.cached,
                    reasoning_tokens=t.reasoning,
                    cache_write_tokens=self._written,
                )
            )
        if self._finish is None:
            return out
        if self._finish == CONTINUATION:
            raise FerrymanError(
                ErrorCode.UNAVAILABLE,
                "Gemini paused the answer without a continuation token to resume it",
                retryable=True,
                upstream=PROVIDER,
            )
        if (failure := _FAILED_FINISH_REASONS.get(self._finish)) is not None:
            code, retryable, what = failure
            raise FerrymanError(
                code,
                f"Gemini ended the answer with {what} (finish reason {self._finish})",
                retryable=retryable,
                upstream=PROVIDER,
            )
        reason = _FINISH_REASONS.get(self._finish, "stop")
        if reason == "stop" and self._calls:
            reason = "tool_calls"
        categories = sorted(self._blocked) if reason == "content_filter" and self._blocked else None
        out.append(Finish(reason=reason, model=self._model, filtered_categories=categories))
        return out
