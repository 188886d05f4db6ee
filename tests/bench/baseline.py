"""A baseline worker from another git revision, for before/after figures in the same run.

`baseline_worker(ref)` checks `ref` out as a detached git worktree in a temp directory,
builds its own venv there with `uv sync --frozen` (from uv's cache: fast, and offline when
every wheel is cached) and yields a `WorkerBuild` that runs that revision's
`python -m llm_worker`. The bench talks to any worker only over Kafka and HTTP, so nothing
else changes. The worktree is removed on exit; nothing is ever committed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.bench.procs import ROOT, WorkerBuild


def _uv() -> list[str]:
    found = shutil.which("uv")
    return [found] if found else [sys.executable, "-m", "uv"]


def _run(cmd: list[str], cwd: Path, what: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout.strip()


@contextlib.contextmanager
def baseline_worker(ref: str) -> Iterator[tuple[WorkerBuild, str]]:
    """Yield the worker build of git revision `ref` and its full commit id.

    Raises:
        RuntimeError: `ref` is not a revision of this repository, or its venv did not build.
    """
    commit = _run(["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], ROOT, "git rev-parse")
    scratch = Path(tempfile.mkdtemp(prefix="ferryman-bench-baseline-"))
    tree = scratch / "tree"
    added = False
    try:
        _run(["git", "worktree", "add", "--detach", str(tree), commit], ROOT, "git worktree add")
        added = True
        venv = tree / ".venv"
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        env["UV_PROJECT_ENVIRONMENT"] = str(venv)
        _run([*_uv(), "sync", "--frozen", "--no-dev", "--quiet"], tree, "uv sync", env)
        yield WorkerBuild("baseline", str(venv / "bin" / "python"), tree), commit
    finally:
        if added:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                _run(["git", "worktree", "remove", "--force", str(tree)], ROOT, "worktree remove")
        shutil.rmtree(scratch, ignore_errors=True)
