"""The soak benchmark's detector, run short: a real server at half its capacity stays clean, and
the control that keeps 16 KiB of every request is caught. Only the verdicts are asserted (no
timings); the 2-minute form is ``make soak``, the 30-minute one ``--minutes 30``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from eodeploy.package import ModelRepository

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import soak  # noqa: E402


@pytest.mark.serve
@pytest.mark.soak
def test_short_soak_is_clean_and_the_leaking_control_is_caught(repo: ModelRepository, tmp_path: Path) -> None:
    healthy = soak.soak(repo.root, "tiny", 20, 5, tmp_path / "healthy", capacity_s=3)
    assert healthy["requests"] > 0 and healthy["non_200"] == 0 and healthy["server_errors"] == 0
    assert healthy["ok_rss"], (
        f"RSS grew {healthy['rss_mb_per_100k']} MB per 100k requests: {healthy['windows']}"
    )
    assert healthy["ok_fds"], f"descriptors grew by {healthy['fd_growth']}: {healthy['windows']}"

    control = soak.soak(repo.root, "tiny", 20, 5, tmp_path / "control", leak_bytes=16384, capacity_s=3)
    assert control["server_errors"] == 0
    assert not control["ok_rss"], f"the leak was missed: {control['rss_mb_per_100k']} MB per 100k requests"
