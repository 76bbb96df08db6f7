from datetime import datetime, timezone

import pytest

from pipeline.runtime.state import StateFormatError, TenantEntries, decode_state, encode_state, offset_key, tenant_key


def test_the_state_encoding_is_compact_utf8_json_with_iso_datetimes():
    value = {"who": "jörg@example.com", "at": datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc), "n": [1, None]}
    encoded = encode_state(value)
    assert encoded == '{"who":"jörg@example.com","at":"2026-03-02T09:00:00+00:00","n":[1,null]}'.encode()
    assert decode_state("k", encoded) == {**value, "at": "2026-03-02T09:00:00+00:00"}
    with pytest.raises(TypeError):
        encode_state({"raw": b"bytes are not state"})


@pytest.mark.parametrize(("value", "error"), [(b"\x00\x00\x00\x00\x04avro", "UnicodeDecodeError"),
                                              (b"not json", "JSONDecodeError")])
def test_a_value_of_another_encoding_fails_naming_its_key_and_the_cause(value, error):
    with pytest.raises(StateFormatError, match=f"'acme\\\\x1fc1'.*{error}.*worker.generation"):
        decode_state(tenant_key("acme", "c1"), value)


def test_tenant_entries_groups_by_tenant_and_hands_each_tenants_entries_out_once():
    table = {tenant_key("acme", "a"): b"1", tenant_key("acme", "b"): b"2", tenant_key("beta", "a"): b"3",
             offset_key(0): b"41", "acme": b"4"}
    entries = TenantEntries(table)
    assert sorted(entries.take("acme")) == [1, 2]
    assert entries.take("acme") == []  # the step keeps what it built from them
    assert entries.take("beta") == [3] and entries.take("\x00offset") == []
    entries.reset()
    assert sorted(entries.take("acme")) == [1, 2]


def test_a_tenant_whose_entries_do_not_decode_keeps_them_so_every_attempt_fails_alike():
    entries = TenantEntries({tenant_key("acme", "a"): b"1", tenant_key("acme", "b"): b"not json"})
    for _ in range(2):
        with pytest.raises(StateFormatError):
            entries.take("acme")
