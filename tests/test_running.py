"""stack.json: what a running `threadline up` publishes for commands in other shells."""

import os
import stat
import subprocess
import sys

from pipeline.running import STACK_FILE, RunningStack, publish, running_stack, withdraw


def test_a_published_stack_is_read_back_while_its_process_lives(tmp_path):
    stack = RunningStack(pid=os.getpid(), bootstrap="127.0.0.1:9092", embedded_broker=True,
                         clickhouse_url="http://127.0.0.1:8123", clickhouse_user="threadline",
                         clickhouse_password="s3cret-for-this-run")
    path = publish(tmp_path, stack)
    assert running_stack(tmp_path) == stack
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds the store's password
    assert "s3cret" not in repr(stack)


def test_the_stack_of_a_process_that_ended_counts_as_absent(tmp_path):
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    publish(tmp_path, RunningStack(pid=ended.pid, bootstrap="127.0.0.1:9092", embedded_broker=True))
    assert running_stack(tmp_path) is None


def test_withdraw_removes_only_the_callers_own_file(tmp_path):
    publish(tmp_path, RunningStack(pid=os.getppid(), bootstrap="127.0.0.1:9092", embedded_broker=True))
    withdraw(tmp_path)
    assert (tmp_path / STACK_FILE).exists()
    withdraw(tmp_path, pid=os.getppid())
    assert not (tmp_path / STACK_FILE).exists()
    withdraw(tmp_path)  # nothing there: no error


def test_an_unreadable_file_counts_as_absent(tmp_path):
    (tmp_path / STACK_FILE).write_text("{not json", encoding="utf-8")
    assert running_stack(tmp_path) is None
    assert running_stack(tmp_path / "missing") is None
