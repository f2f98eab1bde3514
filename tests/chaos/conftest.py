"""Fixtures of the chaos suite: sizes, clusters of real processes, a private PostgreSQL; and the
session's figures, written to ``tests/chaos/.results/<label>.json`` and shown after the run."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.chaos.harness import RESULTS, RESULTS_DIR, Cluster, QueueProbe, Sizes
from tests.chaos.postgres import PostgresServer
from tests.conftest import REDIS_URL
from tests.support import Processes, free_port
from webhook_worker.storage.database import Database

# Settings the processes must not inherit from whoever runs the tests.
_OWN_PREFIXES = (
    "DATABASE_",
    "REDIS_",
    "WORKER_",
    "API_",
    "HEALTH_",
    "RETRY_",
    "ALLOW_PRIVATE_FORWARD",
    "TOOLS_",
    "DLQ_",
    "ADMIN_TOKEN",
    "SECRETS_KEY",
    "LOG_",
    "OTEL_",
)

ClusterFactory = Callable[..., Cluster]

OnQueue = tuple[str, Callable[..., Cluster], QueueProbe]
"""``(name, start, probe)`` of :func:`on_queue`."""

CHAOS_TIMEOUT = 600
"""Seconds per chaos test before it fails as hung. At CI size one takes up to ~30 s on a quiet
machine and at full size (`make chaos`) up to ~100 s (docs/reliability.md); a busy machine is
several times slower, and each test's own waits already fail after 60 s without progress."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this directory ``chaos`` (left out of `make test-fast`), with its
    timeout."""
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(pytest.mark.chaos)
            item.add_marker(pytest.mark.timeout(CHAOS_TIMEOUT))


@pytest.fixture
def sizes() -> Sizes:
    return Sizes.from_env()


@pytest.fixture
def start_cluster(tmp_path: Path) -> Iterator[ClusterFactory]:
    """``start_cluster(database_url, redis_addr=..., **env)``: a :class:`Cluster` whose
    processes share that database and queue (the database queue when ``redis_addr`` is None).
    Every process still running at the end is killed."""
    clusters: list[Cluster] = []

    def make(
        database_url: str,
        *,
        redis_addr: str | None = None,
        redis_password: str | None = None,
        redis_prefix: str | None = None,
        **extra: str,
    ) -> Cluster:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
        env.update(
            DATABASE_URL=database_url,
            API_ADDR=f"127.0.0.1:{free_port()}",
            WORKER_RECLAIM_IDLE="1s",
            TOOLS_REFRESH_INTERVAL="200ms",
            LOG_LEVEL="info",
            LOG_FORMAT="json",
        )
        if redis_addr is not None:
            env["REDIS_ADDR"] = redis_addr
            if redis_password is not None:
                env["REDIS_PASSWORD"] = redis_password
            if redis_prefix is not None:
                env["REDIS_KEY_PREFIX"] = redis_prefix
        env.update(extra)
        logs = tmp_path / f"cluster-{len(clusters)}"
        logs.mkdir()
        cluster = Cluster(Processes(env, logs))
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.processes.stop_all()


@pytest.fixture(params=["redis", "database-queue"])
def on_queue(
    request: pytest.FixtureRequest,
    start_cluster: ClusterFactory,
    postgres_db: Database,
    postgres_server_url: str,
    redis_prefix: str,
) -> OnQueue:
    """Each test using this runs twice: on PostgreSQL with the shared Redis (a key prefix of its
    own) and on PostgreSQL with the database queue. ``start(**env)`` makes the cluster,
    ``probe`` reads that queue."""
    if request.param == "redis":
        redis: aioredis.Redis = request.getfixturevalue("redis_client")  # cleans the prefix up
        start = functools.partial(
            start_cluster,
            postgres_server_url,
            redis_addr=REDIS_URL.split("://", 1)[1].split("/", 1)[0],
            redis_prefix=redis_prefix,
        )
        return request.param, start, QueueProbe(redis=redis, prefix=redis_prefix)
    return (
        request.param,
        functools.partial(start_cluster, postgres_server_url),
        QueueProbe(db=postgres_db),
    )


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own (it may stop and start it); removed afterwards."""
    server = PostgresServer()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.destroy()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Merge this session's figures into ``<label>.json``: a test run again replaces its
    entry, the others' stay."""
    if not RESULTS:
        return
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{RESULTS[0]['label']}.json"
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        kept = []
    ran = {summary["test"] for summary in RESULTS}
    merged = [summary for summary in kept if summary.get("test") not in ran] + RESULTS
    path.write_text(json.dumps(sorted(merged, key=lambda s: s["test"]), indent=2) + "\n")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    terminalreporter.section("chaos figures")
    for summary in RESULTS:
        terminalreporter.write_line(json.dumps(summary))
