"""Tracking tokens: format, find, parse, strip, add, and the per-user counter (pure functions)."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pipeline.correlation.tokens import TokenCounter, add_token, find_token, format_token, parse_token, strip_token
from pipeline.settings import TrackingTokenSettings

FAST = settings(max_examples=200, deadline=None)
CRM = TrackingTokenSettings()  # "CRM:", base 0, 3 user digits, 3 counter digits

PREFIXES = ("CRM:", "TKT#", "crm:", "Ref-", "CASE:", "#", "X", "Tk_")


@st.composite
def token_settings(draw) -> TrackingTokenSettings:
    return TrackingTokenSettings(
        prefix=draw(st.sampled_from(PREFIXES)),
        base_digit=draw(st.integers(0, 9)),
        user_digits=draw(st.integers(1, 5)),  # the settings allow 1-9; 0 is rejected
        counter_digits=draw(st.integers(1, 6)),
    )


@st.composite
def settings_and_numbers(draw) -> tuple[TrackingTokenSettings, int, int]:
    token = draw(token_settings())
    user = draw(st.integers(0, 10 ** token.user_digits - 1))
    counter = draw(st.integers(0, 10 ** token.counter_digits - 1))
    return token, user, counter


# Subjects full of near-miss material: prefix letters, digits, punctuation, a non-ASCII digit.
SUBJECT_TEXT = st.text(alphabet="CRMTKXcrmtkx:#-_ 0123456789abéß٣\t", max_size=40)
NO_DIGIT_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Nd", "Cs")), max_size=40)


# --- format / parse -------------------------------------------------------------------------

def test_format_matches_the_documented_layout():
    assert format_token(CRM, 1, 1) == "CRM:0001001"
    assert format_token(CRM, 42, 7) == "CRM:0042007"
    assert format_token(TrackingTokenSettings(prefix="TKT#", base_digit=7, user_digits=2, counter_digits=4), 5, 31) \
        == "TKT#7050031"


def test_format_wraps_the_counter_at_its_width():
    assert format_token(CRM, 1, 1000) == "CRM:0001000"
    assert format_token(CRM, 1, 1001) == "CRM:0001001"
    assert format_token(CRM, 1, -1) == "CRM:0001999"


@pytest.mark.parametrize("user", [-1, 1000, 10**6])
def test_format_rejects_a_user_number_that_does_not_fit(user):
    with pytest.raises(ValueError, match="does not fit"):
        format_token(CRM, user, 1)


def test_parse_returns_user_and_counter_and_ignores_prefix_case():
    assert parse_token(CRM, "CRM:0042007") == (42, 7)
    assert parse_token(CRM, "crm:0042007") == (42, 7)


@pytest.mark.parametrize("text", [
    "CRM:1042007",        # another deployment's base digit
    "CRM:004200",         # one digit short
    "CRM:00420071",       # one digit too many
    "CRM:00a2007",        # a letter among the digits
    "TKT#0042007",        # another prefix
    "CRM0042007",         # prefix without its colon
    "CRM: 0042007",       # space inside
    " CRM:0042007",       # not the whole text
    "CRM:0042007 ",
    "CRM:",
    "",
    "CRM:0٠٤٢٠٠٧",        # Arabic-Indic digits are not ASCII digits
])
def test_parse_rejects_what_is_not_exactly_one_of_our_tokens(text):
    with pytest.raises(ValueError, match="not a tracking token"):
        parse_token(CRM, text)


@FAST
@given(settings_and_numbers())
def test_parse_inverts_format(case):
    token_settings_, user, counter = case
    token = format_token(token_settings_, user, counter)
    assert len(token) == len(token_settings_.prefix) + 1 + token_settings_.user_digits + token_settings_.counter_digits
    assert token.startswith(token_settings_.prefix + str(token_settings_.base_digit))
    assert parse_token(token_settings_, token) == (user, counter)


@FAST
@given(token_settings(), st.integers(0, 99_999), st.integers(-10**12, 10**12))
def test_any_counter_is_kept_modulo_its_width(token_settings_, user, counter):
    user %= 10 ** token_settings_.user_digits
    token = format_token(token_settings_, user, counter)
    assert parse_token(token_settings_, token) == (user, counter % 10 ** token_settings_.counter_digits)


@FAST
@given(settings_and_numbers(), st.integers(1, 9))
def test_another_base_digit_is_not_ours(case, shift):
    ours, user, counter = case
    theirs = ours.model_copy(update={"base_digit": (ours.base_digit + shift) % 10})
    token = format_token(theirs, user, counter)
    with pytest.raises(ValueError):
        parse_token(ours, token)
    assert find_token(ours, f"RE: offer {token}") is None


# --- find -----------------------------------------------------------------------------------

@pytest.mark.parametrize("subject, expected", [
    ("Offer CRM:0001001", "CRM:0001001"),
    ("CRM:0001001 Offer", "CRM:0001001"),
    ("Offer (CRM:0001001).", "CRM:0001001"),
    ("RE: offer crm:0001001", "CRM:0001001"),                 # canonical prefix case
    ("Old CRM:1001001 new CRM:0001002", "CRM:0001002"),       # the first one *of ours*
    ("CRM:0001003 and CRM:0001004", "CRM:0001003"),
    ("Offer", None),
    ("Offer CRM:", None),
    ("Offer CRM:00010012", None),        # digits run on
    ("Offer CRM:000100", None),          # too short
    ("Offer CRM:000a001", None),         # letter
    ("Offer xCRM:0001001", None),        # glued to a word
    ("Offer CRM: 0001001", None),
    ("Offer TKT#0001001", None),         # another prefix
    ("Offer CRM:1001001", None),         # another base digit
    ("Offer CRM:0٠٠١٠٠١", None),         # non-ASCII digits
    ("Offer CRM:0001001٣", None),        # ... also do not end a token
])
def test_find_token(subject, expected):
    assert find_token(CRM, subject) == expected


@FAST
@given(settings_and_numbers(), SUBJECT_TEXT, st.sampled_from(["RE: {s} {t}", "{t} {s}", "{s} ({t})", "FW: {s}\t{t}."]))
def test_find_token_finds_ours_inside_any_subject(case, text, layout):
    token_settings_, user, counter = case
    assume(find_token(token_settings_, text) is None)
    token = format_token(token_settings_, user, counter)
    subject = layout.format(s=text, t=token)
    assert find_token(token_settings_, subject) == token
    assert find_token(token_settings_, subject.lower()) == token


@FAST
@given(settings_and_numbers(), st.sampled_from(["a", "7", "_"]))
def test_a_token_glued_to_a_word_or_digit_is_not_found(case, glue):
    token_settings_, user, counter = case
    token = format_token(token_settings_, user, counter)
    assert find_token(token_settings_, f"offer {glue}{token}") is None
    assert find_token(token_settings_, f"offer {token}7") is None


# --- strip / add ----------------------------------------------------------------------------

def test_strip_token_removes_it_and_folds_white_space():
    assert strip_token(CRM, "RE:  Offer   CRM:0001001 ") == "RE: Offer"
    assert strip_token(CRM, "CRM:0001001 Offer\tnow CRM:0001002") == "Offer now"
    assert strip_token(CRM, "Offer CRM:00010012") == "Offer CRM:00010012"  # no token, nothing stripped


def test_add_token_appends_unless_carried():
    assert add_token(CRM, "Offer", "CRM:0001001") == "Offer CRM:0001001"
    assert add_token(CRM, "", "CRM:0001001") == "CRM:0001001"
    assert add_token(CRM, "Offer CRM:0001001", "CRM:0001001") == "Offer CRM:0001001"
    assert add_token(CRM, "Offer crm:0001001", "CRM:0001001") == "Offer crm:0001001"
    assert add_token(CRM, "Offer CRM:0001005", "CRM:0001001") == "Offer CRM:0001005 CRM:0001001"


def test_add_token_sees_a_token_that_is_not_the_first():
    carried = "RE: Offer CRM:0001005 CRM:0001001"
    assert add_token(CRM, carried, "CRM:0001001") == carried


@FAST
@given(settings_and_numbers(), NO_DIGIT_TEXT)
def test_strip_undoes_add_up_to_white_space(case, text):
    token_settings_, user, counter = case
    token = format_token(token_settings_, user, counter)
    assert strip_token(token_settings_, add_token(token_settings_, text, token)) == " ".join(text.split())


@FAST
@given(settings_and_numbers(), SUBJECT_TEXT)
def test_add_then_strip_equals_strip_for_any_subject(case, text):
    token_settings_, user, counter = case
    token = format_token(token_settings_, user, counter)
    added = add_token(token_settings_, text, token)
    assert token.casefold() in added.casefold()
    assert strip_token(token_settings_, added) == strip_token(token_settings_, text)
    assert add_token(token_settings_, added, token) == added  # idempotent


# --- TokenCounter ---------------------------------------------------------------------------

def test_counter_starts_at_one_per_user_and_counts_up():
    counter = TokenCounter(CRM)
    assert [counter.next_token(1), counter.next_token(1), counter.next_token(2)] == \
        ["CRM:0001001", "CRM:0001002", "CRM:0002001"]
    assert counter.state() == {1: 3, 2: 2}


def test_counter_wraps_to_zero_after_all_nines():
    one_digit = TrackingTokenSettings(counter_digits=1)
    counter = TokenCounter(one_digit)
    counters = [parse_token(one_digit, counter.next_token(4))[1] for _ in range(12)]
    assert counters == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]
    resumed = TokenCounter(CRM, {5: 999})
    assert [resumed.next_token(5), resumed.next_token(5)] == ["CRM:0005999", "CRM:0005000"]
    assert resumed.state() == {5: 1}


def test_counter_state_round_trips_and_is_a_copy():
    first = TokenCounter(CRM)
    for _ in range(3):
        first.next_token(9)
    saved = first.state()
    saved[9] = 500  # mutating the returned dict does not touch the counter
    assert first.next_token(9) == "CRM:0009004"
    persisted = first.state()
    second = TokenCounter(CRM, persisted)
    persisted[9] = 700  # nor does mutating the dict it was built from
    assert second.next_token(9) == first.next_token(9) == "CRM:0009005"


def test_counter_rejects_a_user_that_does_not_fit_and_keeps_its_state():
    counter = TokenCounter(CRM, {1: 7})
    with pytest.raises(ValueError):
        counter.next_token(1000)
    assert counter.state() == {1: 7}


@FAST
@given(token_settings().filter(lambda s: s.counter_digits <= 2), st.integers(0, 9), st.integers(1, 250))
def test_counter_sequence_is_one_two_three_modulo_width(token_settings_, user, count):
    counter = TokenCounter(token_settings_)
    width = 10 ** token_settings_.counter_digits
    issued = [counter.next_token(user) for _ in range(count)]
    assert [parse_token(token_settings_, token) for token in issued] == [(user, (n + 1) % width) for n in range(count)]
    assert counter.state() == {user: (count + 1) % width}
