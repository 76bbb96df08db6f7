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

from pipeline.mail.record import BODY_TEXT_LIMIT

MIN_LINE_CHARS = 24  # shorter lines ("Thanks,", "Hi all") say nothing about which mail is quoted
MAX_LINE_HASHES = 48  # per kind; replies quote the start of the parent, so the first lines suffice
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
    if len(text) > MAX_TEXT_CHARS:
        cut = text.rfind("\n", 0, MAX_TEXT_CHARS)
        text = text[:cut if cut > 0 else MAX_TEXT_CHARS]  # no half line: it would hash as a line nobody wrote
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
            who = _attribution(content) if depth == 0 else None
            if who is None and original_depth == 1:
                who = _outlook_from(content)
            if who is not None:
                attribution = normalize_line(who)
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
