"""The `ferryman` command line: chat through the bus, inspect and replay dead letters."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence

from ferryman.client import ChatFailedError, FerrymanClient, request_from_prompt
from ferryman.contracts import (
    DEFAULT_LLM_REPLY_TOPIC,
    DEFAULT_LLM_REQUEST_TOPIC,
    ChatCompleted,
    ChatRestarted,
)
from ferryman.contracts import events as ev
from ferryman.contracts.asyncapi import build_asyncapi
from ferryman.dlq import DeadLetter, read_dead_letters, replay
from ferryman.publisher import KafkaPublisher

DEFAULT_BOOTSTRAP_SERVERS = "127.0.0.1:9092"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferryman", description=__doc__)
    parser.add_argument(
        "--bootstrap-servers", help="Kafka brokers (default: $KAFKA_BOOTSTRAP_SERVERS)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    chat = commands.add_parser("chat", help="send a prompt and print the answer as it streams")
    chat.add_argument("prompt")
    chat.add_argument("--model", default="mock/echo", help="alias or provider/model")
    chat.add_argument("--no-stream", action="store_true", help="ask for the completed result only")
    chat.add_argument("--request-topic", default=DEFAULT_LLM_REQUEST_TOPIC)
    chat.add_argument("--reply-topic", default=DEFAULT_LLM_REPLY_TOPIC)
    chat.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the result")
    chat.add_argument("--json", action="store_true", help="print the completed event as JSON")

    dlq = commands.add_parser("dlq", help="inspect and replay a dead-letter topic")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    listing = dlq_commands.add_parser("list", help="one line per dead letter")
    listing.add_argument("topic")
    show = dlq_commands.add_parser("show", help="print one dead letter in full")
    show.add_argument("topic")
    show.add_argument("--partition", type=int, default=None, help="default: any partition")
    show.add_argument("--offset", type=int, required=True)
    again = dlq_commands.add_parser("replay", help="republish dead letters to their original topic")
    again.add_argument("topic")
    again.add_argument("--partition", type=int, default=None)
    again.add_argument("--offset", type=int, default=None, help="only this offset (default: all)")
    spec = commands.add_parser("asyncapi", help="print the AsyncAPI document of the events")
    spec.add_argument("--output", help="write to this file instead of stdout")
    return parser


def _asyncapi(args: argparse.Namespace) -> int:
    document = json.dumps(build_asyncapi(), indent=2, sort_keys=True) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(document)
    else:
        sys.stdout.write(document)
    return 0


async def _chat(servers: str, args: argparse.Namespace) -> int:
    request = request_from_prompt(args.prompt, model=args.model, stream=not args.no_stream)
    async with FerrymanClient(
        servers, request_topic=args.request_topic, reply_topic=args.reply_topic
    ) as client:
        try:
            async for event in client.chat_stream(request, timeout=args.timeout):
                if isinstance(event, ChatCompleted):
                    if args.json:
                        print(event.model_dump_json(indent=2))
                    else:
                        if args.no_stream:
                            print(event.content, end="")
                        print()
                        usage = event.usage
                        print(
                            f"[{event.provider}/{event.model} · {event.finish_reason} · "
                            f"{usage.input_tokens} in / {usage.output_tokens} out · "
                            f"{event.latency_ms.total:.0f} ms]",
                            file=sys.stderr,
                        )
                    for call in event.tool_calls:
                        print(f"tool call {call.id}: {call.name}({call.arguments})")
                elif isinstance(event, ChatRestarted):
                    if not args.json:
                        print(
                            f"\n[restarted on {event.deployment}: {event.reason.code.value}; "
                            f"discarding {event.discarded_chunks} chunks]",
                            file=sys.stderr,
                        )
                elif event.delta.content and not args.json:
                    print(event.delta.content, end="", flush=True)
        except ChatFailedError as exc:
            print(f"\nfailed: {exc}", file=sys.stderr)
            return 1
        except TimeoutError:
            print(f"\nno result within {args.timeout:.0f}s (is a worker running?)", file=sys.stderr)
            return 2
    return 0


def _summary(letter: DeadLetter) -> str:
    return (
        f"{letter.partition}/{letter.offset}\t{letter.header(ev.DLQ_REASON)}\t"
        f"{letter.header(ev.DLQ_ERROR_TYPE)}\tfrom {letter.header(ev.DLQ_ORIGINAL_TOPIC)}/"
        f"{letter.header(ev.DLQ_ORIGINAL_PARTITION)}/{letter.header(ev.DLQ_ORIGINAL_OFFSET)}\t"
        f"ce_id={letter.header('ce_id')}\t{(letter.header(ev.DLQ_ERROR_MESSAGE) or '')[:120]}"
    )


def _show(letter: DeadLetter) -> str:
    def text(raw: bytes | None) -> str | None:
        return None if raw is None else raw.decode("utf-8", errors="backslashreplace")

    return json.dumps(
        {
            "location": letter.location,
            "key": text(letter.key),
            "headers": [[k, text(v)] for k, v in letter.headers],
            "value": text(letter.value),
        },
        indent=2,
    )


async def _dlq(servers: str, args: argparse.Namespace) -> int:
    matched = 0
    publisher: KafkaPublisher | None = None
    try:
        async for letter in read_dead_letters(servers, args.topic):
            if args.dlq_command == "list":
                print(_summary(letter))
                matched += 1
                continue
            if args.partition is not None and letter.partition != args.partition:
                continue
            if args.offset is not None and letter.offset != args.offset:
                continue
            matched += 1
            if args.dlq_command == "show":
                print(_show(letter))
            else:
                if publisher is None:
                    publisher = KafkaPublisher(servers, client_id="ferryman-cli")
                    await publisher.start()
                target = await replay(publisher, letter)
                print(f"replayed {letter.location} -> {target}")
    except LookupError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    finally:
        if publisher is not None:
            await publisher.stop()
    if matched == 0 and args.dlq_command != "list":
        print("no matching dead letter", file=sys.stderr)
        return 1
    if args.dlq_command == "list":
        print(f"{matched} dead letter(s)", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    args = _parser().parse_args(argv)
    if args.command == "asyncapi":
        return _asyncapi(args)
    servers = args.bootstrap_servers or os.environ.get(
        "KAFKA_BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP_SERVERS
    )
    runner = _chat if args.command == "chat" else _dlq
    try:
        return asyncio.run(runner(servers, args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
