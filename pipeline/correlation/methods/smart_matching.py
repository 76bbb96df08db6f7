"""SmartMatching (6): subject and address hashes (Dynamics CRM 4.0), in one of two strategies.

``dynamics`` is the CRM 4.0 rule alone; ``evidence`` (default) adds patch series, replies that
continue a subject with a reply signal, and mail quoting an indexed mail's own text, ranked by
quoted lines, attribution, subject and participants (docs/correlation.md).
"""

from __future__ import annotations

from typing import Any

from pipeline.correlation.methods.base import FUTURE_SLACK_S, IndexKeys, Match, MailFacts, Method, MethodStrategy, recency
from pipeline.mail.content import normalize_line

# Weights of the evidence strategy's ranking; quoted text is the strongest sign of a parent.
_QUOTED_LINE_WEIGHT = 4
_MAX_QUOTED_LINES_SCORED = 5
_ATTRIBUTION_WEIGHT = 3
_SAME_SUBJECT_WEIGHT = 2
_PARTICIPANT_WEIGHT = 1
# The parts of one series leave one sender within minutes.
SERIES_WINDOW_S = 3_600.0
# A line found in the own text of more live mails than this is boilerplate (list footers,
# disclaimers, signatures) and is no evidence.
COMMON_LINE_MAILS = 6


def series_head(sender: str, total: int, part: int) -> str:
    """The key of part 0 or 1 of a "[k/N]" series: its later parts look it up."""
    return f"{sender}|{total}|{part}"


class SmartMatching(MethodStrategy):
    code = Method.SMART_MATCHING
    label = "SmartMatching"
    content_based = True
    switch = "smart_matching.enabled"

    def entry_fields(self, correlator, facts: MailFacts) -> dict[str, Any]:
        mail, series = facts.mail, facts.subject.series
        return {
            "own_line_hashes": mail.own_line_hashes,
            "from_name": normalize_line(mail.from_name) if mail.from_name else "",
            "series_head": series_head(mail.from_addr, series[1], series[0]) if series and series[0] <= 1 else None,
        }

    def index_keys(self, correlator, entry) -> IndexKeys:
        # Word postings cost memory per word; only a tolerant subject match reads them.
        words = entry.subject_words if correlator.settings.smart_matching.hash_delta_subject_count > 0 else ()
        return (("own_line", entry.own_line_hashes), ("subject_word", words),
                ("subject_key", (entry.subject_key,) if entry.subject_key else ()),
                ("series_head", (entry.series_head,) if entry.series_head else ()))

    def match(self, correlator, facts: MailFacts) -> Match | None:
        if not facts.subject.words:
            return None
        if correlator.settings.smart_matching.strategy == "dynamics":
            return self._match_dynamics(correlator, facts)
        return self._match_evidence(correlator, facts)

    def explain(self, evidence: dict[str, Any]) -> str:
        parts = []
        if evidence.get("same_subject", evidence.get("strategy") == "dynamics"):
            parts.append(f"the subject hashes agree ({', '.join(evidence.get('subject_hashes', []))})")
        elif evidence.get("subject_hashes"):
            parts.append(f"subject words in common ({', '.join(evidence['subject_hashes'])})")
        if evidence.get("reply_prefix"):
            parts.append("the subject is marked as a reply or forward")
        if evidence.get("quoted_lines"):
            parts.append(f"it quotes {evidence['quoted_lines']} line(s) of the parent's own text")
        if evidence.get("attribution"):
            parts.append(f"its attribution line names the parent's author ({evidence['attribution']})")
        if evidence.get("matched_addresses"):
            parts.append(f"addresses in common: {', '.join(evidence['matched_addresses'])}")
        return "; ".join(parts) + f" [{evidence.get('strategy')} strategy]"

    @staticmethod
    def _subject_candidates(correlator, ts, words, subject_key) -> list:
        """Mails whose subject hashes agree within ``hash_delta_subject_count``."""
        index = correlator.index
        delta = correlator.settings.smart_matching.hash_delta_subject_count
        if delta == 0:
            ids = index.ids("subject_key", subject_key)
        else:
            # A candidate missing at most ``delta`` of our words has at least one of any
            # delta + 1 of them: the postings of the rarest delta + 1 words find them all.
            rarest = sorted(words, key=lambda word: index.count("subject_word", word))[: delta + 1]
            ids = list(dict.fromkeys(m for word in rarest for m in index.ids("subject_word", word)))
        candidates = correlator.candidates(ids, ts)
        if not delta:
            return candidates
        word_set = set(words)
        close = []
        for entry in candidates:
            common = len(word_set.intersection(entry.subject_words))
            if len(words) - common <= delta and len(entry.subject_words) - common <= delta:
                close.append(entry)
        return close

    def _match_dynamics(self, correlator, facts: MailFacts) -> Match | None:
        """CRM 4.0: subject hashes agree and at least ``hash_min_address_count`` addresses match;
        the most recent candidate wins."""
        need = correlator.settings.smart_matching.hash_min_address_count
        address_set = set(facts.addresses)
        words = facts.subject.words
        best = None
        best_common: list[str] = []
        count = 0
        for entry in self._subject_candidates(correlator, facts.ts, words, facts.subject.subject_key):
            common = address_set.intersection(entry.addresses)
            if len(common) < need:
                continue
            count += 1
            if best is None or recency(entry) > recency(best):
                best, best_common = entry, sorted(common)
        if best is None:
            return None
        return Match(self.code, best, count, {
            "strategy": "dynamics", "subject_hashes": list(words), "matched_addresses": best_common,
        })

    def _match_evidence(self, correlator, mail_facts: MailFacts) -> Match | None:
        """CRM 4.0 candidates, plus mail that continues a subject with a reply signal, or quotes an
        indexed mail's own text; ranked by quoted lines, attribution, subject and participants."""
        index = correlator.index
        in_window = correlator.in_window
        smart = correlator.settings.smart_matching
        mail, ts, facts, addresses = mail_facts.mail, mail_facts.ts, mail_facts.subject, mail_facts.addresses
        words, subject_key, series = facts.words, facts.subject_key, facts.series
        if series is not None and series[0] >= 1:
            match = self._match_series(correlator, mail, ts, *series)
            if match is not None:
                return match
        same_subject = {entry.message_id: entry for entry in self._subject_candidates(correlator, ts, words, subject_key)}
        quoted_hits: dict[str, int] = {}
        own_lines = set(mail.own_line_hashes)
        for line_hash in mail.quoted_line_hashes:
            # A line the mail also carries unquoted (a list footer, a disclaimer) is boilerplate
            # appended to every mail, not text quoted from one parent.
            if line_hash in own_lines:
                continue
            for message_id in index.ids("own_line", line_hash, COMMON_LINE_MAILS):
                quoted_hits[message_id] = quoted_hits.get(message_id, 0) + 1
        if not same_subject and not quoted_hits:
            return None

        has_prefix = facts.mail_type != "new"
        address_set = set(addresses)
        word_set = set(words)
        topic_words = word_set - facts.tag_words if quoted_hits else word_set
        attribution = mail.attribution
        best = None
        best_key = None
        best_evidence: dict = {}
        accepted = 0
        for message_id in same_subject.keys() | quoted_hits.keys():
            entry = same_subject.get(message_id) or index.get(message_id)
            if entry is None or not in_window(entry, ts):
                continue
            quoted = quoted_hits.get(message_id, 0)
            subject_match = message_id in same_subject
            attributed = bool(attribution) and (
                (entry.from_name and entry.from_name in attribution)
                or (entry.from_addr and entry.from_addr in attribution)
            )
            common_addresses = address_set.intersection(entry.addresses)
            related = mail.from_addr in entry.addresses or entry.from_addr in address_set
            dynamics_rule = subject_match and len(common_addresses) >= smart.hash_min_address_count
            continues_subject = subject_match and (has_prefix or quoted > 0 or attributed)
            # Quoted text alone can be a footer or a pasted error message seen in another
            # thread: it needs the subject to share words with the parent, or the attribution.
            quotes_it = quoted > 0 and (bool(topic_words.intersection(entry.subject_words)) or attributed)
            if not (dynamics_rule or continues_subject or quotes_it):
                continue
            accepted += 1
            score = (_QUOTED_LINE_WEIGHT * min(quoted, _MAX_QUOTED_LINES_SCORED)
                     + _ATTRIBUTION_WEIGHT * attributed + _SAME_SUBJECT_WEIGHT * subject_match
                     + _PARTICIPANT_WEIGHT * related)
            key = (score, *recency(entry))
            if best_key is None or key > best_key:
                best, best_key = entry, key
                best_evidence = {
                    "strategy": "evidence",
                    "subject_hashes": list(words) if subject_match else sorted(word_set.intersection(entry.subject_words)),
                    "same_subject": subject_match,
                    "reply_prefix": has_prefix,
                    "quoted_lines": quoted,
                    "attribution": attribution if attributed else None,
                    "matched_addresses": sorted(common_addresses),
                    "score": score,
                }
        if best is None:
            return None
        return Match(self.code, best, accepted, best_evidence)

    def _match_series(self, correlator, mail, ts: float, part: int, total: int) -> Match | None:
        """Part k of a series joins its cover letter [0/N], else its first part [1/N], sent by the
        same sender shortly before."""
        heads = (0,) if part == 1 else (0, 1)
        for head in heads:
            ids = correlator.index.ids("series_head", series_head(mail.from_addr, total, head))
            candidates = [e for e in map(correlator.index.get, ids)
                          if e is not None and ts - SERIES_WINDOW_S <= e.event_time <= ts + FUTURE_SLACK_S]
            if candidates:
                parent = max(candidates, key=recency)
                return Match(self.code, parent, len(candidates), {
                    "strategy": "evidence", "series": f"{part}/{total}", "series_head": f"{head}/{total}",
                    "matched_addresses": [mail.from_addr],
                })
        return None

