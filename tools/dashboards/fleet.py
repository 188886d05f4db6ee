"""Generates the Grafana fleet dashboard, deploy/grafana/dashboards/ferryman-fleet.json.

    uv run --frozen python tools/dashboards/fleet.py            # (re)write the JSON
    uv run --frozen python tools/dashboards/fleet.py --check    # exit 1 if it is stale

(`make dashboards` runs the first.) The JSON is committed so Grafana can provision it
without Python; tests/unit/tooling/test_dashboard.py regenerates it and fails when the
committed file differs, and checks every expression with promtool. Metric names come from
deploy/prometheus/metric_names.txt. Built with grafana-foundation-sdk for Grafana 11.6.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    ValueMap,
    ValueMappingResult,
    VariableRefresh,
    VariableSort,
)

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "deploy" / "grafana" / "dashboards" / "ferryman-fleet.json"
UID = "ferryman-fleet"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
SERVICE = 'service=~"$service"'
RATE = "[$__rate_interval]"
MCP = 'service="mcp_worker"'
FAILED = 'outcome="failed"'
NOT_COMPLETED = 'outcome!~"completed|cancelled"'

Panel = timeseries.Panel | stat.Panel | statetimeline.Panel


def query(expr: str, legend: str, ref_id: str = "A") -> prometheus.Dataquery:
    """A Prometheus range query on the dashboard's datasource."""
    return (
        prometheus.Dataquery()
        .expr(expr)
        .legend_format(legend)
        .ref_id(ref_id)
        .datasource(DATASOURCE)
    )


def series(
    title: str, unit: str, *targets: prometheus.Dataquery, description: str = ""
) -> timeseries.Panel:
    """A time series panel with one or more queries (ref ids A, B, … in order)."""
    panel = (
        timeseries.Panel().title(title).unit(unit).datasource(DATASOURCE).description(description)
    )
    for target in targets:
        panel = panel.with_target(target)
    return panel


def rate(family: str, *matchers: str, fn: str = "rate") -> str:
    """`rate(family{matchers}[$__rate_interval])` (or another range function)."""
    return f"{fn}({family}{{{','.join(matchers)}}}{RATE})"


def ratio(numerator: str, denominator: str) -> str:
    return f"{numerator}\n/\n{denominator}"


def quantile(q: float, family: str, by: str, selector: str = SERVICE) -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({family}_bucket{{{selector}}}{RATE})))"


def overview() -> list[Panel]:
    requests = f"ferryman_requests_total{{{SERVICE}}}"
    return [
        stat.Panel()
        .title("Replicas up")
        .datasource(DATASOURCE)
        .with_target(query(f"sum by (service) (up{{{SERVICE}}})", "{{service}}"))
        .description("Scraped worker replicas per service (Prometheus `up`)."),
        stat.Panel()
        .title("Replicas ready")
        .datasource(DATASOURCE)
        .with_target(query(f"sum by (service) (ferryman_worker_ready{{{SERVICE}}})", "{{service}}"))
        .description("Replicas whose `/health` says ready (in their consumer group)."),
        series(
            "Requests per second",
            "reqps",
            query(
                f"sum by (service, operation) (rate({requests}{RATE}))",
                "{{service}} {{operation}}",
            ),
        ),
        series(
            "Error ratio",
            "percentunit",
            query(
                ratio(
                    "sum by (service, operation) "
                    + f"({rate('ferryman_requests_total', SERVICE, NOT_COMPLETED)})",
                    f"sum by (service, operation) (rate({requests}{RATE}))",
                ),
                "{{service}} {{operation}}",
            ),
            description="Requests that ended `failed` (any error code) over all finished requests.",
        ),
        series(
            "Latency p50 / p95",
            "s",
            query(
                quantile(0.5, "ferryman_request_duration_seconds", "service, operation"),
                "p50 {{service}} {{operation}}",
            ),
            query(
                quantile(0.95, "ferryman_request_duration_seconds", "service, operation"),
                "p95 {{service}} {{operation}}",
                "B",
            ),
            description="From a request's start to its terminal event.",
        ),
        series(
            "In flight vs limit",
            "short",
            query(
                f"sum by (service) (ferryman_messages_in_flight{{{SERVICE}}})",
                "in flight {{service}}",
            ),
            query(
                f"sum by (service) (ferryman_messages_in_flight_limit{{{SERVICE}}})",
                "limit {{service}}",
                "B",
            ),
            description="Records being processed against max_in_flight summed over replicas.",
        ),
    ]


def llm() -> list[Panel]:
    return [
        series(
            "Time to first chunk p95 per model",
            "s",
            query(
                quantile(
                    0.95,
                    "gen_ai_client_operation_time_to_first_chunk_seconds",
                    "gen_ai_request_model",
                ),
                "{{gen_ai_request_model}}",
            ),
            description="Streaming provider calls: call start to first chunk.",
        ),
        series(
            "Tokens per second per tenant",
            "short",
            query(
                "sum by (tenant, gen_ai_token_type) "
                + f"({rate('ferryman_usage_tokens_total', SERVICE)})",
                "{{tenant}} {{gen_ai_token_type}}",
            ),
        ),
        series(
            "Cost per tenant (USD/h)",
            "currencyUSD",
            query(
                f"sum by (tenant) (rate(ferryman_usage_cost_usd_total{{{SERVICE}}}{RATE})) * 3600",
                "{{tenant}}",
            ),
            description="From the price table; `other` gathers tenants past the label budget.",
        ),
        series(
            "Tool calls",
            "reqps",
            query(
                'sum by (server, outcome) (rate(llm_worker_tool_calls_total{service=~"$service"}'
                f"{RATE}))",
                "loop {{server}} {{outcome}}",
            ),
            query(
                'sum by (target, outcome) (rate(ferryman_requests_total{service="mcp_worker",'
                f'operation="tool"}}{RATE}))',
                "mcp {{target}} {{outcome}}",
                "B",
            ),
            description="Tool calls of the LLM tool loop, and tool requests the mcp_worker served.",
        ),
    ]


def upstreams() -> list[Panel]:
    circuit_values = ValueMap(
        options={
            "0": ValueMappingResult(text="closed", color="green"),
            "1": ValueMappingResult(text="half-open", color="yellow"),
            "2": ValueMappingResult(text="open", color="red"),
        }
    )
    calls = "ferryman_upstream_calls_total"
    return [
        statetimeline.Panel()
        .title("Circuit state")
        .datasource(DATASOURCE)
        .mappings([circuit_values])
        .with_target(
            query(
                f"max by (service, upstream) (ferryman_upstream_circuit_state{{{SERVICE}}})",
                "{{service}} {{upstream}}",
            )
        ),
        series(
            "Upstream failure ratio",
            "percentunit",
            query(
                ratio(
                    "sum by (service, upstream) " + f"({rate(calls, SERVICE, FAILED)})",
                    f"sum by (service, upstream) ({rate(calls, SERVICE)})",
                ),
                "{{service}} {{upstream}}",
            ),
        ),
        series(
            "MCP servers up",
            "short",
            query('sum by (server) (mcp_worker_server_up{service="mcp_worker"})', "{{server}}"),
            description="Replicas with the server's session up.",
        ),
        series(
            "MCP server restarts",
            "short",
            query(
                "sum by (server) "
                + f"({rate('mcp_worker_server_restarts_total', MCP, fn='increase')})",
                "{{server}}",
            ),
        ),
        series(
            "Storage traffic",
            "Bps",
            query(
                "sum by (backend, direction) (rate(storage_worker_transferred_bytes_total"
                f'{{service="storage_worker"}}{RATE}))',
                "{{backend}} {{direction}}",
            ),
        ),
    ]


def kafka() -> list[Panel]:
    return [
        series(
            "Consumer lag per partition",
            "short",
            query(
                "sum by (service, messaging_destination_name, messaging_destination_partition_id) "
                f"(ferryman_kafka_consumer_lag_messages{{{SERVICE}}})",
                "{{messaging_destination_name}}[{{messaging_destination_partition_id}}]",
            ),
            description="Records not committed yet (in flight plus unfetched): KEDA scales on it.",
        ),
        series(
            "Dead letters",
            "short",
            query(
                "sum by (service, reason) "
                + f"({rate('ferryman_messages_dead_lettered_total', SERVICE, fn='increase')})",
                "{{service}} {{reason}}",
            ),
            description="`ferryman dlq list <topic>.dlq` shows them.",
        ),
        series(
            "Consumed per second",
            "short",
            query(
                "sum by (service, messaging_destination_name) "
                f"(rate(messaging_client_consumed_messages_total{{{SERVICE}}}{RATE}))",
                "{{service}} {{messaging_destination_name}}",
            ),
        ),
        series(
            "Consumer paused",
            "short",
            query(f"sum by (service) (ferryman_consumer_paused{{{SERVICE}}})", "{{service}}"),
            description="Replicas paused at their in-flight limit.",
        ),
    ]


def sized(panel: Panel) -> Panel:
    """Stats four to a row, graphs two to a row; the SDK places them left to right."""
    if isinstance(panel, stat.Panel):
        return panel.span(6).height(4)
    return panel.span(12).height(8)


def build() -> dict[str, Any]:
    """The dashboard as a JSON-ready dict."""
    board = (
        dashboard.Dashboard("Ferryman fleet")
        .uid(UID)
        .tags(["ferryman"])
        .description(
            "Requests, latency, tokens and cost, tools, storage, Kafka lag and dead letters "
            "of every Ferryman worker."
        )
        .editable()
        .time("now-6h", "now")
        .refresh("30s")
        .with_variable(
            dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
        .with_variable(
            dashboard.QueryVariable("service")
            .label("Service")
            .datasource(DATASOURCE)
            .query('label_values(up{service=~"llm_worker|mcp_worker|storage_worker"}, service)')
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    )
    panel_id = 1
    for title, panels in (
        ("Overview", overview()),
        ("LLM: models, tokens, cost, tools", llm()),
        ("Upstreams, MCP servers and storage", upstreams()),
        ("Kafka", kafka()),
    ):
        board = board.with_row(dashboard.Row(title).id(panel_id))
        panel_id += 1
        for panel in panels:
            board = board.with_panel(sized(panel).id(panel_id))
            panel_id += 1
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))


def render() -> str:
    """The dashboard's JSON text, as committed."""
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the Grafana fleet dashboard JSON.")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the committed JSON is stale"
    )
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run make dashboards", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
