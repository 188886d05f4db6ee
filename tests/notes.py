"""Where tests write the measurements they report (e.g. for an issue's closing note).

By default a note goes to the run's temporary folder, like every other test write; set
`FERRYMAN_TEST_NOTES` to a folder to keep the notes (that folder is created if missing).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTES_ENV = "FERRYMAN_TEST_NOTES"


def note_path(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """The file note `name` goes to: in `$FERRYMAN_TEST_NOTES`, else in a temporary folder."""
    kept = os.environ.get(NOTES_ENV)
    folder = Path(kept) if kept else tmp_path_factory.mktemp("notes")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


class Notes:
    """Appends lines of measurements to one note file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, line: str) -> None:
        with self.path.open("a") as notes:
            notes.write(line + "\n")
