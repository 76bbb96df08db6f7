"""Finding why a worker ended in its log (``first_crash``), on logs captured from real workers.

fixtures/worker_crash_faust_agent.log: a worker whose escalation agent read a table entry that is
not JSON (Faust logs ``Crashed reason=...`` for it, then a CancelledError for every other agent and
re-raises one of those).  fixtures/worker_crash_batch_failed.log: a worker that logged a failed
batch as CRITICAL with its traceback and exited.  Paths in both are shortened to /venv, /app, /usr.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from pipeline.streams.runner import WorkerProcess, first_crash

FIXTURES = Path(__file__).parent / "fixtures"


def test_the_crashed_agent_is_found_not_the_cancellations_after_it():
    log = (FIXTURES / "worker_crash_faust_agent.log").read_text()
    cause = first_crash(log)
    assert cause.agent == "escalate"
    assert cause.reason == "JSONDecodeError('Expecting value: line 1 column 1 (char 0)')"
    assert cause.summary() == "agent escalate crashed: JSONDecodeError('Expecting value: line 1 column 1 (char 0)')"
    details = cause.details()
    assert details.startswith("[ERROR] [^----Agent*: __main__.build_app.<l[.]escalate]: Crashed reason=JSONDecodeError")
    assert 'pipeline/streams/escalation.py", line 68, in _tracker' in details
    assert details.endswith("json.decoder.JSONDecodeError: Expecting value: line 1 column 1 (char 0)")
    assert "CancelledError" not in details and "directory" not in details
    # What `up` used to print, the log's last lines, names none of it.
    tail = "\n".join(log.splitlines()[-30:])
    assert "escalate" not in tail and "JSONDecodeError" not in tail and "CancelledError" in tail


def test_a_critical_entry_with_its_traceback_on_the_same_line():
    cause = first_crash((FIXTURES / "worker_crash_batch_failed.log").read_text())
    assert cause.agent is None
    assert cause.reason == "TypeError: Cannot modify table key from outside of stream iteration"
    assert cause.summary() == ("x.mail.raw: a batch failed, the worker stops without committing: "
                               "TypeError: Cannot modify table key from outside of stream iteration")
    assert cause.details().splitlines()[:2] == [
        "[CRITICAL] x.mail.raw: a batch failed, the worker stops without committing:",
        "Traceback (most recent call last):"]


def test_a_warning_printed_after_the_traceback_is_not_the_reason():
    """multiprocessing's resource tracker warns about the parse pool's semaphores after a worker
    exited at once; its lines follow the CRITICAL entry's traceback in the log."""
    log = (FIXTURES / "worker_crash_batch_failed.log").read_text().rstrip("\n") + (
        "\n/usr/lib/python3.11/multiprocessing/resource_tracker.py:254: UserWarning: resource_tracker: "
        "There appear to be 5 leaked semaphore objects to clean up at shutdown\n"
        "  warnings.warn('resource_tracker: There appear to be %d '\n")
    cause = first_crash(log)
    assert cause.reason == "TypeError: Cannot modify table key from outside of stream iteration"
    assert "leaked semaphore" not in cause.details() and "warnings.warn" not in cause.details()


def test_cancellations_alone_are_reported_and_a_clean_log_has_no_crash():
    log = (FIXTURES / "worker_crash_faust_agent.log").read_text()
    start = log.index("[2026-12-02 11:38:10,178]")  # from the first CancelledError on
    only_cancelled = first_crash(log[start:])
    assert only_cancelled.agent == "directory" and only_cancelled.reason == "CancelledError()"
    assert first_crash("[2026-12-02 11:30:48,676] [4941] [WARNING] Error in recovery Expecting value\n OK ^\n") is None
    assert first_crash("") is None


def test_a_bare_traceback_and_long_tracebacks_are_shortened_in_the_middle():
    frames = "".join(f'  File "/app/m.py", line {n}, in f{n}\n    f{n + 1}()\n' for n in range(100))
    cause = first_crash(f"starting\nTraceback (most recent call last):\n{frames}KeyError: 3\n")
    assert cause.reason == "KeyError: 3" and cause.agent is None
    lines = cause.details(max_lines=20).splitlines()
    assert len(lines) == 20
    assert lines[1] == "Traceback (most recent call last):" and "lines left out" in lines[2]
    assert lines[-1] == "KeyError: 3" and lines[-2] == "    f100()"


def test_exit_report_names_the_log_and_falls_back_to_its_tail(tmp_path):
    process = subprocess.Popen(["true"])
    process.wait()
    crashed = tmp_path / "w0.log"
    crashed.write_text((FIXTURES / "worker_crash_faust_agent.log").read_text())
    report = WorkerProcess(process, crashed).exit_report()
    assert report.splitlines()[0] == ("a worker exited (code 0): agent escalate crashed: "
                                      "JSONDecodeError('Expecting value: line 1 column 1 (char 0)')")
    assert f"first crash in {crashed}:" in report
    quiet = tmp_path / "w1.log"
    quiet.write_text("line one\nline two\n")
    report = WorkerProcess(process, quiet).exit_report()
    assert "no crash found" in report and report.endswith("line one\nline two")


def test_a_worker_s_cpu_time_counts_its_own_processes(tmp_path):
    import subprocess
    import sys

    from pipeline.streams.runner import WorkerProcess

    # A process whose child burns 0.3 s of CPU, then both wait; the parent itself does nothing.
    script = ("import multiprocessing as mp, sys, time\n"
              "def burn():\n"
              "    while time.process_time() < 0.3: pass\n"
              "    print('burnt', flush=True); time.sleep(60)\n"
              "if __name__ == '__main__':\n"
              "    mp.get_context('spawn').Process(target=burn, daemon=True).start(); time.sleep(60)\n")
    (tmp_path / "w.py").write_text(script)
    process = subprocess.Popen([sys.executable, str(tmp_path / "w.py")], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    worker = WorkerProcess(process, tmp_path / "log")
    try:
        assert process.stdout.readline() == "burnt\n"
        assert worker.cpu_seconds >= 0.3
    finally:
        worker.kill()
    assert worker.cpu_seconds is None  # ended: not known
