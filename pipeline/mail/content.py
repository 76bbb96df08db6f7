"""Content fingerprints of a mail body: evidence for correlation when threading headers are gone.

A reply usually quotes its parent ("> line", or an Outlook "-----Original Message-----" block)
and names the parent's author in an attribution line ("On Tue, Jan 5, Ann Smith wrote:").
We fingerprint the text a mail writes itself and the text it quotes directly (quote depth 1: the
parent's own text; deeper quotes are the grandparent's); a quoted fingerprint that is an own
fingerprint of an indexed mail points at that mail.

A fingerprint is a *shingle*: a hash of SHINGLE_WORDS consecutive normalised words, so a quote
that was re-wrapped (other line breaks), re-spaced or cut in the middle of a line still shares
the shingles of the words it kept.  Winnowing (the minimum hash of every WINNOW_WINDOW consecutive
shingles) keeps about a third of them, and guarantees that any common run of
SHINGLE_WORDS + WINNOW_WINDOW - 1 words shares at least one.  When a body has more than
MAX_SHINGLES, the smallest hash values are kept: the choice does not depend on where in the body
a passage stands, so a reply quoting the end of a long mail still meets the parent's shingles.
Hashes are stable 64-bit signed integers (Avro ``long``), so they survive serialisation and restarts.
"""

from __future__ import annotations

import re
import zlib
from itertools import accumulate
from typing import Iterable

from pipeline.mail.record import BODY_TEXT_LIMIT

SHINGLE_WORDS = 5  # fewer words repeat across unrelated mails ("thanks for the quick reply")
WINNOW_WINDOW = 4
MAX_SHINGLES = 64  # per kind: a bounded index entry; the smallest hashes are kept
MAX_TEXT_CHARS = BODY_TEXT_LIMIT  # what parse_mail keeps of a body; more would only cost time

_SPACE = re.compile(r"\s+")
_NON_WORD = re.compile(r"[^\w@.]+")
# "-----Original Message-----" and its localised forms; also the "From: ... Sent: ..." block
# that Outlook writes instead on reply.
_ORIGINAL_MESSAGE = re.compile(
    r"^\s*-{2,}\s*(original message|ursprüngliche nachricht|message d'origine|mensaje original|"
    r"messaggio originale|oorspronkelijk bericht|originalmeddelande|forwarded message|"
    r"weitergeleitete nachricht|message transféré)\s*-{2,}\s*$",
    re.IGNORECASE,
)
# Attribution lines: "[On <date>,] <who> wrote:" in several languages.  They are read by the
# functions below rather than by one regular expression: the expression that says the same
# ("on\s.{0,120}?," then "[^,<>]{1,80}?" then "\s*wrote") backtracks through every split of a
# line between its parts, and took half a second on one line of "Am" and 500 spaces.
_ATTRIBUTION_VERBS = ("wrote", "writes", "schrieb", "a écrit", "escribió", "ha scritto", "schreef", "skrev")
# The word that opens a date in each language, and whether a comma ends the date (else, in
# German and Dutch "Am <date> schrieb <who>" / "Op <date> schreef <who>", any white space).
_DATE_OPENINGS = {"on": True, "le": True, "el": True, "am": False, "op": False}
_MAX_DATE_CHARS = 120
_MAX_NAME_CHARS = 80
_OUTLOOK_FROM = re.compile(r"(?:from|von|de|van|da)\s*:", re.IGNORECASE)
_MAX_OUTLOOK_WHO_CHARS = 160


def _is_who(text: str) -> bool:
    """``Ann Smith``, ``Ann Smith <ann@x.org>`` or ``"Smith, Ann" <ann@x.org>``, then only white
    space.  White space alone counts too, as it did for the expression ("Am <date> schrieb:")."""
    core = text.rstrip()
    if not core:
        return bool(text)
    if core.startswith('"'):
        close = core.find('"', 1)
        if 2 <= close <= _MAX_NAME_CHARS + 1:
            address = core[close + 1:].lstrip()
            if address.startswith("<") and _is_address(address):
                return True
    bracket = core.find("<")
    name = core if bracket < 0 else core[:bracket]
    if not name or len(name.rstrip()) > _MAX_NAME_CHARS or "," in name or ">" in name:
        return False
    return bracket < 0 or _is_address(core[bracket:])


def _is_address(text: str) -> bool:
    """``<...>`` of 3 to 120 characters with no ">" inside."""
    return text.endswith(">") and 3 <= len(text) - 2 <= 120 and ">" not in text[1:-1]


def _attribution(content: str) -> str | None:
    """The <who> of an attribution line, or None.  ``content`` has no leading white space."""
    tail = content.rstrip()
    if not tail.endswith(":"):
        return None
    before = tail[:-1].rstrip()
    ending = before[-12:].lower()
    verb = next((verb for verb in _ATTRIBUTION_VERBS if ending.endswith(verb)), None)
    if verb is None:
        return None
    head = before[:len(before) - len(verb)]
    by_comma = _DATE_OPENINGS.get(head[:2].lower())
    if by_comma is not None and head[2:3].isspace():
        # The shortest date after which the rest of the line is a who, as the expression did.
        for index in range(3, min(len(head), 3 + _MAX_DATE_CHARS + 1)):
            char = head[index]
            if by_comma and char == ",":
                rest = head[index + 1:]
                stripped = rest.lstrip()
                # The white space after the comma goes to the who if the who needs it.
                for who in (stripped, rest[len(rest) - len(stripped) - 1:]) if stripped != rest else (rest,):
                    if who and _is_who(who):
                        return who
            elif not by_comma and char.isspace():
                rest = head[index + 1:]
                if rest and _is_who(rest):
                    return rest
    return head if head and _is_who(head) else None


def _outlook_from(content: str) -> str | None:
    """The sender of an Outlook reply header's "From: ..." line, or None."""
    match = _OUTLOOK_FROM.match(content)
    if match is None:
        return None
    rest = content[match.end():]
    who = rest.lstrip() or rest[-1:]
    return who if 1 <= len(who) <= _MAX_OUTLOOK_WHO_CHARS else None


_SIGNATURE = "-- "


def normalize_line(line: str) -> str:
    """Case-folded words of a line: quoting, punctuation and spacing differences do not matter."""
    return _SPACE.sub(" ", _NON_WORD.sub(" ", line.casefold())).strip()


def _strip_quote_marks(line: str) -> tuple[int, str]:
    """Quote depth and the line without its leading '>' marks."""
    depth = 0
    rest = line.lstrip()
    while rest.startswith(">"):
        depth += 1
        rest = rest[1:].lstrip()
    return depth, rest


_SECOND_SEED = 0x9E3779B9  # the low 32 bits come from a second CRC with another start value
_SIGN = 1 << 63  # unsigned 64 bits to signed (Avro long), order kept


def _winnowed_shingles(blocks: Iterable[list[str]], into: dict[int, None]) -> None:
    """Add the winnowed shingle hashes of each block of words to ``into`` (first seen first).
    A block is text without a break of kind (an interleaved reply alternates quoted and own
    blocks); no shingle spans two blocks, since those words were never adjacent in the parent."""
    crc32 = zlib.crc32
    for words in blocks:
        count = len(words) - SHINGLE_WORDS + 1
        if count <= 0:
            continue
        # One encoded text per block; a shingle is a slice of it (two CRCs of a slice are C calls:
        # a hash per shingle in Python would be most of the cost of parsing a mail).
        text = " ".join(words)
        if text.isascii():
            data = text.encode()
            lengths = map(len, words)
        else:
            data = text.encode("utf-8", "surrogatepass")
            lengths = (len(word.encode("utf-8", "surrogatepass")) for word in words)
        starts = [0, *accumulate(length + 1 for length in lengths)]
        ends = starts[SHINGLE_WORDS:]
        pieces = [data[start:end - 1] for start, end in zip(starts, ends)]
        hashes = [(crc32(piece) << 32 | crc32(piece, _SECOND_SEED)) - _SIGN for piece in pieces]
        if count <= WINNOW_WINDOW:
            into.setdefault(min(hashes), None)
            continue
        into.update(dict.fromkeys(map(min, zip(*(hashes[offset:offset + count - WINNOW_WINDOW + 1]
                                                 for offset in range(WINNOW_WINDOW))))))


def _bounded(shingles: dict[int, None]) -> tuple[int, ...]:
    """At most MAX_SHINGLES, the smallest values, in first-seen order: which are kept does not
    depend on where in the body a passage stands, so parent and reply keep the same ones."""
    if len(shingles) <= MAX_SHINGLES:
        return tuple(shingles)
    kept = set(sorted(shingles)[:MAX_SHINGLES])
    return tuple(value for value in shingles if value in kept)


def fingerprint_body(text: str) -> tuple[tuple[int, ...], tuple[int, ...], str]:
    """Return (own shingles, quoted shingles, attribution) of a plain-text body.

    Own text stops at the signature delimiter ("-- "). Quoted text is at quote depth 1: one '>'
    mark, or unmarked text after the first "Original Message" separator (up to the next one).
    A shingle the mail has in both its own and its quoted text stays in both: the matcher
    decides what such a line means.
    """
    if len(text) > MAX_TEXT_CHARS:
        cut = text.rfind("\n", 0, MAX_TEXT_CHARS)
        text = text[:cut if cut > 0 else MAX_TEXT_CHARS]  # no half line: it would hash as words nobody wrote
    own_blocks: list[list[str]] = []
    quoted_blocks: list[list[str]] = []
    current: list[str] | None = None
    current_kind = None
    attribution = ""
    in_signature = False
    original_depth = 0  # "Original Message" separators seen: Outlook quotes without marks
    for raw_line in text.splitlines():
        if raw_line == _SIGNATURE or raw_line.rstrip() == "--":
            in_signature = True
            current_kind = None
            continue
        depth, content = _strip_quote_marks(raw_line)
        if depth == 0 and _ORIGINAL_MESSAGE.match(content):
            original_depth += 1
            current_kind = None
            continue
        depth += original_depth
        if not attribution:
            who = _attribution(content) if depth == 0 else None
            if who is None and original_depth == 1:
                who = _outlook_from(content)
            if who is not None:
                attribution = normalize_line(who)
                current_kind = None
                continue
        if depth > 1 or (depth == 0 and in_signature):
            current_kind = None  # the grandparent's text or a signature: a break in the text
            continue
        words = normalize_line(content).split()
        if not words:
            continue  # a blank line ends no paragraph a re-wrapping mailer keeps
        if depth != current_kind:
            current_kind = depth
            current = []
            (quoted_blocks if depth == 1 else own_blocks).append(current)
        current.extend(words)
    own: dict[int, None] = {}
    quoted: dict[int, None] = {}
    _winnowed_shingles(own_blocks, own)
    _winnowed_shingles(quoted_blocks, quoted)
    return _bounded(own), _bounded(quoted), attribution
