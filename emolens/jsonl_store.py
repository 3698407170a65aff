"""An append-only JSONL file of keyed rows that survives being killed mid-write.

Each row carries a ``key`` (a hash of everything that determines it). Rows are appended
one line at a time, flushed and fsynced, so a killed process loses at most the row it
was writing; a torn last line is cut off on the next open. A rerun asks which keys are
done and computes only the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def row_key(settings: dict[str, Any]) -> str:
    """A stable 16-hex-digit hash of JSON-serialisable ``settings``."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class JsonlStore:
    """Keyed rows in ``path``; :meth:`append` is durable once it returns."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        good_end = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
        for number, line in enumerate(data[:good_end].splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(
                    f"{self.path}:{number}: corrupt row; delete the file (or that line) to recompute"
                ) from None
            if "key" not in row:
                raise ValueError(f"{self.path}:{number}: row without 'key'; this is not an emolens sweep file")
            self.rows[row["key"]] = row
        if good_end < len(data):
            with self.path.open("r+b") as handle:
                handle.truncate(good_end)

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def append(self, row: dict[str, Any]) -> None:
        """Write one row durably (flush + fsync) and remember it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(row, separators=(",", ":")) + "\n"
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        self.rows[row["key"]] = row
