"""The run history: one JSON object a line in the user's data directory, read by `gencli logs`.

Imports neither torch nor transformers.
"""

from __future__ import annotations

import json
import os
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gencli.settings import user_data_dir


def history_path() -> Path:
    return user_data_dir() / "history.jsonl"


def append(record: dict[str, Any], path: Path | None = None) -> None:
    """Add one run, stamped with the time. One `write` on an O_APPEND descriptor, so runs that
    finish together never interleave their lines. Raises OSError when it cannot write."""
    path = path or history_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": datetime.now(UTC).isoformat(timespec="seconds"), **record}, ensure_ascii=False)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, (line + "\n").encode("utf-8"))
    finally:
        os.close(descriptor)


def read_last(count: int | None, path: Path | None = None) -> list[dict[str, Any]]:
    """The last `count` runs (all with None), oldest first; lines that are not records are skipped."""
    path = path or history_path()
    if not path.exists():
        return []
    runs: deque[dict[str, Any]] = deque(maxlen=count)
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                runs.append(record)
    return list(runs)
