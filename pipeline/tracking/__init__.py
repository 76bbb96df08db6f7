"""Open and click tracking (DESIGN.md §5), pure: signed tokens, hit classification, marking of
outbound mail.  No Kafka, Faust, ClickHouse or HTTP here; the endpoint and the stream processor
inject facts (time, previous hits, settings) and do the I/O."""
