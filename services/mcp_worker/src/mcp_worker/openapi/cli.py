"""`ferryman openapi …` (a `ferryman.commands` plugin of the mcp_worker): what tools an
OpenAPI document becomes, and whether a new version breaks the old one, without Kafka.

    ferryman openapi inspect SPEC [--json]   # the tools, with warnings for what is unsupported
    ferryman openapi diff OLD NEW [--json]   # the compatibility report; exit 1 when breaking
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from mcp_worker.openapi.auth import unsupported_schemes
from mcp_worker.openapi.compat import compare
from mcp_worker.openapi.operations import api_tools
from mcp_worker.openapi.spec import ApiSpec, load_spec

EXIT_BREAKING = 1
EXIT_INVALID = 2


class OpenApiCommand:
    """The `openapi` command."""

    help = "inspect an OpenAPI document as tools, or diff two versions (exit 1 if breaking)"

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self._out = out
        self._err = err

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add `inspect` and `diff` to the command's parser."""
        actions = parser.add_subparsers(dest="openapi_command", required=True)
        inspect = actions.add_parser("inspect", help="the tools a document becomes")
        inspect.add_argument("spec", type=Path, help="OpenAPI 3.0/3.1 document (JSON or YAML)")
        inspect.add_argument("--json", action="store_true", help="print the tools as JSON")
        diff = actions.add_parser("diff", help="what changed between two versions")
        diff.add_argument("old", type=Path)
        diff.add_argument("new", type=Path)
        diff.add_argument("--json", action="store_true", help="print the report as JSON")

    def run(self, args: argparse.Namespace) -> int:
        """Run `inspect` or `diff`; 2 for an unreadable or invalid document."""
        out, err = self._out or sys.stdout, self._err or sys.stderr
        try:
            if args.openapi_command == "inspect":
                return self._inspect(_load(args.spec), args.json, out, err)
            return self._diff(_load(args.old), _load(args.new), args.json, out)
        except (OSError, ValueError) as exc:
            print(f"ferryman openapi: {exc}", file=err)
            return EXIT_INVALID

    def _inspect(self, spec: ApiSpec, as_json: bool, out: TextIO, err: TextIO) -> int:
        tools = api_tools(spec)
        components: dict[str, Any] = spec.document.get("components") or {}
        warnings = [*tools.warnings, *unsupported_schemes(components.get("securitySchemes") or {})]
        if as_json:
            listing: dict[str, Any] = {
                "title": spec.title,
                "version": spec.version,
                "digest": spec.digest,
                "tools": [_tool_json(tool) for tool in tools.tools],
                "warnings": warnings,
            }
            out.write(json.dumps(listing, indent=2) + "\n")
            return 0
        out.write(f"{spec.title} {spec.version} ({spec.openapi}, sha256 {spec.digest[:12]})\n")
        for tool in tools.tools:
            hints = "read-only" if tool.read_only else "idempotent" if tool.idempotent else ""
            out.write(f"  {tool.name:<32} {tool.method.upper():<7} {tool.path}  {hints}\n")
        for warning in warnings:
            err.write(f"warning: {warning}\n")
        return 0

    def _diff(self, old: ApiSpec, new: ApiSpec, as_json: bool, out: TextIO) -> int:
        report = compare(old, new)
        if as_json:
            entries = [dataclasses.asdict(entry) for entry in report.entries]
            body = {"breaking": report.breaking, "entries": entries}
            out.write(json.dumps(body, indent=2) + "\n")
        else:
            out.write(f"{old.version} -> {new.version}: ")
            out.write("BREAKING\n" if report.breaking else "compatible\n")
            for entry in report.entries:
                mark = "!" if entry.breaking else "+"
                out.write(f"  {mark} {entry.operation}: {entry.kind}: {entry.detail}\n")
        return EXIT_BREAKING if report.breaking else 0


def _load(path: Path) -> ApiSpec:
    return load_spec(path.read_bytes(), source=path.name, base_dir=path.parent)


def _tool_json(tool: Any) -> dict[str, Any]:
    return {
        "name": tool.name,
        "method": tool.method,
        "path": tool.path,
        "description": tool.description,
        "read_only": tool.read_only,
        "idempotent": tool.idempotent,
        "input_schema": tool.input_schema,
        "output_schema": tool.output_schema,
    }


command = OpenApiCommand()
"""The `ferryman.commands` entry point."""
