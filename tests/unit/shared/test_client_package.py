"""The `ferryman` distribution stays light: four small dependencies (matplotlib only in the
`charts` extra, imported only to draw a chart), no runtime imports."""

from __future__ import annotations

import ast
import email.parser
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = ROOT / "shared" / "client" / "src" / "ferryman"
ALLOWED_DEPENDENCIES = {"aiokafka", "pydantic", "cloudevents", "opentelemetry-api"}
CHARTS_EXTRA = {"matplotlib"}
ALLOWED_IMPORTS = {"aiokafka", "pydantic", "cloudevents", "opentelemetry"}
HEAVY = (
    "faststream",
    "prometheus_client",
    "pydantic_settings",
    "ferryman_runtime",
    "matplotlib",
    "opentelemetry.sdk",
)


@pytest.mark.skipif(shutil.which("uv") is None, reason="needs uv to build the wheel")
def test_the_wheel_declares_only_its_dependencies_and_the_cli(tmp_path: Path) -> None:
    subprocess.run(
        ["uv", "build", "--package", "ferryman", "--wheel", "--out-dir", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("ferryman-*.whl")

    with zipfile.ZipFile(wheel) as archive:
        info = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(info).decode())
        entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
        modules = {name for name in archive.namelist() if name.startswith("ferryman/")}

    requirements = metadata.get_all("Requires-Dist") or []
    base = {r for r in requirements if "extra ==" not in r}
    extra = {r for r in requirements if "extra ==" in r}
    names = {re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0] for requirement in base}
    assert names == ALLOWED_DEPENDENCIES
    assert {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0] for r in extra} == CHARTS_EXTRA
    assert all(r.replace('"', "'").endswith("extra == 'charts'") for r in extra)
    assert "ferryman = ferryman.cli:main" in entry_points
    assert {"ferryman/cli.py", "ferryman/client.py", "ferryman/kafka_config.py"} <= modules
    assert "ferryman/py.typed" in modules


def test_importing_the_client_and_cli_loads_no_runtime_package() -> None:
    code = (
        "import sys, ferryman.cli, ferryman.client, ferryman.dlq, ferryman.kafka_config;"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )

    loaded = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    ).stdout.strip()

    assert loaded == ""


def test_every_module_imports_only_the_standard_library_its_dependencies_or_itself() -> None:
    allowed = set(sys.stdlib_module_names) | ALLOWED_IMPORTS | {"ferryman"}
    strays: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots = [node.module.split(".")[0]]
            else:
                continue
            strays += [f"{path.relative_to(PACKAGE)}: {r}" for r in roots if r not in allowed]

    assert [s for s in strays if not s.endswith(": matplotlib")] == []
    chart_modules = {s.split(":")[0] for s in strays if s.endswith(": matplotlib")}
    assert chart_modules <= {"usage_chart.py", "usage_report.py", "cli_usage.py"}
