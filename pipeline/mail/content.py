"""Content fingerprints of a mail body: evidence for correlation when threading headers are gone.

A reply usually quotes its parent ("> line", or an Outlook "-----Original Message-----" block)
and names the parent's author in an attribution line ("On Tue, Jan 5, Ann Smith wrote:").
We hash the substantial lines a mail writes itself and the lines it quotes directly (quote
depth 1: the parent's own text; deeper quotes are the grandparent's); a quoted line whose hash
equals an own line of an indexed mail points at that mail.  Hashes are stable 64-bit
signed integers (Avro ``long``), so they survive serialisation and restarts.
"""

from __future__ import annotations

import hashlib
import re

MIN_LINE_CHARS = 24  # shorter lines ("Thanks,", "Hi all") say nothing about which mail is quoted
MAX_LINE_HASHES = 48  # per kind; replies quote the start of the parent, so the first lines suffice

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
_ATTRIBUTION = re.compile(
    r"^\s*(?:on\s.{0,120}?,\s*|am\s.{0,120}?\s|le\s.{0,120}?,\s*|el\s.{0,120}?,\s*|op\s.{0,120}?\s)?"
    r"(?P<who>[^,<>\n]{1,80}?(?:\s*<[^>\n]{3,120}>)?|\"[^\"\n]{1,80}\"\s*<[^>\n]{3,120}>)\s*"
    r"(?:wrote|writes|schrieb|a écrit|escribió|ha scritto|schreef|skrev)\s*:\s*$",
    re.IGNORECASE,
)
_OUTLOOK_FROM = re.compile(r"^\s*(?:from|von|de|van|da)\s*:\s*(?P<who>.{1,160})$", re.IGNORECASE)
_SIGNATURE = "-- "


def stable_hash(text: str) -> int:
    """64-bit signed hash of ``text`` that is the same in every process (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big", signed=True)


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


def fingerprint_body(text: str) -> tuple[tuple[int, ...], tuple[int, ...], str]:
    """Return (own line hashes, quoted line hashes, attribution) of a plain-text body.

    Own lines stop at the signature delimiter ("-- "). Quoted lines are those at quote depth 1:
    one '>' mark, or unmarked text after the first "Original Message" separator (up to the
    next one).  Hashes keep first-seen order and are unique.
    """
    own: dict[int, None] = {}
    quoted: dict[int, None] = {}
    attribution = ""
    in_signature = False
    original_depth = 0  # "Original Message" separators seen: Outlook quotes without marks
    for raw_line in text.splitlines():
        if raw_line == _SIGNATURE or raw_line.rstrip() == "--":
            in_signature = True
            continue
        depth, content = _strip_quote_marks(raw_line)
        if depth == 0 and _ORIGINAL_MESSAGE.match(content):
            original_depth += 1
            continue
        depth += original_depth
        if not attribution:
            match = _ATTRIBUTION.match(content) if depth == 0 else None
            if match is None and original_depth == 1:
                match = _OUTLOOK_FROM.match(content)
            if match is not None:
                attribution = normalize_line(match.group("who"))
                continue
        if depth > 1:
            continue  # the grandparent's text: evidence for the parent's parent, not ours
        normalized = normalize_line(content)
        if len(normalized) < MIN_LINE_CHARS:
            continue
        if depth == 1:
            if len(quoted) < MAX_LINE_HASHES:
                quoted.setdefault(stable_hash(normalized), None)
        elif not in_signature and len(own) < MAX_LINE_HASHES:
            own.setdefault(stable_hash(normalized), None)
        if len(own) >= MAX_LINE_HASHES and len(quoted) >= MAX_LINE_HASHES:
            break
    return tuple(own), tuple(quoted), attribution
