"""The assembled command line: every area's commands are reachable, and errors a user can fix exit 2."""

import pytest

from pipeline.cli.main import build_parser, main

COMMANDS = ("correlate explain eval correct settings mark campaign convert demo up ingest imap worker replay doctor sql "
            "report tracking smtp generate notify erase escalations sla dashboards sink schemas tail bench").split()


def test_help_lists_every_command_in_its_order(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "{" + ",".join(COMMANDS) + "}" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [[name, "--help"] for name in COMMANDS]
                         + [["campaign", name, "--help"] for name in ("create", "list", "send")]
                         + [["correct", name, "--help"] for name in ("link", "unlink", "merge", "split")]
                         + [["bench", name, "--help"] for name in ("correlate", "pipeline", "clickhouse", "all",
                                                                     "tracking", "parse", "replay")])
def test_every_command_and_subcommand_has_help(argv):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 0


def test_a_user_error_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["correlate", str(tmp_path / "missing.mbox")]) == 2
    assert capsys.readouterr().err == f"threadline: no such mailbox: {tmp_path / 'missing.mbox'}\n"
