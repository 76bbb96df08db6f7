"""What the CLI tests share."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def environment(monkeypatch, tmp_path):
    """The process environment the CLI reads: only what a test sets (no settings file around)."""
    for name in [n for n in os.environ if n.startswith("THREADLINE_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("THREADLINE_WORKER_DATA_DIR", str(tmp_path / "data"))
    return monkeypatch
