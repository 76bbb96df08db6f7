"""Gateways: the edge servers and clients that move mail and hits between the outside world and
the broker — the SMTP relay (``smtp/``), the IMAP poller, the tracking HTTP endpoint and the alert
notifier.  They use the domain packages (mail, correlation, tracking, campaigns) and the Kafka
plumbing, never the stream agents (``pipeline.streams``)."""
