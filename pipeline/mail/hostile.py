"""Seeded hostile mail: the inputs a real mailbox eventually delivers and a parser must survive.

Pure and deterministic: the same ``seed`` always gives the same bytes, so a failure found in a
test or an integration run can be replayed.  :func:`hostile_mails` cycles through every
category in :data:`CATEGORIES`; :func:`big_mail` builds a well-formed mail of a requested size.
Nothing here decides what the parser should make of a mail — only what it has to survive.
"""

from __future__ import annotations

import base64
import random
from typing import Callable, Iterator

_WORDS = ("invoice", "order", "delivery", "account", "update", "report", "meeting", "contract", "quote",
          "shipment", "payment", "ticket", "renewal", "support", "question", "urgent", "monday", "plan")


def _id(rng: random.Random, tag: str) -> bytes:
    return f"<{tag}-{rng.getrandbits(64):016x}@hostile.threadline.test>".encode()


def _words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(count))


def _mail(rng: random.Random, tag: str, extra: list[bytes], body: bytes, *, message_id: bool = True) -> bytes:
    """A plausible header block around ``extra`` fields, so the parser reaches the hostile part;
    a field in ``extra`` replaces the plausible one of that name (the parser reads the first)."""
    plausible = [b"From: Ann Example <ann@example.org>", b"To: support@example.com",
                 b"Subject: " + _words(rng, 4).encode(), b"Date: Tue, 05 Mar 2024 10:15:00 +0100"]
    if message_id:
        plausible.insert(0, b"Message-ID: " + _id(rng, tag))
    given = {field.split(b":", 1)[0].lower() for field in extra}
    lines = [field for field in plausible if field.split(b":", 1)[0].lower() not in given]
    return b"\r\n".join(lines + extra) + b"\r\n\r\n" + body


def _broken_boundary(rng: random.Random) -> bytes:
    variant = rng.randrange(7)
    text = _words(rng, 12).encode()
    if variant == 0:  # declared, never used
        return _mail(rng, "bnd", [b"Content-Type: multipart/mixed; boundary=NEVER"], text + b"\r\n")
    if variant == 1:  # opened, never closed
        return _mail(rng, "bnd", [b"Content-Type: multipart/mixed; boundary=B"],
                     b"--B\r\nContent-Type: text/plain\r\n\r\n" + text + b"\r\n--B\r\nContent-Type: text/html\r\n\r\n<p>")
    if variant == 2:  # multipart without any boundary parameter
        return _mail(rng, "bnd", [b"Content-Type: multipart/alternative"], b"--x\r\n\r\n" + text)
    if variant == 3:  # empty boundary, and a close delimiter before any part
        return _mail(rng, "bnd", [b'Content-Type: multipart/mixed; boundary=""'], b"----\r\n--\r\n" + text)
    if variant == 4:  # nested part reusing its parent's boundary
        return _mail(rng, "bnd", [b"Content-Type: multipart/mixed; boundary=S"],
                     b"--S\r\nContent-Type: multipart/alternative; boundary=S\r\n\r\n--S\r\n"
                     b"Content-Type: text/plain\r\n\r\n" + text + b"\r\n--S--\r\n--S--\r\n")
    if variant == 5:  # boundary far over the RFC 2046 limit of 70 characters, with odd bytes
        boundary = b"=_" + bytes(rng.randrange(33, 127) for _ in range(rng.randrange(200, 2000)))
        boundary = boundary.replace(b'"', b"x").replace(b";", b"x")
        return _mail(rng, "bnd", [b'Content-Type: multipart/mixed; boundary="' + boundary + b'"'],
                     b"--" + boundary + b"\r\nContent-Type: text/plain\r\n\r\n" + text
                     + b"\r\n--" + boundary[:-1] + b"--\r\n")  # closed with a near miss
    # a part whose transfer encoding lies about its content
    encoding = rng.choice([b"base64", b"quoted-printable", b"x-uuencode", b"uuencode", b"x-unknown", b"7bit"])
    junk = bytes(rng.randrange(256) for _ in range(rng.randrange(10, 400)))
    return _mail(rng, "bnd", [b"Content-Type: multipart/mixed; boundary=Q"],
                 b"--Q\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: " + encoding
                 + b"\r\n\r\n" + junk + b"\r\n--Q--\r\n")


def _deep_nesting(rng: random.Random, depth: int = 1_000) -> bytes:
    if rng.random() < 0.25:  # mail forwarded inside mail: nesting without a single boundary
        chain = b"Content-Type: message/rfc822\r\n\r\n" * depth
        return _mail(rng, "deep", [b"MIME-Version: 1.0", b"Content-Type: message/rfc822"],
                     chain + b"From: inner@example.org\r\n\r\n" + _words(rng, 8).encode() + b"\r\n")
    opening = b"".join(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (level, level + 1)
                       for level in range(depth))
    leaf = b"--b%d\r\nContent-Type: text/plain\r\n\r\n" % depth + _words(rng, 8).encode() + b"\r\n"
    closing = b"".join(b"--b%d--\r\n" % level for level in range(depth, -1, -1))
    return _mail(rng, "deep", [b"MIME-Version: 1.0", b"Content-Type: multipart/mixed; boundary=b0"],
                 opening + leaf + closing)


def _huge_header_line(rng: random.Random) -> bytes:
    line = _words(rng, 1).encode() * (2**20 // 8)
    variant = rng.randrange(3)
    if variant == 0:  # one unfolded 1 MB field in the top header block
        return _mail(rng, "line", [b"X-Long: " + line], b"body\r\n")
    if variant == 1:  # a 1 MB subject, folded every 76 bytes
        folded = b"\r\n ".join(line[i:i + 76] for i in range(0, len(line), 76))
        return _mail(rng, "line", [b"Subject: " + folded], b"body\r\n")
    # the 1 MB line in a MIME part's header, where the top-level header limit does not look
    return _mail(rng, "line", [b"Content-Type: multipart/mixed; boundary=L"],
                 b"--L\r\nContent-Type: text/plain; name=\"" + line + b"\"\r\n\r\nhello\r\n--L--\r\n")


def _many_headers(rng: random.Random, count: int = 10_000) -> bytes:
    names = (b"X-H", b"Received", b"To", b"Cc", b"Comments", b"Subject")
    fields = [b"%s: %d %s" % (rng.choice(names), i, rng.choice(_WORDS).encode()) for i in range(count)]
    return _mail(rng, "many", fields, b"body\r\n")


def _nul_and_8bit(rng: random.Random) -> bytes:
    def garbage(n: int) -> bytes:
        return bytes(rng.choice((0, 0, 0x80, 0xff, 0xc3, 0xa9, 0x1b, 0x7f, rng.randrange(256))) for _ in range(n))

    fields = [b"Subject: " + garbage(40), b"To: " + garbage(8) + b"@x\x00y, bob@example.org",
              b"X-" + garbage(5).replace(b":", b"") + b": " + garbage(20),
              b"Content-Type: text/plain; charset=" + garbage(6).replace(b";", b"")]
    if rng.random() < 0.5:
        fields.append(b"From: \x00\xff <\x00ann@example.org>")
    return _mail(rng, "nul", fields, garbage(rng.randrange(10, 3000)))


_ODD_CHARSETS = ("idna", "utf-7", "utf-16", "utf-32", "punycode", "rot13", "base64", "hex", "zlib", "uu",
                 "unicode-escape", "raw-unicode-escape", "x-unknown-charset", "utf-8*en", "us-ascii'en'",
                 "cp65001", "iso-2022-jp", "gb18030", "mbcs", "undefined", "", "utf_8_sig", "palmos", "charmap")


def _odd_charsets(rng: random.Random) -> bytes:
    def word(charset: str) -> bytes:
        payload = rng.choice(("xn--", "xn--zz-", "+AGEAYgBj-", "+ZeVnLIqe-", "=FF=FE=00", "=00=D8", "a_b",
                              "QUJD", "//79", "AA==", "=", "_"))
        return f"=?{charset}?{rng.choice('QBqbX')}?{payload}?=".encode()

    subject = b" ".join(word(rng.choice(_ODD_CHARSETS)) for _ in range(rng.randrange(1, 5)))
    if rng.random() < 0.3:
        subject = b"=?idna?Q?xn--?="  # the one that reached production
    charset = rng.choice(_ODD_CHARSETS).encode()
    body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
    fields = [b"Subject: " + subject, b"Thread-Topic: " + word(rng.choice(_ODD_CHARSETS)),
              b"Cc: " + word(rng.choice(_ODD_CHARSETS)) + b" <cc@example.org>",
              b"Content-Type: text/" + rng.choice([b"plain", b"html"]) + b"; charset=\"" + charset + b"\""]
    if rng.random() < 0.3:
        fields.append(b"Content-Transfer-Encoding: base64")
        body = base64.encodebytes(body)
    return _mail(rng, "charset", fields, body)


def _message_id_trouble(rng: random.Random) -> bytes:
    variant = rng.randrange(5)
    body = _words(rng, 10).encode() + b"\r\n"
    if variant == 0:
        return _mail(rng, "mid", [], body, message_id=False)
    if variant == 1:
        return _mail(rng, "mid", [b"Message-ID: " + _id(rng, "dup"), b"Message-ID: " + _id(rng, "dup")], body,
                     message_id=False)
    if variant == 2:  # one id far over the 998-character line limit
        return _mail(rng, "mid", [b"Message-ID: <" + b"a" * rng.randrange(1_000, 200_000) + b"@huge>"], body,
                     message_id=False)
    if variant == 3:  # many ids, unbalanced brackets, no brackets at all
        return _mail(rng, "mid", [b"Message-ID: " + b"<<" * 5_000 + b"x@y" + b">" * 3, b"In-Reply-To: <<<>>>"], body,
                     message_id=False)
    return _mail(rng, "mid", [b"Message-ID: ", b"In-Reply-To: " + b"<a@b> " * 10_000], body, message_id=False)


def _many_references(rng: random.Random, count: int = 100_000) -> bytes:
    ids = [b"<r%d.%x@x>" % (i, rng.getrandbits(16)) for i in range(count)]
    folded = b"\r\n ".join(b" ".join(ids[i:i + 6]) for i in range(0, len(ids), 6))
    return _mail(rng, "refs", [b"References: " + folded, b"In-Reply-To: " + ids[-1]], b"reply\r\n")


def _crlf_injection(rng: random.Random) -> bytes:
    variant = rng.randrange(6)
    if variant == 0:  # a bare CR smuggling a field into a subject
        fields = [b"Subject: hello\rBcc: victim@example.net\rX-Evil: 1"]
    elif variant == 1:  # bare LF inside a CRLF mail
        fields = [b"Subject: hello\nBcc: victim@example.net", b"To: a@example.org\n\nbody injected"]
    elif variant == 2:  # continuation lines that are only white space, and a field without a colon
        fields = [b"Subject: start", b" ", b"\t", b"not a field at all", b" continued"]
    elif variant == 3:  # LF CR, CR CR LF and encoded CR/LF inside an encoded word
        fields = [b"Subject: =?utf-8?Q?a=0D=0ABcc:_victim@example.net?=", b"X-A: b\n\rX-B: c\r\r\n"]
    elif variant == 4:  # the header block never ends
        return b"Message-ID: " + _id(rng, "crlf") + b"\r\nFrom: ann@example.org\r\nSubject: no body" + b"\r" * 50
    else:  # header and body separated by every odd line ending
        separator = rng.choice([b"\n\r\n", b"\r\r", b"\r\n \r\n", b"\n\n\r"])
        return _mail(rng, "crlf", [b"Subject: mixed"], b"").replace(b"\r\n\r\n", separator) + b"body\r\n"
    return _mail(rng, "crlf", fields, b"body\r\n")


def _empty(rng: random.Random) -> bytes:
    return rng.choice([b"", b"\r\n", b" ", b"\n\n\n", b"\t\r\n \r\n", b"\x00"])


def _random_binary(rng: random.Random) -> bytes:
    data = rng.randbytes(rng.randrange(1, 20_000))
    if rng.random() < 0.5:  # enough of a header that the parser does not give up at once
        data = b"From: " + data[:200] + b"\r\nSubject: " + data[200:400] + b"\r\n\r\n" + data[400:]
    return data


_BUILDERS: dict[str, Callable[[random.Random], bytes]] = {
    "broken_boundary": _broken_boundary,
    "deep_nesting": _deep_nesting,
    "huge_header_line": _huge_header_line,
    "many_headers": _many_headers,
    "nul_and_8bit": _nul_and_8bit,
    "odd_charsets": _odd_charsets,
    "message_id_trouble": _message_id_trouble,
    "many_references": _many_references,
    "crlf_injection": _crlf_injection,
    "empty": _empty,
    "random_binary": _random_binary,
}
CATEGORIES: tuple[str, ...] = tuple(_BUILDERS)


def hostile_mails(count: int, seed: int) -> Iterator[tuple[str, bytes]]:
    """``count`` (category, raw bytes) pairs, the categories in turn, so any ``count`` of at
    least ``len(CATEGORIES)`` holds every one."""
    rng = random.Random(seed)
    for index in range(count):
        category = CATEGORIES[index % len(CATEGORIES)]
        yield category, _BUILDERS[category](rng)


_HTML_TAGS = ("p", "div", "span", "td", "li", "b", "a")


def big_mail(size_bytes: int, seed: int, kind: str = "attachment") -> bytes:
    """A well-formed mail of about ``size_bytes``: a short text part plus a base64 attachment
    (``kind="attachment"``), or one big HTML body (``kind="html"``).  The Message-ID is unique
    per (size, seed, kind)."""
    if kind not in ("attachment", "html"):
        raise ValueError(f"kind must be 'attachment' or 'html', not {kind!r}")
    rng = random.Random(f"{seed}/{kind}/{size_bytes}")
    message_id = f"<big-{kind}-{size_bytes}-{seed}-{rng.getrandbits(64):016x}@threadline.test>".encode()
    header = (b"Message-ID: " + message_id + b"\r\nFrom: Ann Example <ann@example.org>\r\n"
              b"To: support@example.com\r\nSubject: " + _words(rng, 5).encode() + b"\r\n"
              b"Date: Tue, 05 Mar 2024 10:15:00 +0100\r\nMIME-Version: 1.0\r\n")
    if kind == "html":
        # A few hundred distinct paragraphs, repeated in a seeded order: realistic markup at a
        # cost of microseconds per kilobyte instead of one random choice per word.
        paragraphs = [f"<{tag}>{_words(rng, rng.randrange(8, 40))}</{tag}>\r\n".encode()
                      for tag in (rng.choice(_HTML_TAGS) for _ in range(400))]
        chunks = [b"<html><head><style>p {margin: 0}</style></head><body>\r\n"]
        total = len(header) + len(chunks[0])
        while total < size_bytes:
            chunk = paragraphs[rng.randrange(len(paragraphs))]
            chunks.append(chunk)
            total += len(chunk)
        chunks.append(b"</body></html>\r\n")
        return header + b"Content-Type: text/html; charset=utf-8\r\n\r\n" + b"".join(chunks)
    text = _words(rng, 40).encode()
    payload = base64.encodebytes(rng.randbytes(max(0, (size_bytes - len(header) - 400) * 57 // 78)))
    return (header + b"Content-Type: multipart/mixed; boundary=\"=_big\"\r\n\r\n"
            b"--=_big\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + text + b"\r\n"
            b"--=_big\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=\"data.bin\"\r\n\r\n" + payload.replace(b"\n", b"\r\n")
            + b"--=_big--\r\n")
