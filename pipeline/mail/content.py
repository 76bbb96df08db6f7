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

import functools
import re

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


# Every line break str.splitlines knows, but "\n": made "\n" (and "\r\n" one "\n") so that one
# multi-line scan sees the lines splitlines would give.  Looked for with "in" (a fast search per
# character; a regular expression's character class takes ten times as long).
_OTHER_BREAKS = re.compile("\r\n?|[\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_ASCII_BREAKS = ("\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e")
_UNICODE_BREAKS = ("\x85", "\u2028", "\u2029")
# The lines that can change what the lines after them are, while no "Original Message" separator
# was seen: runs of lines quoted once, runs quoted deeper, lines that may be a signature
# delimiter or a separator (starting with "--"), and the ends of lines that may be an attribution
# (ending with ":").  All other lines are own text, read as a whole span.  Every alternative
# starts with a newline or a colon, which the regular expression engine looks for first.
_QUOTED_LINE = r"[^\S\n]*+>[^\S\n]*+(?!>)[^\n]*"
_DEEP_LINE = r"[^\S\n]*+>[^\S\n]*+>[^\n]*"
_SPECIAL_LINES = re.compile(
    rf"\n(?:(?P<quoted>{_QUOTED_LINE}(?:\n{_QUOTED_LINE})*)|(?P<deep>{_DEEP_LINE}(?:\n{_DEEP_LINE})*)"
    r"|(?P<dashes>[^\S\n]*+--[^\n]*))"
    r"|:[^\S\n]*+(?=\n|\Z)")
_WORD_CHAR = re.compile(r"[\w@.]")
# Words are runs of [\w@.] of the case-folded text; everything else separates them.  ASCII goes
# through a byte table (letters lowered, other bytes blanked, bytes of other characters kept);
# each distinct other character of a text is case-folded and blanked where no word character
# once, and replaced in the UTF-8 bytes: a body has few distinct ones.  A text with many that
# change (every replacement is a pass over the bytes) is folded and blanked as a whole.
_KEPT = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_@.")
_WORDS_TABLE = bytes(byte + 32 if 65 <= byte <= 90 else byte if byte in _KEPT or byte >= 128 else 32
                     for byte in range(256))
_ASCII = bytes(range(128))
_NON_ASCII_NON_WORD = re.compile(r"[^\x00-\x7f\w]+")
_MAX_REPLACED_CHARS = 24


@functools.cache
def _word_form(char: str) -> str:
    """A non-ASCII character as the words take it: case-folded, non-word characters blanked."""
    return "".join(c if c.isalnum() or c in "_@." else " " for c in char.casefold())


def _word_bytes(text: str) -> bytes:
    """The words of ``text``, case-folded, as UTF-8 separated by runs of spaces."""
    if text.isascii():
        return text.encode("ascii").translate(_WORDS_TABLE)
    data = text.encode("utf-8", "surrogatepass")
    others = set(data.translate(None, _ASCII).decode("utf-8", "surrogatepass"))
    changed = [(char, form) for char in others if (form := _word_form(char)) != char]
    if len(changed) > _MAX_REPLACED_CHARS:
        return _NON_ASCII_NON_WORD.sub(" ", text.casefold()).encode("utf-8", "surrogatepass").translate(_WORDS_TABLE)
    for char, form in changed:
        data = data.replace(char.encode("utf-8", "surrogatepass"), form.encode("utf-8", "surrogatepass"))
    return data.translate(_WORDS_TABLE)


def _shingles(blocks: list[list[str]]) -> tuple[int, ...]:
    """The winnowed shingles of the blocks (first seen first), at most MAX_SHINGLES."""
    if not blocks:
        return ()
    # numba loads (half a second) with the first fingerprint, not with every import of this module:
    # normalize_line's users and every command line start do not need it.
    from pipeline.mail.shingles import winnowed_shingles

    data = b"\n".join(_word_bytes("\n".join(block)) for block in blocks)
    return winnowed_shingles(data, SHINGLE_WORDS, WINNOW_WINDOW, MAX_SHINGLES)


class _Scan:
    """The state of the line scan of :func:`fingerprint_body`."""

    __slots__ = ("attribution", "in_signature", "original_depth", "current", "current_kind", "blocks")

    def __init__(self) -> None:
        self.attribution = ""
        self.in_signature = False
        self.original_depth = 0  # "Original Message" separators seen: Outlook quotes without marks
        self.current: list[str] = []
        self.current_kind: int | None = None
        self.blocks: tuple[list[list[str]], list[list[str]]] = ([], [])  # own (depth 0), quoted (depth 1)

    def text(self, depth: int, text: str) -> None:
        """Lines of one depth, none of them special: their words join the current block of that
        depth (a blank line ends no paragraph a re-wrapping mailer keeps)."""
        if depth > 1 or (depth == 0 and self.in_signature):
            self.current_kind = None  # the grandparent's text or a signature: a break in the text
        elif _WORD_CHAR.search(text) is not None:
            if depth != self.current_kind:
                self.current_kind = depth
                self.current = []
                self.blocks[depth].append(self.current)
            self.current.append(text)

    def line(self, raw_line: str) -> None:
        """One line that may be special."""
        if raw_line == _SIGNATURE or raw_line.rstrip() == "--":
            self.in_signature = True
            self.current_kind = None
            return
        depth, content = _strip_quote_marks(raw_line)
        if depth == 0 and _ORIGINAL_MESSAGE.match(content):
            self.original_depth += 1
            self.current_kind = None
            return
        depth += self.original_depth
        if not self.attribution:
            who = _attribution(content) if depth == 0 else None
            if who is None and self.original_depth == 1:
                who = _outlook_from(content)
            if who is not None:
                self.attribution = normalize_line(who)
                self.current_kind = None
                return
        self.text(depth, content)


def fingerprint_body(text: str) -> tuple[tuple[int, ...], tuple[int, ...], str]:
    """Return (own shingles, quoted shingles, attribution) of a plain-text body.

    Own text stops at the signature delimiter ("-- "). Quoted text is at quote depth 1: one '>'
    mark, or unmarked text after the first "Original Message" separator (up to the next one).
    A shingle the mail has in both its own and its quoted text stays in both: the matcher
    decides what such a line means.

    The text is read line by line in meaning, not in work: one scan finds the lines that can
    change the depth or the state (quote runs, delimiters, separators, attributions); the text
    between them, and runs of lines quoted once, are taken whole.  Words are found once per
    block, and the shingles hashed by compiled code (:mod:`pipeline.mail.shingles`).
    """
    if len(text) > MAX_TEXT_CHARS:
        cut = text.rfind("\n", 0, MAX_TEXT_CHARS)
        text = text[:cut if cut > 0 else MAX_TEXT_CHARS]  # no half line: it would hash as words nobody wrote
    if any(char in text for char in _ASCII_BREAKS) or (
            not text.isascii() and any(char in text for char in _UNICODE_BREAKS)):
        text = _OTHER_BREAKS.sub("\n", text)
    text = "\n" + text  # every line starts after a newline; an empty first line changes nothing
    scan = _Scan()
    position = 0
    for match in _SPECIAL_LINES.finditer(text):
        start = match.start()
        if text[start] == ":":  # the end of a line that may be an attribution
            start = text.rfind("\n", 0, start)
            line = text[start + 1:match.end()]
        else:
            line = None
        if start > position:
            scan.text(0, text[position:start])
        position = match.end()
        if line is not None:
            scan.line(line)
        elif match.group("quoted") is not None:
            scan.text(1, match.group("quoted"))
        elif match.group("deep") is not None:
            scan.current_kind = None  # the grandparent's text: a break
        else:
            scan.line(match.group("dashes"))
            if scan.original_depth:  # unmarked quotes from here on: every line's depth counts
                for raw_line in text[position + 1:].split("\n"):
                    scan.line(raw_line)
                position = len(text)
                break
    if position < len(text):
        scan.text(0, text[position:])
    own, quoted = scan.blocks
    return _shingles(own), _shingles(quoted), scan.attribution
