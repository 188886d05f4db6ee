"""A real Prometheus for alert tests: the rule file with its durations shortened, a server
process on a free port scraping given targets every second, and its alerts API.

    rules = shorten_durations(RULES.read_text())
    targets = {"llm_worker": ["127.0.0.1:8081"]}
    with PrometheusServer(tmp_path, targets=targets, rules=rules) as prometheus:
        prometheus.wait_for_alert("FerrymanUpstreamErrorRate", {"upstream": "openai/*"})
        print(prometheus.timeline_text())
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

from tests.mcp_servers import free_port

PROMETHEUS = "/usr/bin/prometheus"

FOR_DURATION = "3s"
"""What every non-zero `for:` becomes: long enough to see `pending`, short for a test."""

WINDOWS = {
    "5m": "30s",
    "10m": "45s",
    "15m": "60s",
    "30m": "90s",
    "1h": "2m",
    "1d": "5m",
}
"""Range and offset durations of the rules, and what they become under test."""

_RANGE = re.compile(r"\[(\d+[smhdwy])\]")
_OFFSET = re.compile(r"\boffset\s+(\d+[smhdwy])\b")


def _shorten_expr(expr: str, windows: dict[str, str]) -> str:
    def window(match: re.Match[str]) -> str:
        return f"[{windows.get(match.group(1), match.group(1))}]"

    def offset(match: re.Match[str]) -> str:
        return f"offset {windows.get(match.group(1), match.group(1))}"

    return _OFFSET.sub(offset, _RANGE.sub(window, expr))


def shorten_durations(
    rules_text: str, *, for_duration: str = FOR_DURATION, windows: dict[str, str] | None = None
) -> str:
    """The rule file with every `for:` set to `for_duration` (0 stays 0) and every range and
    offset duration in `expr` replaced through `windows`; nothing else changes.

    Raises:
        KeyError: the text is not a Prometheus rule file (no `groups`).
    """
    windows = WINDOWS if windows is None else windows
    document = yaml.safe_load(rules_text)
    for group in document["groups"]:
        for rule in group["rules"]:
            rule["expr"] = _shorten_expr(rule["expr"], windows)
            if "for" in rule and rule["for"] not in ("0s", "0m", 0):
                rule["for"] = for_duration
    return yaml.safe_dump(document, sort_keys=False)


@dataclass(frozen=True)
class AlertTransition:
    """One alert (a name and its labels) entering a state, as the alerts API showed it."""

    at: float
    """Seconds since the server was ready."""
    alert: str
    state: str
    """`pending`, `firing`, or `inactive` (no longer listed)."""
    labels: dict[str, str]
    """Its labels, without `alertname`."""

    def __str__(self) -> str:
        labels = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        return f"{self.at:6.1f}s  {self.alert:<28} {self.state:<8} {{{labels}}}"


def _alert_key(alert: dict[str, Any]) -> tuple[str, tuple[tuple[str, str], ...]]:
    labels = alert["labels"]
    return labels["alertname"], tuple(sorted((k, v) for k, v in labels.items() if k != "alertname"))


@dataclass
class PrometheusServer:
    """`prometheus` scraping `targets` (service label → host:port list) every second and
    evaluating `rules` every second, with its data under `workdir`."""

    workdir: Path
    targets: dict[str, list[str]]
    rules: str
    start_timeout: float = 30.0
    port: int = field(default_factory=free_port)
    timeline: list[AlertTransition] = field(default_factory=list[AlertTransition])
    """Every state change of every alert seen by `poll_alerts` (and so `wait_for_alert`)."""
    _process: subprocess.Popen[bytes] | None = None
    _log: Any = None
    _ready_at: float = 0.0
    _states: dict[tuple[str, tuple[tuple[str, str], ...]], str] = field(
        default_factory=dict[tuple[str, tuple[tuple[str, str], ...]], str]
    )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        """The generated prometheus.yml (a job per service, `service` as a target label)."""
        return {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["rules.yml"],
            "scrape_configs": [
                {
                    "job_name": service,
                    "honor_labels": True,
                    "static_configs": [{"targets": addresses, "labels": {"service": service}}],
                }
                for service, addresses in self.targets.items()
            ],
        }

    def __enter__(self) -> Self:
        executable = shutil.which("prometheus") or PROMETHEUS
        (self.workdir / "rules.yml").write_text(self.rules)
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(self.config()))
        self._log = (self.workdir / "prometheus.log").open("wb")
        self._process = subprocess.Popen(
            [
                executable,
                f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1.0) as response:
                    if response.status == 200:
                        self._ready_at = time.monotonic()
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"prometheus not ready after {self.start_timeout} s: {self.log_tail()}")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        if self._log is not None:
            self._log.close()

    def log_tail(self, lines: int = 20) -> str:
        path = self.workdir / "prometheus.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (`pending` or `firing`), as `/api/v1/alerts` lists them."""
        return self._api("/api/v1/alerts")["alerts"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        return self._api("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))["result"]

    def _api(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=5.0) as response:
            return json.load(response)["data"]

    def poll_alerts(self) -> list[dict[str, Any]]:
        """The active alerts, recording in `timeline` every alert that changed state since
        the last poll (one that is no longer listed becomes `inactive`)."""
        alerts = self.alerts()
        now = time.monotonic() - self._ready_at
        current = {_alert_key(alert): alert["state"] for alert in alerts}
        for key in [key for key in self._states if key not in current]:
            self._record(now, key, "inactive")
        for key, state in current.items():
            if self._states.get(key) != state:
                self._record(now, key, state)
        return alerts

    def _record(self, at: float, key: tuple[str, tuple[tuple[str, str], ...]], state: str) -> None:
        if state == "inactive":
            del self._states[key]
        else:
            self._states[key] = state
        self.timeline.append(AlertTransition(at, key[0], state, dict(key[1])))

    def wait_for_alert(
        self,
        name: str,
        labels: dict[str, str] | None = None,
        *,
        state: str = "firing",
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Polls the alerts API (recording `timeline`) until an alert `name` whose labels
        include `labels` is in `state`; returns that alert.

        Raises:
            TimeoutError: none in that state within `timeout` seconds.
        """
        wanted = labels or {}
        deadline = time.monotonic() + timeout
        while True:
            for alert in self.poll_alerts():
                alert_labels = alert["labels"]
                if (
                    alert_labels["alertname"] == name
                    and alert["state"] == state
                    and all(alert_labels.get(k) == v for k, v in wanted.items())
                ):
                    return alert
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{name} {wanted} not {state} after {timeout} s;"
                    f" timeline:\n{self.timeline_text()}"
                )
            time.sleep(0.5)  # the API's poll interval; Prometheus evaluates every second

    def wait_until_quiet(
        self, name: str, labels: dict[str, str] | None = None, *, timeout: float = 30.0
    ) -> None:
        """Polls the alerts API (recording `timeline`) until no alert `name` whose labels
        include `labels` is pending or firing.

        Raises:
            TimeoutError: one still active after `timeout` seconds.
        """
        wanted = labels or {}
        deadline = time.monotonic() + timeout
        while True:
            active = [
                alert
                for alert in self.poll_alerts()
                if alert["labels"]["alertname"] == name
                and all(alert["labels"].get(k) == v for k, v in wanted.items())
            ]
            if not active:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{name} {wanted} still active after {timeout} s: {active}")
            time.sleep(0.5)  # the API's poll interval; Prometheus evaluates every second

    def wait_until_scraped(self, service: str, *, timeout: float = 30.0) -> None:
        """Waits until every target of `service` has been scraped successfully (`up == 1`).

        Raises:
            TimeoutError: some target still not up after `timeout` seconds.
        """
        expected = len(self.targets[service])
        deadline = time.monotonic() + timeout
        while True:
            up = self.query(f'up{{service="{service}"}} == 1')
            if len(up) == expected:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{service}: {len(up)}/{expected} targets up after {timeout} s")
            time.sleep(0.5)  # polling the query API

    def timeline_text(self) -> str:
        """`timeline`, one transition a line."""
        return "\n".join(str(transition) for transition in self.timeline)
