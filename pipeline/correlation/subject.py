"""Subject analysis: reply/forward prefixes in many languages, list tags, subject hashes.

Pure and fast: every regex is compiled once (the configured filter once per pattern).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Literal

from pipeline.settings import SmartMatchingSettings

# Reply prefixes: en, de (AW), nordic (SV, VS), nl (Antw), pl (Odp), it (R, Rif), pt/es (Res,
# RES), tr (Ynt), hu (Vá), el (ΑΠ, Σχετ), ru (Отв, Ответ), zh (回复, 回覆, 答复), ...
REPLY_PREFIXES = ("re", "aw", "sv", "vs", "antw", "odp", "r", "rif", "res", "ynt", "ang", "atb", "vá", "απ",
                  "σχετ", "отв", "ответ", "回复", "回覆", "答复", "回信")
# Forward prefixes: en (Fw, Fwd), de (WG), fr/it (TR, Inoltro), nl (Doorst), pl (PD), es (RV),
# pt (Enc), nordic (VB, VL), el (ΠΡΘ), ru (Пересл), zh (转发, 轉寄).
FORWARD_PREFIXES = ("fw", "fwd", "wg", "tr", "doorst", "wtr", "pd", "rv", "enc", "vb", "vl", "fs", "inoltro",
                    "πρθ", "пересл", "转发", "轉寄")

_PREFIX_WORDS = "|".join(sorted((re.escape(p) for p in REPLY_PREFIXES + FORWARD_PREFIXES), key=len, reverse=True))
# One prefix: the word, an optional counter ("Re[2]", "Re^2", "RE (2)"), a colon (ASCII or
# full width).  Case-insensitive.
_ONE_PREFIX = rf"(?:{_PREFIX_WORDS})\s*(?:\[\d+\]|\^\d+|\(\d+\))?\s*[:：]"
_TAG = r"\[[^\[\]]{0,80}\]"
_LEADING_PREFIX = re.compile(rf"\s*(?P<prefix>{_ONE_PREFIX})\s*", re.IGNORECASE)
_LEADING_TAG = re.compile(rf"\s*(?P<tag>{_TAG})\s*")
_WAS = re.compile(r"\s*[\(\[]\s*was\s*:.*[\)\]]\s*$", re.IGNORECASE)
_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")
_FORWARDS = frozenset(FORWARD_PREFIXES)

MailType = Literal["new", "reply", "forward"]


def _leading_chain(subject: str) -> tuple[list[str], list[str], str]:
    """Split the leading run of prefixes and tags: (prefix words, tags, rest)."""
    if ":" not in subject and "：" not in subject and "[" not in subject:
        return [], [], subject  # every prefix ends in a colon, every tag is in brackets
    prefixes: list[str] = []
    tags: list[str] = []
    position = 0
    while True:
        match = _LEADING_PREFIX.match(subject, position)
        if match is not None:
            prefixes.append(_WORD.match(match.group("prefix")).group(0).casefold())
            position = match.end()
            continue
        match = _LEADING_TAG.match(subject, position)
        if match is not None and match.end() < len(subject):  # a subject that is only a tag keeps it
            tags.append(match.group("tag"))
            position = match.end()
            continue
        return prefixes, tags, subject[position:]


def mail_type_from_subject(subject: str) -> MailType:
    """The first prefix of the leading chain decides: "Fwd: Re: x" is a forward."""
    return _mail_type(_leading_chain(subject)[0])


def strip_reply_prefixes(subject: str) -> str:
    """Remove reply/forward prefixes from the leading chain, keep its tags in order:
    "AW: [users] RE: Build fails" -> "[users] Build fails". White space is folded."""
    return _without_prefixes(*_leading_chain(subject)[1:])


def reply_chain(subject: str) -> tuple[MailType, str]:
    """``(mail_type_from_subject(subject), strip_reply_prefixes(subject))``, reading the leading
    chain once."""
    prefixes, tags, rest = _leading_chain(subject)
    return _mail_type(prefixes), _without_prefixes(tags, rest)


def _mail_type(prefixes: list[str]) -> MailType:
    if not prefixes:
        return "new"
    return "forward" if prefixes[0] in _FORWARDS else "reply"


def _without_prefixes(tags: list[str], rest: str) -> str:
    return _SPACE.sub(" ", " ".join((*tags, rest))).strip()


def normalize_subject(subject: str) -> str:
    """The topic of a subject: no prefixes, no leading tags, no trailing "(was: ...)", case-folded,
    white space folded.  ``normalize_subject(normalize_subject(s)) == normalize_subject(s)``."""
    while True:
        _, _, rest = _leading_chain(subject)
        rest = _SPACE.sub(" ", _WAS.sub("", rest)).strip().casefold()
        if rest == subject:
            return rest
        subject = rest


@lru_cache(maxsize=64)
def _filter(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def subject_hashes(subject: str, settings: SmartMatchingSettings) -> tuple[str, ...]:
    """Dynamics CRM 4.0 subject hashes: every match of ``hash_filter_keywords`` is removed, the
    rest is split into words (``\\w+``, case-folded); the unique words in first-seen order, at
    most ``hash_max_count`` of them, are the hashes."""
    # A match becomes a space so that words around it stay apart; an empty match (a filter such
    # as "" or "(re:)*") removes nothing and must not split every word into its letters.
    remainder = _filter(settings.hash_filter_keywords).sub(lambda m: " " if m.group() else "", subject)
    words = dict.fromkeys([word.casefold() for word in _WORD.findall(remainder)])
    return tuple(words)[: settings.hash_max_count]
