"""Metric names of deploy/prometheus/metric_names.txt, the metric names a PromQL expression
uses, and promtool: shared by the alert-rule, dashboard and deployment tests."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
METRIC_NAMES = ROOT / "deploy" / "prometheus" / "metric_names.txt"
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")

_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "atan2",
}  # fmt: skip
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()")


@dataclass(frozen=True)
class Family:
    """One metric family as listed: its type and label keys."""

    name: str
    type: str
    labels: frozenset[str]


def families() -> dict[str, Family]:
    """Every listed family by name."""
    listed: dict[str, Family] = {}
    for line in METRIC_NAMES.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, kind, labels = line.split()
        assert name not in listed, f"{name} is listed twice"
        listed[name] = Family(name, kind, frozenset(labels.split(",")))
    return listed


def family_of(series_name: str, listed: dict[str, Family]) -> Family | None:
    """The listed family a scraped series name belongs to (`x_bucket` → histogram `x`)."""
    if series_name in listed:
        return listed[series_name]
    for suffix in HISTOGRAM_SERIES:
        base = series_name.removesuffix(suffix)
        if base != series_name and base in listed and listed[base].type == "histogram":
            return listed[base]
    return None


def metric_names_in(expr: str) -> set[str]:
    """The metric (and recording rule) names a PromQL expression selects.

    Function names, keywords, label names and values, durations and numbers are not names.
    """
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in _KEYWORDS}


def promtool() -> str:
    """The promtool executable; skips the test when it is not installed."""
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is missing (apt-get install prometheus, or make setup as root)")
    return path


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Runs promtool with `args` and returns its result (output captured)."""
    return subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )
