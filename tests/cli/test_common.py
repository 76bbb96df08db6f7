"""pipeline/cli/common.py refuse_unsafe_keys: every command that signs or verifies tracking tokens
refuses an unsafe key outside the loopback demo, before it starts anything."""

from __future__ import annotations

from pathlib import Path

from pipeline.cli.main import main


def test_tracking_worker_and_up_refuse_the_development_key_outside_the_demo(environment, capsys):
    environment.setenv("THREADLINE_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # loopback: the demo, nothing listens
    assert main(["tracking", "--host", "0.0.0.0", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "threadline tracking refuses to run: tracking key 'dev' is the built-in development key" in err
    assert "it listens on 0.0.0.0" in err and "secrets.token_urlsafe(32)" in err
    environment.setenv("THREADLINE_KAFKA_BOOTSTRAP", "kafka.invalid:9092")
    for argv, command in ((["tracking"], "threadline tracking"), (["worker"], "threadline worker")):
        assert main(argv) == 2
        assert f"threadline: {command} refuses to run" in capsys.readouterr().err
    environment.delenv("THREADLINE_KAFKA_BOOTSTRAP")
    environment.setenv("THREADLINE_TRACKING_BASE_URL", "https://track.example.com")
    assert main(["up", "--exit-when-done"]) == 2  # before any broker starts
    assert "threadline up refuses to run" in capsys.readouterr().err
    assert not (Path.cwd() / "data").exists()


def test_outbound_relay_refuses_the_development_key_outside_the_demo_inbound_marks_nothing(environment, capsys):
    # The outbound relay signs tracking links into mail that leaves; an inbound relay signs nothing.
    environment.setenv("THREADLINE_TRACKING_BASE_URL", "https://track.example.com")
    environment.setenv("THREADLINE_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # nothing listens; never reached
    assert main(["smtp", "--port", "1"]) == 2
    assert "threadline: threadline smtp refuses to run: tracking key 'dev'" in capsys.readouterr().err
    assert main(["smtp", "--inbound", "--port", "1"]) == 2  # refused for its missing upstream, not the key
    err = capsys.readouterr().err
    assert "refuses to run: tracking key" not in err and "upstream" in err


def test_mark_and_generate_refuse_the_development_key_outside_the_demo(environment, capsys, tmp_path):
    # Both sign tokens: links written into a mail, and generated tracking traffic.
    message = tmp_path / "in.eml"
    message.write_bytes(b"From: a@acme.test\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nhttps://shop.example.com/\r\n")
    environment.setenv("THREADLINE_TRACKING_BASE_URL", "https://track.example.com")
    environment.setenv("THREADLINE_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # nothing listens; never reached
    for argv, command in ((["mark", str(message), "--campaign", "c1"], "threadline mark"),
                          (["generate"], "threadline generate")):
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert f"threadline: {command} refuses to run: tracking key 'dev'" in captured.err
        assert captured.out == ""  # no signed link was written
    environment.delenv("THREADLINE_TRACKING_BASE_URL")  # the loopback demo: marking works
    assert main(["mark", str(message), "--campaign", "c1"]) == 0
    assert "https://shop.example.com/" not in capsys.readouterr().out  # the link now goes through the endpoint
