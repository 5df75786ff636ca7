"""What the process runs in: its working directory (for messages) and the cores it may use."""

from __future__ import annotations

import os
from pathlib import Path


def where(path: str | Path) -> str:
    """For a message about a file not found: where a relative ``path`` was looked for (paths in
    configs and on the command line are relative to the working directory, not the config's)."""
    return "" if Path(path).is_absolute() else f" (relative to the working directory {Path.cwd()})"


def available_cores() -> int:
    """CPU cores this process may run on (its affinity: a SLURM task's, a container's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
