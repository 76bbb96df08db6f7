from datetime import datetime, timezone

import pytest

from pipeline.runtime.state import StateFormatError, TenantStates, decode_state, encode_state, offset_key, tenant_key


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


def test_tenant_states_resume_each_tenant_once_from_one_pass_grouped_by_tenant():
    table = {tenant_key("acme", "a"): b"1", tenant_key("acme", "b"): b"2", tenant_key("beta", "a"): b"3",
             offset_key(0): b"41", "acme": b"4"}  # neither the marker nor a key without a tenant is a tenant's entry
    resumed = []

    def resume(tenant, entries, *context):
        resumed.append((tenant, sorted(entries), context))
        return len(resumed)

    states = TenantStates(table, resume)
    assert [states.of("acme", 7), states.of("acme"), states.of("beta"), states.of("\x00offset")] == [1, 1, 2, 3]
    assert resumed == [("acme", [1, 2], (7,)), ("beta", [3], ()), ("\x00offset", [], ())]
    states.reset()
    assert not states and states.of("acme") == 4 and resumed[-1] == ("acme", [1, 2], ())


def test_a_tenant_whose_entries_fail_to_decode_or_to_resume_keeps_them_so_every_attempt_fails_alike():
    undecodable = TenantStates({tenant_key("acme", "a"): b"1", tenant_key("acme", "b"): b"not json"},
                               lambda tenant, entries: entries)
    for _ in range(2):
        with pytest.raises(StateFormatError):
            undecodable.of("acme")
    attempts = []

    def resume(tenant, entries):
        attempts.append(entries)
        if len(attempts) == 1:
            raise RuntimeError("a bug in the step")
        return entries

    flaky = TenantStates({tenant_key("acme", "a"): b"1"}, resume)
    with pytest.raises(RuntimeError):
        flaky.of("acme")
    assert flaky.of("acme") == [1]  # not a tenant resumed empty


def test_the_state_encoding_is_the_json_module_s_compact_form_of_every_state():
    import json
    from datetime import timedelta

    values = [{"offset": 5, "entry": {"shingles": [2**64 - 1, 0, 17], "confidence": 0.1 + 0.2, "words": ["ä", "\x00"],
                                      "at": datetime(2026, 3, 2, 9, 0, 0, 123, tzinfo=timezone(timedelta(hours=2)))}},
              {1: "int keys as strings", None: [True, False]}, [1.5e300, -0.0, "é\u2028"], {"big": 2**70}]
    for value in values:
        expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=datetime.isoformat).encode()
        assert encode_state(value) == expected
        assert decode_state("k", encode_state(value)) == json.loads(expected)
    assert decode_state("k", b'{"x":NaN}')["x"] != decode_state("k", b'{"x":NaN}')["x"]  # what json.dumps wrote
