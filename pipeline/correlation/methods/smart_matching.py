"""SmartMatching (6): subject, quoted text and addresses, in one of two strategies.

``dynamics`` is the Dynamics CRM 4.0 rule alone (subject and address hashes); ``evidence``
(default) adds patch series, replies that continue a subject with a reply signal, and mail quoting
an indexed mail's own text, each piece of evidence weighted by its rarity in the tenant's traffic
and the candidates ranked by a calibrated probability (docs/correlation.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

from pipeline.correlation.methods.base import FUTURE_SLACK_S, IndexKeys, Match, MailFacts, Method, MethodStrategy, recency
from pipeline.mail.automatic import WRITTEN_BY_PEOPLE
from pipeline.mail.content import normalize_line

# The parts of one series leave one sender within minutes.
SERIES_WINDOW_S = 3_600.0
# Every series link from a mail with threading headers was right on the development corpora
# (270 of 270, headers stripped); below unknown_parent_min_confidence, since a part whose headers
# name a cover letter we never saw belongs to that cover letter's thread, not to our part 1.
SERIES_CONFIDENCE = 0.97
# Postings longer than this are not read: a shingle or subject word that many live mails share
# points at none of them (its weight, 1 / mails, would be below 1/32 anyway).
COMMON_KEY_MAILS = 32
# A subject this similar (rarity-weighted) with the Dynamics addresses makes a candidate without a
# reply signal: notification mail ("... issue #12: x" after "... pull request #12: x"); "Order 1"
# after "Order 0" (similarity ~0.3) does not.
_SIMILAR_SUBJECT = 0.6
# Subject words looked up for candidates whose subject changed: the rarest few, each only when
# few live mails have it (a word of many subjects finds candidates the subject key finds too, or
# none worth weighing: on generated traffic the cap of 32 tripled the candidates per mail).
_RARE_WORDS_LOOKED_UP = 3
_RARE_WORD_MAILS = 8


@dataclass(frozen=True, slots=True)
class Evidence:
    """What one candidate parent has in common with the mail, each part weighted by its rarity
    among the tenant's live mails (the index's postings are its document frequencies, windowed
    like the index)."""

    quoted: float  # sum over the parent's own shingles the mail quotes of 1 / (live mails having it)
    quoted_shingles: int
    quoted_share: float  # of the mail's quoted shingles, the share found in this parent's own text
    subject: float  # rarity-weighted Jaccard similarity of the subject words, 0..1
    same_subject: bool  # the subject keys are equal
    attributed: bool  # the attribution line names the parent's author
    reply_prefix: bool
    # The version tokens of the "[...]" tags differ (engine.version_tags: "[PATCH v2]" and
    # "[PATCH v3]" are two threads; "[PATCH 2/5]" and "[PATCH 3/5]", "[VOTE]" and "[RESULT]" are not).
    tags_differ: bool
    addresses: float  # sum of the rarity of the addresses both have (a list address weighs ~0)
    hours_apart: float

    def log_odds(self) -> float:
        """Log odds that the candidate is in the mail's conversation (:func:`log_odds`)."""
        return log_odds(self.quoted, self.quoted_share, self.subject, self.same_subject, self.attributed,
                        self.reply_prefix, self.tags_differ, self.addresses, self.hours_apart)

    def confidence(self) -> float:
        return 1.0 / (1.0 + math.exp(-self.log_odds()))


_BIAS, _QUOTED, _QUOTED_SHARE, _SUBJECT, _SAME_SUBJECT, _ATTRIBUTED, _REPLY_PREFIX, _TAGS_DIFFER, _ADDRESSES, _AGE = (
    0.961, 0.329, 0.906, 1.883, 2.132, 0.367, -1.209, -2.384, 0.552, -0.41)


def log_odds(quoted: float, quoted_share: float, subject: float, same_subject: bool, attributed: bool,
             reply_prefix: bool, tags_differ: bool, addresses: float, hours_apart: float) -> float:
    """Log odds that a candidate with this :class:`Evidence` is in the mail's conversation: a
    logistic model whose weights were fitted once on the development corpora pooled, not per
    corpus (docs/correlation.md, with the calibration table); the engine's confidence is its
    probability.  A function of the values, so that candidates are weighed without an object each."""
    return (_BIAS
            + _QUOTED * math.log1p(min(quoted, 10.0)) + _QUOTED_SHARE * quoted_share
            + _SUBJECT * subject + _SAME_SUBJECT * same_subject
            + _ATTRIBUTED * attributed + _REPLY_PREFIX * reply_prefix
            + _TAGS_DIFFER * tags_differ + _ADDRESSES * min(addresses, 3.0)
            + _AGE * math.log1p(hours_apart))


# Until an index holds this many mails, rarity is measured as if it did: in a fresh index every
# word of the first two mails would otherwise be "in every mail" and weigh nothing.
RARITY_PRIOR_MAILS = 100


def rarity(mails_with_key: int, live_mails: int) -> float:
    """1 for a key only one live mail has, falling to 0 for a key every live mail has: the share of
    the information a key unique to one mail carries (log of the inverse document frequency)."""
    return _rarity_in(live_mails)(mails_with_key)


def _rarity_in(live_mails: int) -> Callable[[int], float]:
    """``rarity(mails_with_key, live_mails)`` as a function of ``mails_with_key`` (the logarithm
    of the population once per mail, not once per key)."""
    log_live = math.log(max(live_mails, RARITY_PRIOR_MAILS))

    def rarity_of(mails_with_key: int, log=math.log) -> float:
        if mails_with_key <= 1:
            return 1.0
        return max(0.0, 1.0 - log(mails_with_key) / log_live)
    return rarity_of


# A sender's name as entries keep it (normalize_line), remembered for the names seen most: the
# same people write most of a tenant's mail.
_author = lru_cache(maxsize=65_536)(normalize_line)


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
            "own_shingles": mail.own_shingles,
            "from_name": _author(mail.from_name) if mail.from_name else "",
            "series_head": series_head(mail.from_addr, series[1], series[0]) if series and series[0] <= 1 else None,
            "version_tags": facts.subject.sorted_version_tags,
        }

    def index_keys(self, correlator, entry) -> IndexKeys:
        if entry.automatic not in WRITTEN_BY_PEOPLE:
            # Never a content match, nor in the document frequencies: an out-of-office flood would
            # otherwise make every word of the subjects it copies common (counted to leave it out).
            return (("automatic_mail", (True,)),)
        # Word postings cost memory per word; only the evidence strategy (their rarity) and a
        # tolerant subject match read them.
        smart = correlator.settings.smart_matching
        evidence = smart.strategy == "evidence"
        words = entry.subject_words if evidence or smart.hash_delta_subject_count > 0 else ()
        return (("own_shingle", entry.own_shingles), ("subject_word", words),
                ("address", entry.addresses if evidence else ()),
                ("subject_key", (entry.subject_key,) if entry.subject_key else ()),
                ("series_head", (entry.series_head,) if entry.series_head else ()))

    def match(self, correlator, facts: MailFacts) -> Match | None:
        if not facts.subject.words:
            return None
        if correlator.settings.smart_matching.strategy == "dynamics":
            return self._match_dynamics(correlator, facts)
        return self._match_evidence(correlator, facts)

    def explain(self, evidence: dict[str, Any]) -> str:
        if evidence.get("series"):
            return (f"part {evidence['series']} of a series by the same sender, joined to its part "
                    f"{evidence.get('series_head')} sent shortly before [evidence strategy]")
        parts = []
        if evidence.get("same_subject", evidence.get("strategy") == "dynamics"):
            parts.append(f"the subject hashes agree ({', '.join(evidence.get('subject_hashes', []))})")
        elif evidence.get("subject_hashes"):
            similarity = evidence.get("subject_similarity")
            weighed = f", {similarity:.0%} of the subject by rarity" if similarity is not None else ""
            parts.append(f"subject words in common ({', '.join(evidence['subject_hashes'])}{weighed})")
        if evidence.get("version_differs"):
            parts.append("but the subjects name different versions")
        if evidence.get("reply_prefix"):
            parts.append("the subject is marked as a reply or forward")
        if evidence.get("quoted_shingles"):
            parts.append(f"it quotes {evidence['quoted_shingles']} passage(s) of the parent's own text "
                         f"(weight {evidence.get('quoted_weight', 0)} after discounting text other mails share)")
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
        """A patch series part joins its head; else every mail sharing the subject, a rare subject
        word or a quoted shingle is a candidate, weighed by :class:`Evidence`; the most confident
        one wins (the engine abstains below ``min_confidence``)."""
        index = correlator.index
        mail, ts, facts = mail_facts.mail, mail_facts.ts, mail_facts.subject
        words, series = facts.words, facts.series
        has_prefix = facts.mail_type != "new"
        if series is not None and series[0] >= 1 and not has_prefix:
            match = self._match_series(correlator, mail, ts, *series)
            if match is not None:
                return match
        # A long thread keeps its subject: its newest mails are the candidates.
        subject_key = facts.subject_key
        candidate_ids = dict.fromkeys(index.ids("subject_key", subject_key)[-COMMON_KEY_MAILS:] if subject_key else ())
        # The rarest words are the ones fewest live mails have (rarity falls as that count grows;
        # the words so common that their rarity is 0 are never looked up: _RARE_WORD_MAILS).
        word_counts = index.counts("subject_word", words)
        for position in sorted(range(len(words)), key=word_counts.__getitem__)[:_RARE_WORDS_LOOKED_UP]:
            if word_counts[position] <= _RARE_WORD_MAILS:
                candidate_ids.update(dict.fromkeys(index.ids("subject_word", words[position], _RARE_WORD_MAILS)))
        quoted_weight: dict[str, float] = {}
        quoted_count: dict[str, int] = {}
        if mail.quoted_shingles:
            own = set(mail.own_shingles)
            # Text the mail also carries as its own (a list footer, a disclaimer, a signature) is
            # appended to every mail, not quoted from one parent.
            quoting = [shingle for shingle in mail.quoted_shingles if shingle not in own]
            for ids in index.ids_each("own_shingle", quoting, COMMON_KEY_MAILS):
                for message_id in ids:
                    quoted_weight[message_id] = quoted_weight.get(message_id, 0.0) + 1.0 / len(ids)
                    quoted_count[message_id] = quoted_count.get(message_id, 0) + 1
            candidate_ids.update(dict.fromkeys(quoted_weight))
        if not candidate_ids:
            return None

        addresses = set(mail_facts.addresses)
        attribution = mail.attribution
        need_addresses = correlator.settings.smart_matching.hash_min_address_count
        # What makes a candidate at all (CRM 4.0 and the reply signals), checked before any
        # weighing (most candidates of busy subject words fail it): the same subject needs a sign
        # that this mail answers (a reply prefix, quoted text, an attribution) or the Dynamics
        # rule's common addresses; a changed subject needs a word in common and a reply signal,
        # or to be very similar with the Dynamics addresses (checked below); an attribution
        # naming the candidate's author is enough alone.  Which candidate wins does not depend
        # on their order (ties are broken by Message-ID).
        qualified = []
        for entry in correlator.candidates(list(candidate_ids), ts):
            quoted = quoted_count.get(entry.message_id, 0)
            attributed = bool(attribution) and bool(
                (entry.from_name and entry.from_name in attribution)
                or (entry.from_addr and entry.from_addr in attribution))
            # In the entry's order (its addresses are unique), so that their weights add up alike
            # in every process (a set's order changes with the hash seed).
            common = [address for address in entry.addresses if address in addresses]
            if has_prefix or quoted > 0 or attributed or len(common) >= need_addresses:
                qualified.append((entry, quoted, attributed, common))
        if not qualified:
            return None

        # The tenant's live mails and this one: the population whose document frequencies weigh
        # each subject word (this mail has each of its own words).
        population = len(index) - index.count("automatic_mail", True) + 1
        rarity_of = _rarity_in(population)
        word_rarity = dict(zip(words, [rarity_of(count + 1) for count in word_counts]))
        total_rarity = sum(word_rarity.values())
        tags = facts.version_tags
        # Rarity of the candidates' other subject words and of the addresses in common, once per
        # key and mail.
        other_word_rarity: dict[str, float] = {}
        address_rarity: dict[str, float] = {}

        best = None
        best_key = None
        best_values: tuple | None = None
        considered = 0
        quoted_total = len(mail.quoted_shingles)
        for entry, quoted, attributed, common in qualified:
            message_id = entry.message_id
            replies = has_prefix or quoted > 0 or attributed
            same_subject = bool(subject_key) and entry.subject_key == subject_key
            entry_words = entry.subject_words
            shared_rarity = sum([word_rarity[word] for word in entry_words if word in word_rarity])
            if not (same_subject or attributed or shared_rarity):
                continue
            other_rarities = []
            for word in entry_words:
                if word not in word_rarity:
                    value = other_word_rarity.get(word)
                    if value is None:
                        value = other_word_rarity[word] = rarity_of(index.count("subject_word", word))
                    other_rarities.append(value)
            union_rarity = total_rarity + sum(other_rarities)
            similarity = shared_rarity / union_rarity if union_rarity else 0.0
            if not (same_subject or attributed or replies or similarity >= _SIMILAR_SUBJECT):
                continue
            common_rarities = []
            for address in common:
                value = address_rarity.get(address)
                if value is None:
                    value = address_rarity[address] = rarity_of(index.count("address", address) + 1)
                common_rarities.append(value)
            entry_tags = entry.version_tags
            values = (
                quoted_weight.get(message_id, 0.0),  # quoted
                quoted / quoted_total if quoted_total else 0.0,  # quoted_share
                similarity,  # subject
                same_subject,
                attributed,
                has_prefix,  # reply_prefix
                (bool(tags) or bool(entry_tags)) and tags != frozenset(entry_tags),  # tags_differ
                sum(common_rarities),  # addresses
                max(0.0, ts - entry.event_time) / 3600.0,  # hours_apart
            )
            considered += 1
            key = (log_odds(*values), *recency(entry))
            if best_key is None or key > best_key:
                best, best_key, best_values = entry, key, values
        if best is None or best_values is None:
            return None
        # Evidence's fields are log_odds's arguments with the count of quoted shingles second.
        best_evidence = Evidence(best_values[0], quoted_count.get(best.message_id, 0), *best_values[1:])
        return Match(self.code, best, considered, {
            "strategy": "evidence",
            "subject_hashes": sorted(word_rarity.keys() & set(best.subject_words)),
            "same_subject": best_evidence.same_subject,
            "subject_similarity": round(best_evidence.subject, 3),
            "reply_prefix": has_prefix,
            "version_differs": best_evidence.tags_differ,
            "quoted_shingles": best_evidence.quoted_shingles,
            "quoted_weight": round(best_evidence.quoted, 3),
            "attribution": attribution if best_evidence.attributed else None,
            "address_weight": round(best_evidence.addresses, 3),
            "hours_apart": round(best_evidence.hours_apart, 1),
            "matched_addresses": sorted(addresses.intersection(best.addresses)),
        }, confidence=best_evidence.confidence())

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
                }, confidence=SERIES_CONFIDENCE)
        return None

