"""``threadline smtp``: the SMTP relay that records every mail in ``mail.raw`` before it leaves
(docs/smtp.md): ``stamp`` (pure), ``policy``, ``spool`` and the ``server``."""
