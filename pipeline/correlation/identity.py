"""When two mails with one Message-ID are the same mail: a duplicate, or a collision.

A Message-ID is chosen by the sender, so anyone who knows one can send another mail under it.
The engine therefore asks of a second mail with a known id whether its *content* is the known
mail's.  The content digest covers what the author wrote and nothing a delivery adds:

- the From address (lower-cased by the parser),
- the Date header (as UTC; empty when the mail has none; never ``received_at``),
- the subject, white space collapsed,
- the plain text of the body without carriage returns and without white space at its start and
  end (a CRLF and an LF copy of one mail are alike; the parser has already decoded the transfer
  encoding and charset, so a quoted-printable and a base64 copy are alike too).  Spaces inside the
  body are kept: collapsing them cost ~25 µs per mail on the ponymail corpus (3 KB bodies on
  average), against 45-55 µs per mail for the whole engine (docs/benchmarks.md).  A copy whose spaces a transport did change is taken
  for another mail: it is tracked twice, never lost.

The body is what the parser keeps (``MailRecord.body_text``: the first text part, at most
``BODY_TEXT_LIMIT`` characters), so attachments and text past the limit are not compared.

Received headers, the mailbox, the direction, the source, the size and the raw bytes are not in
it: the same mail fetched from two mailboxes, redelivered, or ingested as the inbound and the
outbound copy has one digest.  A mail whose body, subject, sender or date differs is another
mail (a *collision*) and is tracked under a derived id (:func:`derived_ids`).
"""

from __future__ import annotations

import hashlib
from datetime import timezone
from typing import Iterator

from pipeline.mail.record import MailRecord

COLLISION_FLAG = "message_id_collision"
# Hex digits of the digest in the first derived id; the full digest (32) when those are taken.
DERIVED_ID_HEX = 16
# The domain of a derived id when the original id has no "@" (the parser accepts such ids).
_NO_DOMAIN = "collision.threadline"


def content_digest(mail: MailRecord) -> str:
    """32 hex digits identifying the content of ``mail`` (see the module docstring)."""
    date = mail.date.astimezone(timezone.utc).isoformat() if mail.date is not None else ""
    text = "\x1f".join((
        mail.from_addr,
        date,
        " ".join(mail.subject.split()),
        mail.body_text.replace("\r", "").strip(),
    ))
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def derived_id(message_id: str, suffix: str) -> str:
    """``<left@right>`` -> ``<left+collision-SUFFIX@right>``: still one id-left "@" id-right."""
    bare = message_id[1:-1] if message_id.startswith("<") and message_id.endswith(">") else message_id
    left, at, right = bare.rpartition("@")
    if not at:
        left, right = bare, _NO_DOMAIN
    return f"<{left}+collision-{suffix}@{right}>"


def derived_ids(message_id: str, digest: str) -> Iterator[str]:
    """The ids a colliding mail may take, in order: the first one not taken by a mail with other
    content is its id.  Normally the first; the longer ones only when someone already used it."""
    yield derived_id(message_id, digest[:DERIVED_ID_HEX])
    yield derived_id(message_id, digest)
    n = 2
    while True:
        yield derived_id(message_id, f"{digest}-{n}")
        n += 1
