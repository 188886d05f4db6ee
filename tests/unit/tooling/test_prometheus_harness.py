"""The alert test's helpers: the rule rewriter changes durations only, and the Prometheus
process fixture serves rules and alerts (a real `prometheus`, no Kafka, no workers)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.integration.prometheus_harness import PrometheusServer, shorten_durations
from tests.unit.tooling.promql_names import ROOT, run_promtool

RULES = ROOT / "deploy" / "prometheus" / "ferryman.rules.yml"
DURATION = re.compile(r"\b\d+[smhdwy]\b")


def rules_of(text: str) -> list[dict[str, object]]:
    return [rule for group in yaml.safe_load(text)["groups"] for rule in group["rules"]]


def test_shortening_changes_only_durations() -> None:
    original = rules_of(RULES.read_text())
    shortened = rules_of(shorten_durations(RULES.read_text()))

    assert len(shortened) == len(original)
    for before, after in zip(original, shortened, strict=True):
        assert {k: v for k, v in after.items() if k not in ("expr", "for")} == {
            k: v for k, v in before.items() if k not in ("expr", "for")
        }
        assert DURATION.sub("D", str(after["expr"])) == DURATION.sub("D", str(before["expr"]))
        assert after.get("for", "0s") in {"0s", "3s"}


def test_windows_and_offsets_become_the_test_windows() -> None:
    text = yaml.safe_dump(
        {
            "groups": [
                {
                    "name": "g",
                    "rules": [
                        {
                            "alert": "A",
                            "expr": "rate(x[5m]) > rate(x[1d] offset 1d) and y[15m:1m]",
                            "for": "10m",
                        },
                        {"alert": "B", "expr": "up == 0", "for": "0m"},
                        {"alert": "C", "expr": "increase(z[7m]) > 0"},
                    ],
                }
            ]
        }
    )

    a, b, c = rules_of(shorten_durations(text))

    assert a["expr"] == "rate(x[30s]) > rate(x[5m] offset 5m) and y[15m:1m]"
    assert a["for"] == "3s"
    assert b["for"] == "0m"
    assert c["expr"] == "increase(z[7m]) > 0"  # a window not in the map is left alone


def test_the_shortened_rules_are_still_valid(tmp_path: Path) -> None:
    shortened = tmp_path / "short.rules.yml"
    shortened.write_text(shorten_durations(RULES.read_text()))

    result = run_promtool("check", "rules", shortened)

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is missing")
def test_the_server_evaluates_rules_and_reports_a_firing_alert(tmp_path: Path) -> None:
    rules = yaml.safe_dump(
        {
            "groups": [
                {
                    "name": "g",
                    "rules": [{"alert": "Always", "expr": "vector(1) > 0", "for": "2s"}],
                }
            ]
        }
    )

    with PrometheusServer(tmp_path, targets={}, rules=rules) as prometheus:
        alert = prometheus.wait_for_alert("Always", timeout=30)

    assert alert["state"] == "firing"
    states = [t.state for t in prometheus.timeline if t.alert == "Always"]
    assert states[-1] == "firing"
