"""Where a benchmark's numbers go: one JSON file, under ``bench/results/`` by default."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """``payload`` as indented JSON at ``path`` (its folders made); prints where."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {out}")
    return out
