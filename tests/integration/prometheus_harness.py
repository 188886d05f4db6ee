"""A real Prometheus for alert tests: the rule file with its durations shortened, a server
process on a free port scraping given targets every second, and its alerts API.

    rules = shorten_durations(RULES.read_text())
    targets = {"llm_worker": ["127.0.0.1:8081"]}
    with PrometheusServer(tmp_path, targets=targets, rules=rules) as prometheus:
        prometheus.wait_for_alert("FerrymanUpstreamErrorRate", timeout=60)
        print(prometheus.timeline)
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


@dataclass
class PrometheusServer:
    """`prometheus` scraping `targets` (service label → host:port list) every second and
    evaluating `rules` every second, with its data under `workdir`."""

    workdir: Path
    targets: dict[str, list[str]]
    rules: str
    start_timeout: float = 30.0
    port: int = field(default_factory=free_port)
    timeline: list[tuple[float, str, str]] = field(default_factory=list[tuple[float, str, str]])
    _process: subprocess.Popen[bytes] | None = None
    _log: Any = None

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

    def wait_for_alert(
        self, name: str, *, state: str = "firing", timeout: float = 60.0
    ) -> dict[str, Any]:
        """Polls the alerts API until `name` is in `state`, recording every state change of
        every alert in `timeline` (seconds since the call, alert name, state).

        Raises:
            TimeoutError: not in that state within `timeout` seconds.
        """
        started = time.monotonic()
        seen: dict[str, str] = {}
        while time.monotonic() - started < timeout:
            for alert in self.alerts():
                alert_name = alert["labels"]["alertname"]
                if seen.get(alert_name) != alert["state"]:
                    seen[alert_name] = alert["state"]
                    self.timeline.append((time.monotonic() - started, alert_name, alert["state"]))
                if alert_name == name and alert["state"] == state:
                    return alert
            time.sleep(0.5)
        raise TimeoutError(f"{name} not {state} after {timeout} s; seen {seen}")
