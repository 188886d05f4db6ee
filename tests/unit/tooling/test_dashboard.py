"""The fleet dashboard: generated from tools/dashboards/fleet.py without drift, well formed for
Grafana, every PromQL expression accepted by promtool and reading only listed families."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.unit.tooling.promql_names import (
    ROOT,
    families,
    family_of,
    metric_names_in,
    run_promtool,
)

GENERATOR = ROOT / "tools" / "dashboards" / "fleet.py"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "ferryman-fleet.json"
RULES = ROOT / "deploy" / "prometheus" / "ferryman.rules.yml"

# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
}


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ferryman_fleet_dashboard", GENERATOR)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def committed() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def exprs(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every query target."""
    return [
        (panel["title"], target["expr"])
        for panel in panels(board)
        for target in panel.get("targets", [])
    ]


def as_prometheus_sees_it(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return re.sub(r"\$\{?(\w+)\}?", r"placeholder_\1", expr)


def test_the_committed_json_is_what_the_generator_produces() -> None:
    fleet = load_generator()

    assert DASHBOARD.read_text() == fleet.render(), "stale dashboard: run make dashboards"
    assert fleet.main(["--check"]) == 0


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    fleet = load_generator()
    stale = tmp_path / "fleet.json"
    stale.write_text("{}\n")

    assert fleet.main(["--check", "--output", str(stale)]) == 1
    assert fleet.main(["--output", str(stale)]) == 0
    assert fleet.main(["--check", "--output", str(stale)]) == 0


def test_the_dashboard_is_well_formed_for_grafana() -> None:
    board = committed()
    ids = [panel["id"] for panel in panels(board)]
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}

    assert board["uid"] == "ferryman-fleet"
    assert len(ids) == len(set(ids))
    assert variables["datasource"]["type"] == "datasource"
    assert variables["service"]["multi"] is True
    assert variables["service"]["includeAll"] is True
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids, panel["title"]
        assert all(ref_ids), panel["title"]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_the_dashboard_covers_the_fleet_views_of_the_issue() -> None:
    used = {name for _, expr in exprs(committed()) for name in metric_names_in(expr)}

    assert {
        "ferryman_requests_total",
        "ferryman_request_duration_seconds_bucket",
        "gen_ai_client_operation_time_to_first_chunk_seconds_bucket",
        "ferryman_usage_tokens_total",
        "ferryman_usage_cost_usd_total",
        "llm_worker_tool_calls_total",
        "mcp_worker_server_restarts_total",
        "mcp_worker_server_up",
        "storage_worker_transferred_bytes_total",
        "ferryman_kafka_consumer_lag_messages",
        "ferryman_messages_dead_lettered_total",
        "ferryman_upstream_circuit_state",
        "ferryman_messages_in_flight",
        "ferryman_messages_in_flight_limit",
    } <= used


def test_every_expression_is_valid_promql(tmp_path: Path) -> None:
    board = committed()
    rules = [
        {"record": f"dashboard:check:{index}", "expr": as_prometheus_sees_it(expr)}
        for index, (_, expr) in enumerate(exprs(board))
    ]
    rule_file = tmp_path / "dashboard.rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))

    result = run_promtool("check", "rules", rule_file)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_promtool_would_catch_a_broken_expression(tmp_path: Path) -> None:
    broken = "histogram_quantile(0.95, sum by (le (rate(x_bucket[5m]))))"
    rule_file = tmp_path / "broken.rules.yml"
    rule_file.write_text(
        yaml.safe_dump({"groups": [{"name": "g", "rules": [{"record": "r:x", "expr": broken}]}]})
    )

    assert run_promtool("check", "rules", rule_file).returncode == 1


def test_every_metric_name_in_the_dashboard_and_variables_is_listed() -> None:
    board = committed()
    listed = families()
    queries = [expr for _, expr in exprs(board)]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["query"])
            assert inner, variable["query"]
            queries.append(inner.group(1))

    for expr in queries:
        for name in metric_names_in(expr):
            assert family_of(name, listed), f"{name} (in {expr!r}) is not listed"


@pytest.mark.parametrize("legend_label", ["service", "tenant", "upstream"])
def test_legends_name_labels_that_the_query_keeps(legend_label: str) -> None:
    for title, panel_targets in (
        (panel["title"], panel.get("targets", [])) for panel in panels(committed())
    ):
        for target in panel_targets:
            if "{{" + legend_label + "}}" in target["legendFormat"]:
                assert re.search(rf"by \([^)]*\b{legend_label}\b", target["expr"]), title
