"""Campaign sending (issue 6, docs/campaigns.md): templates with merge fields, recipient lists,
suppressions (one-click unsubscribe, RFC 8058) and a rate-limited, resumable SMTP sender."""
