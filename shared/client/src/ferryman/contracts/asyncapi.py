"""The AsyncAPI 3.0 document of Ferryman's events, generated from the domain registry."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from ferryman.contracts import events as ev
from ferryman.contracts.channels import RequestDomain
from ferryman.contracts.health import HealthReport
from ferryman.contracts.registry import DOMAINS
from ferryman.contracts.usage import USAGE_RECORDED, USAGE_TOPIC, UsageEvent

_REF = "#/components/schemas/{model}"


def _header(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _request_headers(domain: RequestDomain, event_type: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "CloudEvents 1.0 binary mode (ce_* headers). Structured mode is also "
        "accepted: content-type application/cloudevents+json and the whole event as the value.",
        "required": ["ce_id", "ce_source", "ce_specversion", "ce_type"],
        "properties": {
            "ce_id": _header("Request id (required); (ce_source, ce_id) identifies the request."),
            "ce_source": _header("Producer URI-reference."),
            "ce_specversion": _header("CloudEvents version.", const="1.0"),
            "ce_type": _header("Event type.", const=event_type),
            "content-type": _header("Data content type.", const="application/json"),
            "ce_replyto": _header(
                "Reply topic; must match the worker's allowed reply topics.",
                default=domain.reply_topic,
            ),
            "ce_partitionkey": _header("Partitioning key (CloudEvents partitioning extension)."),
            "ce_expirytime": _header("RFC 3339; work does not start after it.", format="date-time"),
            "ce_traceparent": _header("W3C trace context, echoed on replies."),
            "ce_tracestate": _header("W3C trace state, echoed on replies."),
            "ce_tenant": _header("Tenant of the request, echoed on replies."),
            "ce_replytoken": _header("A secret of the requester's, echoed on replies."),
        },
    }


def _reply_headers(event_type: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "CloudEvents 1.0 binary mode; the Kafka key is the request's ce_id.",
        "required": [
            "ce_id",
            "ce_source",
            "ce_specversion",
            "ce_type",
            "ce_correlationid",
            "ce_runid",
        ],
        "properties": {
            "ce_id": _header("Id of this reply event: <ce_runid>.<sequence within the run>."),
            "ce_source": _header("The worker that produced it, /ferryman/<worker>/<instance>."),
            "ce_specversion": _header("CloudEvents version.", const="1.0"),
            "ce_type": _header("Event type.", const=event_type),
            "ce_correlationid": _header("The request's ce_id."),
            "ce_runid": _header(
                "The execution that produced the event. A redelivered request runs again under "
                "a new run id; run ids of one request sort in the order runs started. Follow the "
                "greatest run id seen and discard what earlier runs published."
            ),
            "ce_replytoken": _header("The request's reply token, when it had one."),
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

_USAGE_HEADERS: dict[str, Any] = {
    "type": "object",
    "description": "CloudEvents 1.0 binary mode; the Kafka key is the tenant, or the request "
    "id when there is no tenant.",
    "required": ["ce_id", "ce_source", "ce_specversion", "ce_type"],
    "properties": {
        "ce_id": _header("Id of this usage record."),
        "ce_source": _header("The worker that finished the request."),
        "ce_specversion": _header("CloudEvents version.", const="1.0"),
        "ce_type": _header("Event type.", const=USAGE_RECORDED),
        "ce_time": _header("When the request finished.", format="date-time"),
        "content-type": _header("Data content type.", const="application/json"),
    },
}

_DLQ_HEADERS: dict[str, Any] = {
    "type": "object",
    "description": "The original record's key, value and headers byte for byte, plus these.",
    "properties": {name: _header(name) for name in ev.DLQ_HEADERS},
}


def _message(name: str, title: str, headers: dict[str, Any], payload: str) -> dict[str, Any]:
    return {
        "name": name,
        "title": title,
        "contentType": "application/json",
        "headers": headers,
        "payload": {"$ref": _REF.format(model=payload)},
    }


def _schemas(models: Iterable[type[BaseModel]]) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=_REF, by_alias=True)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def _refs(*names: str) -> dict[str, Any]:
    return {n: {"$ref": f"#/components/messages/{n}"} for n in names}


def _operation(action: str, channel: str, names: Iterable[str]) -> dict[str, Any]:
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "messages": [{"$ref": f"#/channels/{channel}/messages/{n}"} for n in names],
    }


def _add_domain(domain: RequestDomain, document: dict[str, Any]) -> None:
    messages, channels, operations = (
        document["components"]["messages"],
        document["channels"],
        document["operations"],
    )
    for event in domain.requests:
        messages[event.name] = _message(
            event.name,
            event.event_type,
            _request_headers(domain, event.event_type),
            event.payload.__name__,
        )
    for event in domain.replies:
        messages[event.name] = _message(
            event.name, event.event_type, _reply_headers(event.event_type), event.payload.__name__
        )
    requests = [e.name for e in domain.requests]
    replies = [e.name for e in domain.replies]
    prefix, title = domain.name, domain.name[:1].upper() + domain.name[1:]
    channels[f"{prefix}Requests"] = {"address": domain.request_topic, "messages": _refs(*requests)}
    channels[f"{prefix}Results"] = {
        "address": domain.reply_topic,
        "description": "Or the topic named by the request's replyto extension.",
        "messages": _refs(*replies),
    }
    channels[f"{prefix}DeadLetters"] = {
        "address": ev.dlq_topic_for(domain.request_topic),
        "messages": _refs("deadLetter"),
    }
    operations[f"consume{title}Requests"] = _operation("receive", f"{prefix}Requests", requests)
    operations[f"publish{title}Results"] = _operation("send", f"{prefix}Results", replies)
    operations[f"publish{title}DeadLetters"] = _operation(
        "send", f"{prefix}DeadLetters", ["deadLetter"]
    )
    for channel in domain.extra:
        for event in channel.messages:
            messages[event.name] = _message(
                event.name,
                event.event_type,
                _reply_headers(event.event_type)
                if channel.action == "send"
                else _request_headers(domain, event.event_type),
                event.payload.__name__,
            )
        names = [e.name for e in channel.messages]
        channels[channel.name] = {
            "address": channel.address,
            "description": channel.description,
            "messages": _refs(*names),
        }
        verb = "consume" if channel.action == "receive" else "publish"
        operations[f"{verb}{channel.name[:1].upper()}{channel.name[1:]}"] = _operation(
            channel.action, channel.name, names
        )


def build_asyncapi(
    version: str = "0.1.0", domains: Iterable[RequestDomain] = DOMAINS
) -> dict[str, Any]:
    """Return the AsyncAPI 3.0 document of `domains` (every registered one by default)."""
    domains = list(domains)
    models = [
        e.payload
        for d in domains
        for e in (*d.requests, *d.replies, *(m for c in d.extra for m in c.messages))
    ]
    document: dict[str, Any] = {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Ferryman events",
            "version": version,
            "description": "Requests in, streamed progress and one terminal event out, through "
            "Kafka; workers' health reports on their own topic. Generated from "
            "ferryman.contracts.registry; do not edit by hand.",
        },
        "defaultContentType": "application/json",
        "channels": {
            "health": {
                "address": ev.DEFAULT_HEALTH_TOPIC,
                "description": "Each worker replica's periodic view of its upstreams.",
                "messages": _refs("healthReported"),
            },
            "usage": {
                "address": USAGE_TOPIC,
                "description": "One record per finished request: who, what, tokens, cost, "
                "latency and outcome (docs/usage.md).",
                "messages": _refs("usageRecorded"),
            },
        },
        "operations": {
            "publishHealthReports": _operation("send", "health", ["healthReported"]),
            "publishUsageRecords": _operation("send", "usage", ["usageRecorded"]),
        },
        "components": {
            "messages": {
                "healthReported": _message(
                    "healthReported", ev.HEALTH_REPORTED, _HEALTH_HEADERS, "HealthReport"
                ),
                "usageRecorded": _message(
                    "usageRecorded", USAGE_RECORDED, _USAGE_HEADERS, "UsageEvent"
                ),
                "deadLetter": {
                    "name": "deadLetter",
                    "title": "Dead-lettered request record",
                    "headers": _DLQ_HEADERS,
                    "payload": {"description": "The original bytes."},
                },
            },
            "schemas": _schemas([*models, HealthReport, UsageEvent]),
        },
    }
    for domain in domains:
        _add_domain(domain, document)
    return document
