"""Progress on stderr for every long phase: bars that show on a terminal reporting no size (0 x 0,
where tqdm drew empty lines: the demo's correlation phase 'showed blank lines'), every phase of
`threadline up` with a bar, and doctor's checks printed as they are made."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys

import pytest

from pipeline import doctor
from pipeline.cli.main import main
from pipeline.settings import load_settings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_on_a_sizeless_terminal(argv: list[str], cwd, env: dict[str, str], timeout_s: float) -> str:
    """Run ``argv`` with stdout and stderr on a new pty (0 columns x 0 rows, as openpty makes it);
    what the terminal received, line ends normalised."""
    master, slave = pty.openpty()
    assert os.get_terminal_size(slave) == os.terminal_size((0, 0))
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    received = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout_s)
            if not ready:
                raise TimeoutError(received.decode(errors="replace")[-2000:])
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the pty closes when the process ends
                break
            if not chunk:
                break
            received += chunk
    finally:
        process.wait(60)
        os.close(master)
    assert process.returncode == 0, received.decode(errors="replace")[-3000:]
    return received.decode(errors="replace").replace("\r\n", "\n")


def environment(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_") and k not in ("COLUMNS", "LINES")}
    return {**env, "PYTHONPATH": ROOT, "THREADLINE_WORKER_DATA_DIR": str(tmp_path / "data")}


def bars(screen: str, description: str) -> list[str]:
    """Every drawing of the bar ``description`` (tqdm redraws it after a carriage return)."""
    return [part for part in re.split(r"[\r\n]", screen) if part.startswith(f"{description}:")]


def test_a_bar_on_a_terminal_that_reports_no_size_is_drawn_80_wide(tmp_path):
    script = "from pipeline.cli.common import progress_bar\nfor _ in progress_bar('parse', iterable=range(3)): pass\n"
    screen = run_on_a_sizeless_terminal([sys.executable, "-c", script], tmp_path, environment(tmp_path), 60)
    drawn = bars(screen, "parse")  # tqdm's own layout drew nothing here: the screen was one empty line
    assert drawn and drawn[-1].startswith("parse: 100%|") and "3/3" in drawn[-1], repr(screen)
    assert len(drawn[-1]) == 80


@pytest.mark.integration  # the embedded broker, a worker, chDB
def test_up_shows_a_bar_for_every_phase_of_the_pipeline_not_blank_lines(tmp_path):
    screen = run_on_a_sizeless_terminal([sys.executable, "-m", "pipeline.cli", "up", "--exit-when-done"], tmp_path,
                                        environment(tmp_path), 600)
    for phase in ("ingest mail.raw", "correlate", "agents reading mail.correlated", "ClickHouse sink"):
        drawn = bars(screen, phase)
        assert drawn and re.match(rf"{phase}: 100%\|.*\| (\d+)/\1 ", drawn[-1]), (phase, drawn[-3:])
    lines = screen.split("\n")
    assert lines.index(next(line for line in lines if "generating 2000 synthetic support mails" in line)) < \
        lines.index(next(line for line in lines if line.startswith("\ringest mail.raw:")))


def test_doctor_prints_each_check_as_it_is_made(monkeypatch, tmp_path, capsys):
    for name in [n for n in os.environ if n.startswith("THREADLINE_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    seen_before_the_broker = []

    def broker_check(settings, stack):
        seen_before_the_broker.append(capsys.readouterr().out)
        return []

    monkeypatch.setattr(doctor, "check_broker", broker_check)
    assert [check.name for check in doctor.run_checks(load_settings(None, environ={}))]  # still a list
    capsys.readouterr()
    main(["doctor"])
    assert "[ok  ] schemas: 14 topics" in seen_before_the_broker[-1]
    assert "smtp relay" not in seen_before_the_broker[-1] and "smtp relay" in capsys.readouterr().out
