"""XHeader (2): our own ``X-Threadline-Ref`` header, stamped on outbound mail, names the parent."""

from __future__ import annotations

from typing import Any

from pipeline.correlation.methods.base import Match, MailFacts, Method, MethodStrategy


def parse_xref(value: str) -> dict[str, str]:
    """``X-Threadline-Ref: instance=threadline; ref=<id@host>; regarding=SUPP-1`` -> fields."""
    fields: dict[str, str] = {}
    for part in value.split(";"):
        key, sep, item = part.partition("=")
        if sep and key.strip():
            fields[key.strip().lower()] = item.strip()
    return fields


def format_xref(instance_id: str, ref: str, regarding: str | None = None) -> str:
    value = f"instance={instance_id}; ref={ref}"
    return f"{value}; regarding={regarding}" if regarding else value


class XHeader(MethodStrategy):
    code = Method.XHEADER
    label = "XHeader"
    switch = "use_xheader"

    def match(self, correlator, facts: MailFacts) -> Match | None:
        settings = correlator.settings
        mail = facts.mail
        if not mail.xref:
            return None
        xref = parse_xref(mail.xref)
        ref = xref.get("ref")
        if xref.get("instance") == settings.instance_id and ref and ref != mail.message_id:
            parent = correlator.index.get(ref)
            if parent is not None and correlator.in_window(parent, facts.ts):
                return Match(self.code, parent, 1, {"header": settings.xheader_name, "ref": ref})
        return None

    def explain(self, evidence: dict[str, Any]) -> str:
        return f"our own header {evidence.get('header')} names {evidence.get('ref')}"
