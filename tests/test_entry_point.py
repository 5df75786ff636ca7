"""The installed ``skinssl`` command as a user runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_console_script_exits_zero(tmp_path: Path) -> None:
    """A finished fit exits 0 (a console script's return value becomes its exit status)."""
    exe = shutil.which("skinssl") or str(Path(sys.executable).parent / "skinssl")
    config = REPO / "configs" / "quickstart" / "stage1.yaml"
    tiny = [
        "--data.init_args.num_cases=30",
        "--data.init_args.synthetic_size=64",
        "--data.init_args.image_size=32",
        "--data.init_args.cache_size=36",
        "--data.init_args.batch_size=8",
        "--data.init_args.num_workers=0",
        "--trainer.fast_dev_run=true",
        "--trainer.enable_progress_bar=false",
    ]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run(
        [exe, "fit", "-c", str(config), *tiny],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
