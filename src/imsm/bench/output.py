"""Writing a benchmark's results: one JSON file, written whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path

from imsm.atomic_write import write_atomically


def write_json(path: Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(payload, indent=2) + "\n")
