"""The AsyncAPI 3.0 document of Ferryman's events, generated from the contract models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ferryman.contracts import events as ev
from ferryman.contracts.health import HealthReport
from ferryman.contracts.llm import ChatChunk, ChatCompleted, ChatFailed, ChatRequest, ChatRestarted

_REF = "#/components/schemas/{model}"


def _header(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


_REQUEST_HEADERS: dict[str, Any] = {
    "type": "object",
    "description": "CloudEvents 1.0 binary mode (ce_* headers). Structured mode is also "
    "accepted: content-type application/cloudevents+json and the whole event as the value.",
    "required": ["ce_id", "ce_source", "ce_specversion", "ce_type"],
    "properties": {
        "ce_id": _header("Request id; (ce_source, ce_id) identifies the request."),
        "ce_source": _header("Producer URI-reference."),
        "ce_specversion": _header("CloudEvents version.", const="1.0"),
        "ce_type": _header("Event type.", const=ev.LLM_CHAT_REQUESTED),
        "content-type": _header("Data content type.", const="application/json"),
        "ce_replyto": _header("Reply topic.", default=ev.DEFAULT_LLM_REPLY_TOPIC),
        "ce_partitionkey": _header("Partitioning key (CloudEvents partitioning extension)."),
        "ce_expirytime": _header("RFC 3339; work does not start after it.", format="date-time"),
        "ce_traceparent": _header("W3C trace context, echoed on results."),
        "ce_tracestate": _header("W3C trace state, echoed on results."),
        "ce_tenant": _header("Tenant of the request, echoed on results."),
    },
}


def _result_headers(event_type: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "CloudEvents 1.0 binary mode; the Kafka key is the request's ce_id.",
        "required": ["ce_id", "ce_source", "ce_specversion", "ce_type", "ce_correlationid"],
        "properties": {
            "ce_id": _header("Id of this result event."),
            "ce_source": _header("The worker that produced it, /ferryman/llm-worker/<instance>."),
            "ce_specversion": _header("CloudEvents version.", const="1.0"),
            "ce_type": _header("Event type.", const=event_type),
            "ce_correlationid": _header("The request's ce_id."),
            "content-type": _header("Data content type.", const="application/json"),
        },
    }


_HEALTH_HEADERS: dict[str, Any] = {
    "type": "object",
    "description": "CloudEvents 1.0 binary mode; the Kafka key is the reporting instance.",
    "required": ["ce_id", "ce_source", "ce_specversion", "ce_type"],
    "properties": {
        "ce_id": _header("Id of this report."),
        "ce_source": _header("The reporting worker."),
        "ce_specversion": _header("CloudEvents version.", const="1.0"),
        "ce_type": _header("Event type.", const=ev.HEALTH_REPORTED),
        "ce_time": _header("When the report was made.", format="date-time"),
        "content-type": _header("Data content type.", const="application/json"),
    },
}

_DLQ_HEADERS: dict[str, Any] = {
    "type": "object",
    "description": "The original record's key, value and headers byte for byte, plus these.",
    "properties": {name: _header(name) for name in ev.DLQ_HEADERS},
}


def _message(name: str, title: str, headers: dict[str, Any], payload: Any) -> dict[str, Any]:
    return {
        "name": name,
        "title": title,
        "contentType": "application/json",
        "headers": headers,
        "payload": payload,
    }


def build_asyncapi(version: str = "0.1.0") -> dict[str, Any]:
    """Return the AsyncAPI 3.0 document as a JSON-able dict."""
    schemas: dict[str, Any] = {}
    payloads: dict[str, Any] = {}
    models: list[type[BaseModel]] = [
        ChatRequest,
        ChatChunk,
        ChatRestarted,
        ChatCompleted,
        ChatFailed,
        HealthReport,
    ]
    for model in models:
        schema = model.model_json_schema(ref_template=_REF, by_alias=True)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        payloads[model.__name__] = {"$ref": _REF.format(model=model.__name__)}
    messages = {
        "chatRequested": _message(
            "chatRequested", ev.LLM_CHAT_REQUESTED, _REQUEST_HEADERS, payloads["ChatRequest"]
        ),
        "chatChunk": _message(
            "chatChunk",
            ev.LLM_CHAT_CHUNK,
            _result_headers(ev.LLM_CHAT_CHUNK),
            payloads["ChatChunk"],
        ),
        "chatRestarted": _message(
            "chatRestarted",
            ev.LLM_CHAT_RESTARTED,
            _result_headers(ev.LLM_CHAT_RESTARTED),
            payloads["ChatRestarted"],
        ),
        "chatCompleted": _message(
            "chatCompleted",
            ev.LLM_CHAT_COMPLETED,
            _result_headers(ev.LLM_CHAT_COMPLETED),
            payloads["ChatCompleted"],
        ),
        "chatFailed": _message(
            "chatFailed",
            ev.LLM_CHAT_FAILED,
            _result_headers(ev.LLM_CHAT_FAILED),
            payloads["ChatFailed"],
        ),
        "healthReported": _message(
            "healthReported", ev.HEALTH_REPORTED, _HEALTH_HEADERS, payloads["HealthReport"]
        ),
        "deadLetter": {
            "name": "deadLetter",
            "title": "Dead-lettered request record",
            "headers": _DLQ_HEADERS,
            "payload": {"description": "The original bytes."},
        },
    }

    def refs(*names: str) -> dict[str, Any]:
        return {n: {"$ref": f"#/components/messages/{n}"} for n in names}

    results = ("chatChunk", "chatRestarted", "chatCompleted", "chatFailed")

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Ferryman events",
            "version": version,
            "description": "Chat requests in, streamed chunks and one terminal event out, "
            "through Kafka; workers' health reports on their own topic. Generated from "
            "ferryman.contracts; do not edit by hand.",
        },
        "defaultContentType": "application/json",
        "channels": {
            "llmRequests": {
                "address": ev.DEFAULT_LLM_REQUEST_TOPIC,
                "messages": refs("chatRequested"),
            },
            "llmResults": {
                "address": ev.DEFAULT_LLM_REPLY_TOPIC,
                "description": "Or the topic named by the request's replyto extension.",
                "messages": refs(*results),
            },
            "llmDeadLetters": {
                "address": ev.dlq_topic_for(ev.DEFAULT_LLM_REQUEST_TOPIC),
                "messages": refs("deadLetter"),
            },
            "health": {
                "address": ev.DEFAULT_HEALTH_TOPIC,
                "description": "Each worker replica's periodic view of its deployments.",
                "messages": refs("healthReported"),
            },
        },
        "operations": {
            "consumeChatRequests": {
                "action": "receive",
                "channel": {"$ref": "#/channels/llmRequests"},
                "messages": [{"$ref": "#/channels/llmRequests/messages/chatRequested"}],
            },
            "publishChatResults": {
                "action": "send",
                "channel": {"$ref": "#/channels/llmResults"},
                "messages": [{"$ref": f"#/channels/llmResults/messages/{n}"} for n in results],
            },
            "publishDeadLetters": {
                "action": "send",
                "channel": {"$ref": "#/channels/llmDeadLetters"},
                "messages": [{"$ref": "#/channels/llmDeadLetters/messages/deadLetter"}],
            },
            "publishHealthReports": {
                "action": "send",
                "channel": {"$ref": "#/channels/health"},
                "messages": [{"$ref": "#/channels/health/messages/healthReported"}],
            },
        },
        "components": {"messages": messages, "schemas": schemas},
    }
