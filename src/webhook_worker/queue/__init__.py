"""The queue between ingest and workers: one Protocol, Redis Streams and database versions."""
