"""`make demo` runs `threadline up`: the whole embedded stack end to end, in a fresh folder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_up_runs_the_sample_end_to_end_and_writes_the_report(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("THREADLINE_")}
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "up", "--exit-when-done", "--no-progress"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    out = result.stdout
    assert "mails handled" in out and "InReplyTo" in out and "SmartMatching" in out
    assert "ESCALATED" in out and "dead letters: none" in out
    report = (tmp_path / "data" / "report.html").read_text()
    assert "Spring offer 1" in report  # campaign ROI from the generated traffic, through the tracking agent
    assert "Threadline: correlation quality" in report
