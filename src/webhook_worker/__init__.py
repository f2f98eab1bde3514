"""webhook-worker: receive webhooks from any provider and process them reliably.

The pipeline, one package per room::

    api/      ingest (verify, de-duplicate, enqueue, 202) and the management API
    queue/    the queue Protocol with Redis Streams and database implementations
    worker/   consumes batches and stores (later: transforms and forwards) events
    storage/  tables, migrations and the queries on them
"""

__version__ = "0.1.0"
