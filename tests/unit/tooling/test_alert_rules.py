"""deploy/prometheus/*.rules.yml: valid for promtool, unit-tested with `promtool test rules`,
every alert annotated with a runbook that exists, every metric name a listed one."""

from __future__ import annotations

import re
from pathlib import Path
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

RULES = ROOT / "deploy" / "prometheus" / "ferryman.rules.yml"
LEGACY_RULES = ROOT / "deploy" / "prometheus" / "legacy.rules.yml"
RULE_TESTS = ROOT / "tests" / "ops" / "ferryman.rules.test.yml"
LEGACY_TESTS = ROOT / "tests" / "ops" / "legacy.rules.test.yml"
OPERATIONS = ROOT / "docs" / "operations.md"

DESIGNED_ALERTS = {
    "FerrymanWorkerDown", "FerrymanServiceAbsent", "FerrymanConsumerLagGrowing",
    "FerrymanConsumerStalled", "FerrymanDeadLetters", "FerrymanUpstreamErrorRate",
    "FerrymanCircuitOpenLong", "McpServerRestartLoop", "FerrymanQuotaExhausted",
    "LlmQuotaBackpressure", "StorageErrors", "TenantUsageSpike", "FerrymanConsumerSaturated",
    "FerrymanConfigRejected", "FerrymanUsageEventsDropped", "LlmTimeToFirstChunkHigh",
}  # fmt: skip


def rules_of(path: Path) -> list[dict[str, Any]]:
    document = yaml.safe_load(path.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules_of(RULES) if "alert" in rule]


def github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub derives from headings: lowercased, punctuation dropped, spaces → '-'."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#+\s+(.+)$", markdown, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


@pytest.mark.parametrize("path", [RULES, LEGACY_RULES], ids=lambda p: p.name)
def test_promtool_accepts_the_rule_file(path: Path) -> None:
    result = run_promtool("check", "rules", path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("path", [RULE_TESTS, LEGACY_TESTS], ids=lambda p: p.name)
def test_promtool_unit_tests_of_the_rules_pass(path: Path) -> None:
    result = run_promtool("test", "rules", path)

    assert result.returncode == 0, result.stdout + result.stderr


def test_the_unit_tests_fail_when_an_alert_threshold_is_broken(tmp_path: Path) -> None:
    """The rule tests are not vacuous: loosening one threshold makes them fail."""
    broken = RULES.read_text().replace(
        "sum by (service, upstream) (rate(ferryman_upstream_calls_total[5m])) > 0.2",
        "sum by (service, upstream) (rate(ferryman_upstream_calls_total[5m])) > 0.05",
    )
    assert broken != RULES.read_text()
    (tmp_path / "ferryman.rules.yml").write_text(broken)
    tests = yaml.safe_load(RULE_TESTS.read_text())
    tests["rule_files"] = ["ferryman.rules.yml"]
    tests["tests"] = [t for t in tests["tests"] if "UpstreamErrorRate" in t.get("name", "")]
    (tmp_path / "rules.test.yml").write_text(yaml.safe_dump(tests))

    result = run_promtool("test", "rules", tmp_path / "rules.test.yml")

    assert result.returncode == 1
    assert "FerrymanUpstreamErrorRate" in result.stdout + result.stderr


def test_every_designed_alert_exists_with_severity_summary_description_and_runbook() -> None:
    anchors = github_anchors(OPERATIONS.read_text())

    assert {rule["alert"] for rule in alerts()} == DESIGNED_ALERTS
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert {"summary", "description", "runbook_url"} <= rule["annotations"].keys(), name
        page, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert (page, anchor) == ("docs/operations.md", f"alert-{name.lower()}")
        assert anchor in anchors, f"docs/operations.md has no heading for {anchor}"


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    groups = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for group in groups:
        for case in group.get("alert_rule_test", []):
            (fires if case["exp_alerts"] else quiet).add(case["alertname"])

    assert fires == DESIGNED_ALERTS
    assert quiet == DESIGNED_ALERTS


@pytest.mark.parametrize("path", [RULES, LEGACY_RULES], ids=lambda p: p.name)
def test_rules_only_read_listed_metric_families(path: Path) -> None:
    listed = families()
    recorded = {rule["record"] for rule in rules_of(RULES) if "record" in rule}

    for rule in rules_of(path):
        for name in metric_names_in(rule["expr"]):
            assert name in recorded or family_of(name, listed), (
                f"{rule.get('alert') or rule.get('record')} reads {name}, "
                "which deploy/prometheus/metric_names.txt does not list"
            )


def test_the_metric_name_extractor_finds_names_and_skips_functions_labels_and_keywords() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, model) (rate(a_seconds_bucket{x="y:z"}[5m])))'
        ' > 1e3 and on (tenant) b_total offset 1d or absent(c{service="s"} == 1) * 0'
    )

    assert metric_names_in(expr) == {"a_seconds_bucket", "b_total", "c"}


def test_the_operations_page_documents_every_metric_family() -> None:
    page = OPERATIONS.read_text()

    missing = [name for name in families() if name != "up" and f"`{name}`" not in page]
    assert missing == []


def test_links_from_deploy_files_to_the_operations_page_resolve() -> None:
    anchors = github_anchors(OPERATIONS.read_text())
    linked = {
        anchor
        for path in (ROOT / "deploy").rglob("*")
        if path.is_file() and path.suffix in {".yml", ".yaml", ".txt"}
        for anchor in re.findall(r"operations\.md#([\w-]+)", path.read_text())
    }

    assert linked
    assert linked - anchors == set()
