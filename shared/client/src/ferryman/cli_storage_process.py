"""`ferryman storage process KEY PIPELINE`: run one of the worker's pipelines on an object
(progress by step on stderr; the derived objects and facts on stdout, or with `--text` the
text the `extract_text` step extracted)."""

from __future__ import annotations

import argparse
import sys

from ferryman.cli_storage_format import describe_progress, object_line
from ferryman.client import RunRestarted
from ferryman.contracts.storage import ProcessCompleted, ProcessRequest, StorageProgress
from ferryman.storage_client import StorageClient
from ferryman.storage_requests import StorageFailedError

TEXT_STEP = "extract_text"


def add_process_arguments(process: argparse.ArgumentParser) -> None:
    """The `process` subcommand's own arguments."""
    process.add_argument("key")
    process.add_argument(
        "pipeline", help="a pipeline of the worker's policy (built in: text, thumbnail)"
    )
    process.add_argument(
        "--force", action="store_true", help="run again even when current outputs exist"
    )
    process.add_argument(
        "--text",
        action="store_true",
        help=f"print the text the {TEXT_STEP} step extracted (instead of the outputs)",
    )
    process.add_argument("--json", action="store_true", help="print the completed event as JSON")


def validate_process(args: argparse.Namespace) -> None:
    """Check the request before connecting.

    Raises:
        pydantic.ValidationError: a malformed key, backend or pipeline name.
    """
    ProcessRequest(key=args.key, backend=args.backend, pipeline=args.pipeline)


async def process_command(client: StorageClient, args: argparse.Namespace) -> int:
    """Run the pipeline; print its outcome.

    Raises:
        StorageFailedError: the pipeline failed (its step named in the message), or the
            extracted text could not be read.
    """
    stream = client.process_stream(
        args.key,
        args.pipeline,
        force=args.force,
        backend=args.backend,
        tenant=args.tenant,
        timeout=args.timeout,
    )
    completed: ProcessCompleted | None = None
    try:
        async for event in stream:
            if isinstance(event, StorageProgress):
                print(describe_progress(event), file=sys.stderr, flush=True)
            elif isinstance(event, RunRestarted):
                print(f"[the request runs again (run {event.run_id})]", file=sys.stderr)
            else:
                completed = event
    except StorageFailedError as exc:
        step = getattr(exc.failed, "step", None)
        if step is not None:
            print(f"step {step} failed", file=sys.stderr)
        raise
    assert completed is not None  # the stream ends with its terminal event or raises
    if args.text:
        return await _print_text(client, completed, args)
    if args.json:
        print(completed.model_dump_json(indent=2))
        return 0
    reused = " (outputs reused)" if completed.reused else ""
    print(f"{completed.pipeline} on {object_line(completed.source)}{reused}")
    for output in completed.outputs:
        step = output.lineage.step if output.lineage else "?"
        print(f"  {step}: {object_line(output)}")
    for name, value in sorted(completed.facts.items()):
        print(f"  {name} = {value}")
    return 0


async def _print_text(
    client: StorageClient, completed: ProcessCompleted, args: argparse.Namespace
) -> int:
    texts = [o for o in completed.outputs if o.lineage and o.lineage.step == TEXT_STEP]
    if not texts:
        print(f"pipeline {completed.pipeline} has no {TEXT_STEP} step", file=sys.stderr)
        return 2
    data = await client.get_bytes(
        texts[0].key, backend=texts[0].backend, tenant=args.tenant, timeout=args.timeout
    )
    text = data.decode("utf-8", errors="replace")
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()
    return 0
