"""Mail as data: RFC 5322 bytes to an immutable MailRecord (parse, content, bounces), the mail
sources (mbox, maildir, .eml) and the hostile-mail generator. Pure: no broker, no store, no server."""
