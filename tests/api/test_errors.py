"""Errors are the HTTP contract: each error a request can cause answers with its class's status
and code through the real app, the tree drawn in errors.py is the real hierarchy, routing
mistakes answer JSON, and anything unexpected is a logged 500 ``internal_error``."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

import webhook_worker.api.app  # noqa: F401  (imports the subclasses defined outside errors.py)
from tests.support import RedisServer, serving
from webhook_worker import errors
from webhook_worker.config import Settings
from webhook_worker.errors import (
    BadRequestError,
    ConflictError,
    DatabaseUnavailableError,
    NotFoundError,
    QueueUnavailableError,
    RequestError,
    ToolConfigError,
    UnavailableError,
    WebhookWorkerError,
)
from webhook_worker.ids import new_id
from webhook_worker.replay import Replayer
from webhook_worker.runtime import Runtime, open_runtime
from webhook_worker.storage.database import Database
from webhook_worker.storage.deadletters import upsert_dead_letters
from webhook_worker.storage.events import insert_events
from webhook_worker.storage.records import DeadLetterRecord, EventRecord
from webhook_worker.vocabulary import DeadLetterStatus, EventStatus

ADMIN_TOKEN = "err0rs-admin-t0ken"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


# The documented tree


def _subclasses(cls: type[WebhookWorkerError]) -> Iterator[type[WebhookWorkerError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _documented_tree() -> dict[str, tuple[str | None, str]]:
    """``{class name: (parent name, the rest of its line)}`` from the drawing in errors.py."""
    assert errors.__doc__ is not None
    drawing = errors.__doc__.split("::", 1)[1]
    tree: dict[str, tuple[str | None, str]] = {}
    ancestors: list[str] = []
    margin: int | None = None
    for line in drawing.splitlines():
        found = re.search(r"\b([A-Z]\w*Error)\b(.*)", line)
        if found is None:
            continue
        # The root sits at the margin; each level below is four columns ("├── ", "│   ").
        margin = found.start() if margin is None else margin
        depth = (found.start() - margin) // 4
        del ancestors[depth:]
        tree[found[1]] = (ancestors[-1] if ancestors else None, found[2])
        ancestors.append(found[1])
    return tree


def test_the_drawn_tree_is_the_class_hierarchy() -> None:
    tree = _documented_tree()
    classes: list[type[WebhookWorkerError]] = [WebhookWorkerError, *_subclasses(WebhookWorkerError)]
    defined = {cls.__name__: cls for cls in classes if cls.__module__ == errors.__name__}
    assert set(tree) == set(defined)
    for name, (parent, _) in tree.items():
        bases = [base.__name__ for base in defined[name].__bases__]
        assert bases == ([parent] if parent else ["Exception"]), name


def test_the_drawn_status_and_code_are_the_classes() -> None:
    for name, (_, text) in _documented_tree().items():
        cls = getattr(errors, name)
        status = re.match(r"\s*(\d{3})\b", text)
        if status is not None:
            assert int(status[1]) == cls.status_code, name
            code = re.match(r"\s*\d{3},?\s+([a-z_]+)\b", text)
            if code is not None:
                assert code[1] == cls.code, name


def test_errors_defined_elsewhere_answer_as_their_documented_ancestor() -> None:
    """A subclass outside errors.py is fine as long as it adds no answer of its own; one that
    needs a status or code of its own belongs in the drawn tree."""
    for cls in _subclasses(WebhookWorkerError):
        if cls.__module__ != errors.__name__:
            own = {"status_code", "code", "retry_after"} & set(vars(cls))
            assert not own, f"{cls.__module__}.{cls.__name__} sets {own}: add it to errors.py"


# Every error a request can cause, through a real request


class Proxy:
    """A loopback TCP proxy in front of PostgreSQL. Cutting it takes the database away from
    whoever connects through it (live connections dropped, new ones refused) while the shared
    server keeps running."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connected, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, upstream}
        await asyncio.gather(
            _pipe(reader, upstream), _pipe(upstream_reader, writer), return_exceptions=True
        )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.transport.abort()


async def seed_dead_letter(runtime: Runtime, status: str) -> tuple[str, str]:
    """An event and its dead letter in ``status``: ``(event id, dead letter id)``."""
    now = datetime.now(UTC)
    event_id, dlq_id = new_id(), new_id()
    async with runtime.db.begin() as conn:
        await insert_events(
            conn,
            [
                EventRecord(
                    id=event_id,
                    tool_id="demo",
                    event_type="push",
                    delivery_id=f"delivery-{event_id}",
                    status=EventStatus.DEAD,
                    received_at=now,
                    processed_at=now,
                    headers={"content-type": "application/json"},
                    body=b'{"n": 1}',
                    payload=None,
                    attempt_count=1,
                )
            ],
        )
        await upsert_dead_letters(
            conn,
            [
                DeadLetterRecord(
                    id=dlq_id,
                    event_id=event_id,
                    tool_id="demo",
                    event_type="push",
                    error="forward answered 400",
                    error_class="http_4xx",
                    retryable=False,
                    retry_count=0,
                    status=DeadLetterStatus(status),
                    created_at=now,
                    updated_at=now,
                    next_retry_at=None,
                    destination_id="default",
                )
            ],
        )
    return event_id, dlq_id


def _request_errors() -> set[type[WebhookWorkerError]]:
    """The errors a request can cause: every class under RequestError and UnavailableError
    (those two are never raised themselves)."""
    return {
        cls
        for cls in _subclasses(WebhookWorkerError)
        if cls.__module__ == errors.__name__
        and issubclass(cls, RequestError | UnavailableError)
        and cls not in (RequestError, UnavailableError)
    }


async def test_every_error_a_request_can_cause_answers_its_status_and_code(
    redis_server: RedisServer, postgres_db: Database, postgres_server_url: str
) -> None:
    where = urlsplit(postgres_server_url)
    assert where.hostname is not None and where.port is not None
    proxy = Proxy(where.hostname, where.port)
    await proxy.start()
    user = where.netloc.rpartition("@")[0]
    settings = Settings(
        database_url=where._replace(netloc=f"{user}@127.0.0.1:{proxy.port}").geturl(),
        redis_addr=f"127.0.0.1:{redis_server.port}",
        redis_password=redis_server.password,
        redis_key_prefix="errors",
        admin_token=ADMIN_TOKEN,
    )
    answers: dict[type[WebhookWorkerError], httpx.Response] = {}
    async with open_runtime(settings) as runtime, serving(runtime) as client:
        await runtime.tool_service.create({"id": "demo", "auth": {"type": "none"}})
        event_id, _ = await seed_dead_letter(runtime, "pending")
        _, resolved = await seed_dead_letter(runtime, "resolved")

        async def call(method: str, url: str, **kwargs: Any) -> httpx.Response:
            return await client.request(method, url, headers=AUTH, **kwargs)

        answers[BadRequestError] = await call("GET", "/api/v1/events?limit=0")
        answers[ToolConfigError] = await call(
            "POST", "/api/v1/tools", json={"id": "x", "provider": "nope"}
        )
        answers[NotFoundError] = await call("GET", "/api/v1/tools/nope")
        answers[ConflictError] = await call("POST", f"/api/v1/dlq/{resolved}/retry")
        redis_server.stop()
        answers[QueueUnavailableError] = await call("POST", f"/api/v1/events/{event_id}/replay")
        await proxy.cut()
        answers[DatabaseUnavailableError] = await call("GET", "/api/v1/events")

    assert set(answers) == _request_errors(), "a request-caused error without a case here"
    for cls, answer in answers.items():
        body = answer.json()
        assert (answer.status_code, body["error"]) == (cls.status_code, cls.code), answer.text
        assert answer.headers["content-type"] == "application/json"
        assert body["detail"]
    assert answers[BadRequestError].json()["field"] == "limit"
    assert answers[ToolConfigError].json()["field"] == "provider"
    for cls in (QueueUnavailableError, DatabaseUnavailableError):
        answer = answers[cls]
        assert answer.headers["retry-after"] == str(cls.retry_after)
        # The driver's reason names hosts and ports: the log gets it, the caller does not.
        assert "127.0.0.1" not in answer.text
        assert "field" not in answer.json()


# Routing mistakes and the unexpected


@asynccontextmanager
async def embedded(tmp_path: Path, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    configured = Settings(data_dir=tmp_path, **settings)
    async with open_runtime(configured, migrate_first=True) as runtime, serving(runtime) as client:
        yield client


async def test_an_unknown_path_or_method_answers_json(tmp_path: Path) -> None:
    async with embedded(tmp_path, admin_token=ADMIN_TOKEN) as client:
        unknown = await client.get("/api/v1/nothing/here", headers=AUTH)
        wrong = await client.patch("/api/v1/events", headers=AUTH)
        anonymous = await client.get("/api/v1/nothing/here")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/json"
    assert unknown.json()["error"] == "not_found"
    assert wrong.status_code == 405
    assert wrong.headers["content-type"] == "application/json"
    assert wrong.json()["error"] == "method_not_allowed"
    assert set(wrong.headers["allow"].split(", ")) == {"GET", "HEAD"}
    # The access rule comes first: without the token nothing says which paths exist.
    assert anonymous.status_code == 401
    assert anonymous.json()["error"] == "unauthorized"


async def test_an_unexpected_exception_is_a_logged_500_without_its_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cret-in-the-exception"

    async def broken(self: Replayer, event_id: str, destination_id: str | None = None) -> None:
        raise RuntimeError(f"replay broke, token={secret}")

    monkeypatch.setattr(Replayer, "replay_event", broken)
    with caplog.at_level(logging.ERROR):
        async with embedded(tmp_path) as client:
            answer = await client.post(f"/api/v1/events/{new_id()}/replay")
    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["error"] == "internal_error"
    assert secret not in answer.text
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is RuntimeError]
    assert len(logged) == 1
    assert "/api/v1/events/" in logged[0].getMessage()
