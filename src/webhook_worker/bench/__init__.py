"""``webhook-worker bench``: the project's own load benchmark (docs/performance.md).

One module per part of a run:

- ``payloads``: the bodies sent (a GitHub push of about 7 KB, a small and a large one), each
  with one field that changes per request so every body and signature is new.
- ``load``: the load generator, run as a separate process (``python -m
  webhook_worker.bench.load``): raw HTTP/1.1 keep-alive over asyncio streams, to 127.0.0.1 only.
- ``ceiling``: the bare handler on the same HTTP stack (read the body, verify the HMAC, answer);
  ``sink``: the forward target of a forward benchmark. Both run as processes of their own.
- ``deployment``: starting ``api`` and ``worker`` (or ``run``) as processes, or attaching to a
  running deployment, and stopping and cleaning up again.
- ``observe``: what is read while the load runs (stored count, queue depth, RSS).
- ``storage``: the retention soak (``--retention``): database size and events stored over time,
  the sweeps seen in the worker's metrics, ingest latency during and between them.
- ``runner``: one benchmark from start to report; ``report``: the table and the JSON.
"""

from webhook_worker.errors import WebhookWorkerError


class BenchError(WebhookWorkerError):
    """The benchmark could not run or lost events. The message says what and where to look."""
