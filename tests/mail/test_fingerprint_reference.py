"""fingerprint_body against the line-by-line reference it replaced: identical own shingles,
quoted shingles and attribution on the body of every real corpus mail, on generated bodies made
of the lines that change its state (quote marks, signatures, separators, attributions, Outlook
headers, every line break splitlines knows, non-ASCII words) and on hostile mail's bodies.

The reference below is the algorithm as it was (one Python pass per line, two CRC calls per
shingle); it is the specification the fast scan and the compiled hashing must meet."""

from __future__ import annotations

import random
import zlib
from itertools import accumulate
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.mail.shingles import winnowed_shingles
from pipeline.mail.content import (MAX_SHINGLES, MAX_TEXT_CHARS, SHINGLE_WORDS, WINNOW_WINDOW, _ORIGINAL_MESSAGE,
                                   _attribution, _outlook_from, _strip_quote_marks, fingerprint_body, normalize_line)
from pipeline.mail.hostile import hostile_mails
from pipeline.mail.parse import parse_mail
from pipeline.mail.record import MailParseError
from pipeline.mail.sources import iter_mbox

CORPORA = Path(__file__).resolve().parents[3] / "shared" / "corpus"
CORPUS_MBOXES = sorted(CORPORA.glob("*/messages.mbox")) if CORPORA.is_dir() else []


def _reference_shingles(blocks: list[list[str]], into: dict[int, None]) -> None:
    for words in blocks:
        count = len(words) - SHINGLE_WORDS + 1
        if count <= 0:
            continue
        data = " ".join(words).encode("utf-8", "surrogatepass")
        starts = [0, *accumulate(len(word.encode("utf-8", "surrogatepass")) + 1 for word in words)]
        pieces = [data[start:end - 1] for start, end in zip(starts, starts[SHINGLE_WORDS:])]
        hashes = [(zlib.crc32(piece) << 32 | zlib.crc32(piece, 0x9E3779B9)) - (1 << 63) for piece in pieces]
        if count <= WINNOW_WINDOW:
            into.setdefault(min(hashes), None)
            continue
        into.update(dict.fromkeys(min(hashes[i:i + WINNOW_WINDOW]) for i in range(count - WINNOW_WINDOW + 1)))


def _bounded(shingles: dict[int, None]) -> tuple[int, ...]:
    if len(shingles) <= MAX_SHINGLES:
        return tuple(shingles)
    kept = set(sorted(shingles)[:MAX_SHINGLES])
    return tuple(value for value in shingles if value in kept)


def reference_fingerprint(text: str) -> tuple[tuple[int, ...], tuple[int, ...], str]:
    if len(text) > MAX_TEXT_CHARS:
        cut = text.rfind("\n", 0, MAX_TEXT_CHARS)
        text = text[:cut if cut > 0 else MAX_TEXT_CHARS]
    own_blocks: list[list[str]] = []
    quoted_blocks: list[list[str]] = []
    current: list[str] = []
    current_kind = None
    attribution = ""
    in_signature = False
    original_depth = 0
    for raw_line in text.splitlines():
        if raw_line == "-- " or raw_line.rstrip() == "--":
            in_signature = True
            current_kind = None
            continue
        depth, line = _strip_quote_marks(raw_line)
        if depth == 0 and _ORIGINAL_MESSAGE.match(line):
            original_depth += 1
            current_kind = None
            continue
        depth += original_depth
        if not attribution:
            who = _attribution(line) if depth == 0 else None
            if who is None and original_depth == 1:
                who = _outlook_from(line)
            if who is not None:
                attribution = normalize_line(who)
                current_kind = None
                continue
        if depth > 1 or (depth == 0 and in_signature):
            current_kind = None
            continue
        words = normalize_line(line).split()
        if not words:
            continue
        if depth != current_kind:
            current_kind = depth
            current = []
            (quoted_blocks if depth == 1 else own_blocks).append(current)
        current.extend(words)
    own: dict[int, None] = {}
    quoted: dict[int, None] = {}
    _reference_shingles(own_blocks, own)
    _reference_shingles(quoted_blocks, quoted)
    return _bounded(own), _bounded(quoted), attribution


@pytest.mark.skipif(not CORPUS_MBOXES, reason=f"no corpus at {CORPORA}")
@pytest.mark.parametrize("mbox", CORPUS_MBOXES, ids=lambda path: path.parent.name)
def test_every_corpus_body_fingerprints_as_the_reference(mbox):
    bodies = [parse_mail(raw).body_text for _, raw in iter_mbox(mbox)]
    differing = [index for index, body in enumerate(bodies) if fingerprint_body(body) != reference_fingerprint(body)]
    assert not differing, f"{len(differing)} of {len(bodies)} bodies differ, first: mail #{differing[0]}"
    assert sum(bool(fingerprint_body(body)[1]) for body in bodies) > len(bodies) // 10  # quotes were met


# Lines that change the scan's state, and lines around them.
_LINES = ["Thanks for the quick answer on this one, it helps a lot.", "", "   ", "\t", "> quoted text of the parent mail",
          ">> the grandparent said this long ago", "> > spaced grandparent quote here", ">", "> ", " > indented quote",
          ">>> third level", "-- ", "--", "--  ", " -- ", "---", "-----Original Message-----",
          "  ----- Ursprüngliche Nachricht -----  ", "-----Forwarded message-----", "From: Ann Smith <ann@example.org>",
          "from:", "Von: Büro Müller", "> From: Quoted Person", "Sent: Monday", "On Tue, Jan 5, Ann Smith wrote:",
          "Am 05.01.2024 schrieb Bob:", "> On Mon, Bob wrote:", "Le lundi, Jean a écrit :", "Ann wrote:",
          "note:", "Example:  ", "wrote:", "Straße und Maß, déjà vu — “quoted” naïve café", "ǰ ﬁle Σίσυφος ΚΑΛΟΣ",
          "KELVIN \u212a and long \u017f", "x\u00a0y\u2007z\u202fw", "snake_case and dotted.name and a@b.c",
          "İstanbul ıi", "\x1f unit separator \x1f", "emoji 😀 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 words", "\ud800 lone surrogate"]
_BREAKS = ["\n", "\r\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_LINES), st.sampled_from(_BREAKS), st.booleans()), max_size=40))
def test_generated_bodies_fingerprint_as_the_reference(lines):
    text = "".join(line + (" " + line.lower() if twice else "") + brk for line, brk, twice in lines)
    assert fingerprint_body(text) == reference_fingerprint(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from("\n\r> -:"), max_size=400))
def test_random_text_fingerprints_as_the_reference(text):
    assert fingerprint_body(text) == reference_fingerprint(text)


def test_long_and_hostile_bodies_fingerprint_as_the_reference():
    rng = random.Random(5)
    words = [rng.choice(("alpha", "beta", "gamma", "délta", "x", "y.z", "_")) for _ in range(30_000)]
    long_text = "\n".join(" ".join(words[i:i + 12]) for i in range(0, len(words), 12))
    texts = [long_text, "> " + long_text.replace("\n", "\n> "), long_text[:MAX_TEXT_CHARS + 50], "a " * 40_000]
    for _, raw in hostile_mails(220, seed=3):
        try:
            texts.append(parse_mail(raw).body_text)
        except MailParseError:
            pass
    for text in texts:
        assert fingerprint_body(text) == reference_fingerprint(text)


def test_compiled_hashes_are_the_crcs_of_the_shingle():
    piece = "café one two three four".encode()
    expected = (zlib.crc32(piece) << 32 | zlib.crc32(piece, 0x9E3779B9)) - (1 << 63)
    assert winnowed_shingles(piece, SHINGLE_WORDS, WINNOW_WINDOW, MAX_SHINGLES) == (expected,)
    # A shingle longer than the compiled code's table of lengths is hashed byte by byte.
    long_words = " ".join(["x" * 200, "y" * 200, "zz", "w", "v"])
    assert fingerprint_body(long_words) == reference_fingerprint(long_words)
    assert fingerprint_body("CafÉ, one two (three) four!") == ((expected,), (), "")


def test_without_a_cache_folder_the_kernel_is_compiled_per_process(monkeypatch):
    from numba import njit as real_njit

    from pipeline.mail import shingles

    def njit_without_locator(**options):
        if options.get("cache"):
            raise RuntimeError("cannot cache function 'f': no locator available for file 'f.py'")
        return real_njit(**options)

    monkeypatch.setattr(shingles, "njit", njit_without_locator)

    def double(value):
        return value * 2

    assert shingles._compiled(double)(21) == 42
