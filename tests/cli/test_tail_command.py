"""pipeline/cli/topics.py: how ``threadline tail`` writes a decoded record as one JSON line, and
what it refuses before it reaches a broker (tests/integration/test_tail_explain.py reads topics)."""

from __future__ import annotations

import base64
import json
from datetime import date, datetime, timezone
from decimal import Decimal
from uuid import UUID

import pytest

from pipeline.cli.main import main
from pipeline.cli.topics import BYTES_ENCODINGS, json_value, record_line


def test_values_become_json_types_datetimes_iso_bytes_one_character_per_byte():
    value = {"at": datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc), "day": date(2026, 1, 2),
             "raw": b"Subject: \xc3\xa9\x00\xff", "nested": {"items": [b"\x01", Decimal("1.50")]},
             "id": UUID(int=1), "n": None, "many": ("a", 2)}
    out = json_value(value)
    assert out["at"] == "2026-01-02T03:04:05.678000+00:00" and out["day"] == "2026-01-02"
    # Avro's JSON encoding of bytes: lossless, and the ASCII of a mail reads as text.
    assert out["raw"] == "Subject: \u00c3\u00a9\u0000\u00ff" and out["raw"].encode("latin-1") == value["raw"]
    assert out["nested"] == {"items": ["\u0001", "1.50"]}
    assert out["id"] == "00000000-0000-0000-0000-000000000001" and out["n"] is None and out["many"] == ["a", 2]
    json.dumps(out)  # every value is a JSON type now


def test_bytes_encodings_base64_is_lossless_text_replaces_what_is_not_utf8():
    raw = b"caf\xc3\xa9 \xff"
    assert base64.b64decode(json_value(raw, BYTES_ENCODINGS["base64"])) == raw
    assert json_value(raw, BYTES_ENCODINGS["text"]) == "café \ufffd"


def test_one_record_is_one_json_line_with_its_position_key_and_timestamp():
    line = record_line("mail.correlated", 3, 41, b"acme", 1_767_225_600_123,
                       {"subject": "Re: straße\nnext", "event_time": datetime(2026, 1, 1, tzinfo=timezone.utc)})
    assert "\n" not in line  # a newline in a value is escaped: one record, one line
    assert json.loads(line) == {"topic": "mail.correlated", "partition": 3, "offset": 41, "key": "acme",
                                "timestamp": "2026-01-01T00:00:00.123+00:00",
                                "value": {"subject": "Re: straße\nnext", "event_time": "2026-01-01T00:00:00+00:00"}}
    assert "straße" in line  # UTF-8 as it is, not \u escapes
    # Bytes 0x85 (NEL) and U+2028/U+2029 are escaped too: splitlines() would break the line there.
    awkward = record_line("mail.raw", 0, 0, None, None, {"raw": bytes(range(256)), "s": "a\u2028b\u2029"})
    assert len(awkward.splitlines()) == 1 and json.loads(awkward)["value"]["raw"].encode("latin-1") == bytes(range(256))
    tombstone = json.loads(record_line("deadletter", 0, 0, b"\xff\x00", None, None))
    assert tombstone["key"] == "\u00ff\u0000" and tombstone["timestamp"] is None and tombstone["value"] is None


def test_unknown_topic_is_one_line_naming_the_topics(environment, capsys):
    environment.setenv("THREADLINE_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # never reached
    assert main(["tail", "mail.correlatd"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "unknown topic 'mail.correlatd': one of mail.raw, mail.correlated," in err and "deadletter" in err


def test_without_a_broker_or_a_running_up_it_says_how_to_get_one(environment, capsys):
    assert main(["tail", "mail.correlated"]) == 2
    assert "no broker configured and no `threadline up` running" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--limit", "0"], ["--bytes", "hex"], ["--from-end", "--from-beginning"],
                                  ["--tenant", ""]])
def test_bad_options_are_refused_by_the_parser(environment, argv, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["tail", "mail.raw", *argv])
    assert stopped.value.code == 2
