"""Subject analysis: mail type from prefixes, prefix stripping, the normalized topic, subject hashes."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.correlation.subject import (
    FORWARD_PREFIXES, REPLY_PREFIXES, mail_type_from_subject, normalize_subject, strip_reply_prefixes, subject_hashes,
)
from pipeline.settings import SmartMatchingSettings

FAST = settings(max_examples=200, deadline=None)
SMART = SmartMatchingSettings()

PREFIX_TEXT = st.sampled_from(["Re: ", "RE:", "Fw: ", "FWD : ", "Re[2]: ", "Re^3:", "RE (2): ", "AW: ", "WG: ",
                               "SV: ", "Antw: ", "回复：", "Ответ: ", "ΑΠ: ", "[list] ", "[ext] "])
SUBJECT_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
STRUCTURED = st.builds(lambda chain, body: "".join(chain) + body, st.lists(PREFIX_TEXT, max_size=4),
                       st.text(alphabet="abc Re:[]()wasFW \t", max_size=30))
WORDS = st.lists(st.text(alphabet="abcdefghijklmnop", min_size=1, max_size=6), min_size=1, max_size=12)


# --- mail type ------------------------------------------------------------------------------

@pytest.mark.parametrize("subject, expected", [
    ("Quarterly numbers", "new"),
    ("RE: Quarterly numbers", "reply"),
    ("re:Quarterly numbers", "reply"),
    ("Re[2]: x", "reply"), ("Re^2: x", "reply"), ("RE (3): x", "reply"), ("RE : x", "reply"),
    ("Fwd: Re: x", "forward"),                  # the first prefix decides
    ("Re: Fwd: x", "reply"),
    ("FW: x", "forward"), ("WG: x", "forward"), ("TR: x", "forward"), ("Doorst: x", "forward"),
    ("RV: x", "forward"), ("Enc: x", "forward"), ("Inoltro: x", "forward"), ("Пересл: x", "forward"),
    ("转发: x", "forward"), ("ΠΡΘ: x", "forward"),
    ("AW: x", "reply"), ("SV: x", "reply"), ("Antw: x", "reply"), ("Odp: x", "reply"), ("R: x", "reply"),
    ("Rif: x", "reply"), ("RES: x", "reply"), ("Ynt: x", "reply"), ("Vá: x", "reply"), ("ΑΠ: x", "reply"),
    ("Σχετ: x", "reply"), ("Отв: x", "reply"), ("Ответ: x", "reply"), ("回复：x", "reply"), ("答复: x", "reply"),
    ("[list] Re: x", "reply"),                  # tags before the prefix are part of the leading chain
    ("[list] FW: x", "forward"),
    ("Research: results", "new"),               # a word that starts like a prefix is no prefix
    ("Rex: hi", "new"), ("R2: hi", "new"), ("Forward: plan", "new"), ("Meeting: agenda", "new"),
    ("Status Re: x", "new"),                    # only the leading chain counts
    ("Re x", "new"),                            # no colon, no prefix
    ("", "new"),
])
def test_mail_type_from_subject(subject, expected):
    assert mail_type_from_subject(subject) == expected


@pytest.mark.parametrize("prefix", REPLY_PREFIXES + FORWARD_PREFIXES)
def test_every_listed_prefix_is_recognized_in_any_case(prefix):
    expected = "forward" if prefix in FORWARD_PREFIXES else "reply"
    for spelled in (prefix, prefix.upper(), prefix.capitalize()):
        assert mail_type_from_subject(f"{spelled}: hello") == expected
        assert strip_reply_prefixes(f"{spelled}: hello") == "hello"


# --- stripping prefixes ---------------------------------------------------------------------

@pytest.mark.parametrize("subject, expected", [
    ("RE: FW: Re[2]: AW: hello", "hello"),
    ("AW: [users] RE: Build fails", "[users] Build fails"),     # the docstring's example
    ("[a] Re: [b] FW: x", "[a] [b] x"),                           # tags kept in order
    ("Re:   Build\t fails  ", "Build fails"),                      # white space folded
    ("回复：Ответ: ΑΠ: Ergebnis", "Ergebnis"),
    ("Re: Meeting: agenda", "Meeting: agenda"),
    ("Status Re: x", "Status Re: x"),
    ("Re: [list]", "[list]"),                                      # only a tag: it stays
    ("[list]", "[list]"),
    ("Re:", ""),
    ("Re: " + "[" + "x" * 81 + "] y", "[" + "x" * 81 + "] y"),     # longer than a tag: plain text
])
def test_strip_reply_prefixes(subject, expected):
    assert strip_reply_prefixes(subject) == expected


# --- normalized topic -----------------------------------------------------------------------

@pytest.mark.parametrize("subject, expected", [
    ("RE: FW: Re[2]: AW: Hello  World", "hello world"),
    ("[list] Re: [ops] Server DOWN", "server down"),
    ("Re: [list] Fw: [ops] Server down", "server down"),
    ("New topic (was: Old topic)", "new topic"),
    ("Re: New topic [was: old]", "new topic"),
    ("[a] [b] Re: C (was: d)", "c"),
    ("x (was: y) z", "x (was: y) z"),         # only a trailing "(was: ...)"
    ("[list]", "[list]"),                     # a subject that is only a tag keeps it
    ("Re: [list]", "[list]"),
    ("Re: Meeting: Agenda", "meeting: agenda"),
    ("Straße", "strasse"),                    # case-folded, not just lower-cased
    ("", ""),
    ("   ", ""),
])
def test_normalize_subject(subject, expected):
    assert normalize_subject(subject) == expected


@FAST
@given(st.one_of(SUBJECT_TEXT, STRUCTURED))
def test_normalize_subject_is_idempotent(subject):
    once = normalize_subject(subject)
    assert normalize_subject(once) == once
    assert once == once.strip() and "  " not in once and once == once.casefold()


@FAST
@given(st.one_of(SUBJECT_TEXT, STRUCTURED), st.sampled_from(["Re: ", "FW: ", "AW: ", "Re[4]: ", "回复：", "Ответ: "]))
def test_a_reply_prefix_does_not_change_the_topic(subject, prefix):
    assert normalize_subject(prefix + subject) == normalize_subject(subject)
    assert strip_reply_prefixes(prefix + subject) == strip_reply_prefixes(subject)
    assert mail_type_from_subject(prefix + subject) == ("forward" if prefix == "FW: " else "reply")


@FAST
@given(STRUCTURED)
def test_stripping_prefixes_is_idempotent(subject):
    once = strip_reply_prefixes(subject)
    assert strip_reply_prefixes(once) == once
    assert mail_type_from_subject(once) == "new" or once.startswith("[")


# --- subject hashes -------------------------------------------------------------------------

@pytest.mark.parametrize("subject, expected", [
    ("Server down", ("server", "down")),
    ("RE: FW: Server down", ("server", "down")),
    ("Re: Server down, server DOWN!", ("server", "down")),        # unique, case-folded, first seen
    ("Meeting: budget review", ("budget", "review")),             # the default filter takes any leading "word:"
    ("Status: open: now", ("now",)),
    ("a b: c", ("a", "b", "c")),                                  # ... only at the start
    ("Re: Fw:", ()),                                              # nothing left
    ("", ()),
    ("Ärger über Öl", ("ärger", "über", "öl")),
])
def test_subject_hashes_with_default_settings(subject, expected):
    assert subject_hashes(subject, SMART) == expected


def test_hash_max_count_keeps_the_first_unique_words():
    subject = "one two two three four five"
    assert subject_hashes(subject, SmartMatchingSettings(hash_max_count=3)) == ("one", "two", "three")
    assert subject_hashes(subject, SmartMatchingSettings(hash_max_count=1)) == ("one",)
    assert subject_hashes(subject, SmartMatchingSettings(hash_max_count=1000)) == ("one", "two", "three", "four", "five")


@pytest.mark.parametrize("pattern, subject, expected", [
    (r".*", "Re: anything at all", ()),                          # a filter that takes everything: no hashes
    (r"^.*$", "Server down", ()),
    (r"(?i)\bconfidential\b", "Budget CONFIDENTIAL report", ("budget", "report")),
    (r"_x_", "build_x_server down", ("build", "server", "down")),  # a match becomes a space: words stay apart
    (r"$^", "Re: Server down", ("re", "server", "down")),         # a filter that never matches
    (r"", "Server down", ("server", "down")),                     # empty matches remove nothing ...
    (r"(re:\s*)*", "re: Server down", ("server", "down")),       # ... and do not split words into letters
])
def test_hash_filter_keywords(pattern, subject, expected):
    assert subject_hashes(subject, SmartMatchingSettings(hash_filter_keywords=pattern)) == expected


def test_the_matching_knobs_do_not_change_the_hashes():
    # hash_delta_subject_count and hash_min_address_count are used by the engine, not here
    subject = "RE: Quarterly numbers for Q3"
    other = SmartMatchingSettings(hash_delta_subject_count=5, hash_min_address_count=0, strategy="dynamics")
    assert subject_hashes(subject, other) == subject_hashes(subject, SMART) == ("quarterly", "numbers", "for", "q3")


@FAST
@given(SUBJECT_TEXT, st.integers(1, 30))
def test_subject_hashes_are_deterministic_unique_and_bounded(subject, max_count):
    smart = SmartMatchingSettings(hash_max_count=max_count)
    hashes = subject_hashes(subject, smart)
    assert hashes == subject_hashes(subject, SmartMatchingSettings(hash_max_count=max_count))
    assert len(hashes) <= max_count
    assert len(set(hashes)) == len(hashes)
    assert all(word and word == word.casefold() and not any(ch.isspace() for ch in word) for word in hashes)
    unbounded = subject_hashes(subject, SmartMatchingSettings(hash_max_count=1000))
    assert hashes == unbounded[:max_count]


@FAST
@given(WORDS, st.randoms(use_true_random=False))
def test_word_order_changes_the_order_of_hashes_not_their_set(words, rng: random.Random):
    shuffled = list(words)
    rng.shuffle(shuffled)
    original = subject_hashes(" ".join(words), SMART)
    reordered = subject_hashes(" ".join(shuffled), SMART)
    assert set(original) == set(reordered) == set(words)
    assert list(original) == list(dict.fromkeys(words))  # first-seen order


@FAST
@given(WORDS, st.integers(1, 5))
def test_with_a_cap_the_first_seen_words_win(words, max_count):
    hashes = subject_hashes(" ".join(words), SmartMatchingSettings(hash_max_count=max_count))
    assert hashes == tuple(dict.fromkeys(words))[:max_count]
