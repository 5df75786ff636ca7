"""GlooExit pauses (GIL released) only at the end of a run inside a gloo process group."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import run_gloo

import skinssl.callbacks.gloo_exit as gloo_exit
from skinssl.callbacks import GlooExit


def _teardown_sleeps(rank: int) -> list[float]:
    slept: list[float] = []
    gloo_exit.time = SimpleNamespace(sleep=slept.append)  # a spawned process: nothing to restore
    GlooExit(seconds=0.3).teardown(None, None, "fit")  # type: ignore[arg-type]
    return slept


def test_sleeps_in_a_gloo_group(tmp_path: Path) -> None:
    assert run_gloo(_teardown_sleeps, 2, tmp_path) == [[0.3], [0.3]]


def test_no_pause_without_a_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(gloo_exit, "time", SimpleNamespace(sleep=slept.append))
    GlooExit().teardown(None, None, "fit")  # type: ignore[arg-type]
    assert slept == []
