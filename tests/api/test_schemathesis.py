"""schemathesis against ``/openapi.json``: every ``/api/v1`` operation, on the embedded SQLite
backend and on PostgreSQL with Redis Streams, through a real uvicorn server.

Each operation gets valid requests (positive), invalid ones (negative) and requests whose path ids
name rows that exist (a seeded tool, events and dead letters), with and without the admin token.
Every answer must be below 500 and conform to the schema: a documented status code, the
documented content type and a body that validates against the documented schema. Invalid
requests must be refused with a 4xx.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok

from tests.api.support import uvicorn_serving
from tests.support import serving
from webhook_worker.config import Settings
from webhook_worker.ids import new_id
from webhook_worker.runtime import Runtime, open_runtime
from webhook_worker.storage.deadletters import upsert_dead_letters
from webhook_worker.storage.events import insert_attempts, insert_events
from webhook_worker.storage.records import AttemptRecord, DeadLetterRecord, EventRecord
from webhook_worker.vocabulary import AttemptOutcome, DeadLetterStatus, ErrorClass, EventStatus

ADMIN_TOKEN = "schemathesis-admin-t0ken"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Examples per operation and kind of request; 17 operations, so about 17 * (50 + 40 + 30) requests
# per backend.
POSITIVE_EXAMPLES = 50
NEGATIVE_EXAMPLES = 40
SEEDED_EXAMPLES = 30


@dataclass
class Seeded:
    tool_ids: list[str]
    event_ids: list[str]
    dlq_ids: list[str]
    destination_ids: list[str]

    def path_values(self) -> dict[str, list[str]]:
        return {
            "tool_id": self.tool_ids,
            "event_id": self.event_ids,
            "dlq_id": self.dlq_ids,
            "destination_id": self.destination_ids,
        }


async def seed(runtime: Runtime) -> Seeded:
    """A tool, events (one with attempts, one transformed, one not JSON) and dead letters in
    each status, so the seeded requests reach past 404."""
    await runtime.tool_service.create(
        {
            "id": "demo",
            "provider": "github",
            "auth": {"secret": "hmac-s3cret"},
            "description": "seeded",
            "destinations": [{"id": "billing", "url": "https://billing.example.com/in"}],
        }
    )
    now = datetime.now(UTC)
    bodies = [b'{"n": 1}', b"\xff\xfe not json", b'{"deep": [[[["x"]]]]}', b""]
    events = [
        EventRecord(
            id=new_id(),
            tool_id="demo",
            event_type="push" if index % 2 else None,
            delivery_id=f"delivery-{index}",
            status=EventStatus.DEAD if index < 3 else EventStatus.PROCESSED,
            received_at=now - timedelta(minutes=10 - index),
            processed_at=now - timedelta(minutes=9 - index),
            headers={"content-type": "application/json"},
            body=body,
            payload={"summary": index} if index == 2 else None,
            attempt_count=1,
        )
        for index, body in enumerate(bodies)
    ]
    statuses = (DeadLetterStatus.PENDING, DeadLetterStatus.DISCARDED, DeadLetterStatus.RESOLVED)
    letters = [
        DeadLetterRecord(
            id=new_id(),
            event_id=event.id,
            tool_id="demo",
            event_type=event.event_type,
            error="forward answered 400",
            error_class=ErrorClass.HTTP_4XX,
            retryable=False,
            retry_count=0,
            status=status,
            created_at=now,
            updated_at=now,
            next_retry_at=None,
            destination_id="default",
        )
        for event, status in zip(events, statuses, strict=False)
    ]
    async with runtime.db.begin() as conn:
        await insert_events(conn, events)
        await insert_attempts(
            conn,
            [
                AttemptRecord(
                    event_id=events[0].id,
                    attempt=1,
                    started_at=now,
                    duration_ms=3.5,
                    outcome=AttemptOutcome.DEAD,
                    error_class=ErrorClass.HTTP_4XX,
                    error="forward answered 400",
                    http_status=400,
                    destination_id="default",
                )
            ],
        )
        await upsert_dead_letters(conn, letters)
    return Seeded(["demo"], [e.id for e in events], [d.id for d in letters], ["billing"])


def exercise(session: requests.Session, strategy: Any, examples: int, extra: list[Any]) -> int:
    """Send ``examples`` cases drawn from ``strategy`` (mostly with the admin token, some with a
    wrong one or none) and validate each answer; the number sent."""
    sent = 0

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy, token=st.sampled_from([ADMIN_TOKEN] * 4 + [None, "wrong"]))
    def check(case: Any, token: str | None) -> None:
        nonlocal sent
        # An empty list or object in the query goes out as nothing at all, so such a "negative"
        # case would be a valid request on the wire.
        assume(not any(value in ([], {}) for value in (case.query or {}).values()))
        sent += 1
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # Without the right token every operation answers 401, whatever else the request holds.
        checks = CHECKS + extra if token == ADMIN_TOKEN else CHECKS
        case.call_and_validate(session=session, headers=headers, checks=checks, timeout=30)

    check()
    return sent


def positive_with_path(
    operation: APIOperation[Any, Any, Any, Any], path_parameters: dict[str, str]
) -> st.SearchStrategy[Case[Any]]:
    """Valid requests to ``operation`` whose path ids are ``path_parameters``."""
    return operation.as_strategy(GenerationMode.POSITIVE, path_parameters=path_parameters)


def run_schemathesis(base_url: str, seeded: Seeded) -> tuple[int, list[str]]:
    """Every /api/v1 operation; the number of requests sent and one line per failure."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json").include(
        path_regex=r"^/api/v1/"
    )
    session = requests.Session()
    sent = 0
    failures: list[str] = []
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operations.append(result.ok())
    assert len(operations) == 19, [op.label for op in operations]

    for operation in operations:
        path_names = [p.name for p in operation.path_parameters]
        runs: list[tuple[str, Any, int, list[Any]]] = [
            ("positive", operation.as_strategy(GenerationMode.POSITIVE), POSITIVE_EXAMPLES, []),
        ]
        if operation.query or operation.body:
            negative = operation.as_strategy(GenerationMode.NEGATIVE)
            runs.append(("negative", negative, NEGATIVE_EXAMPLES, [negative_data_rejection]))
        if path_names:
            values = seeded.path_values()
            seeded_ids = st.fixed_dictionaries(
                {name: st.sampled_from(values[name]) for name in path_names}
            )
            strategy = seeded_ids.flatmap(functools.partial(positive_with_path, operation))
            runs.append(("seeded", strategy, SEEDED_EXAMPLES, []))

        for kind, strategy, examples, extra in runs:
            try:
                sent += exercise(session, strategy, examples, extra)
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup
                failures.append(f"{operation.label} [{kind}]: {type(exc).__name__}: {exc}")
    return sent, failures


@pytest.mark.slow
@pytest.mark.parametrize("backend_settings", ["sqlite", "postgresql+redis"], indirect=True)
async def test_management_api_conforms_to_its_schema(backend_settings: Settings) -> None:
    settings = replace(backend_settings, admin_token=ADMIN_TOKEN)
    async with open_runtime(settings, migrate_first=True) as runtime:
        seeded = await seed(runtime)
        async with uvicorn_serving(runtime) as base_url:
            sent, failures = await asyncio.to_thread(run_schemathesis, base_url, seeded)
    assert not failures, "\n\n".join(failures)
    assert sent >= 14 * POSITIVE_EXAMPLES


# Requests schemathesis found answering 500, kept as fixed cases: (method, url, JSON body,
# expected status).
FOUND: list[tuple[str, str, Any, int]] = [
    ("GET", "/api/v1/events/%00", None, 404),
    ("GET", "/api/v1/tools/a%00b", None, 404),
    ("GET", "/api/v1/tools/%0AB%3B", None, 404),  # a newline once missed the /api/v1 mount
    ("DELETE", "/api/v1/dlq/%00", None, 404),
    ("POST", "/api/v1/events/%00/replay", None, 404),
    ("GET", "/api/v1/events?event_type=a%00b", None, 400),
    ("GET", "/api/v1/dlq?error_class=%00", None, 400),
    ("GET", "/api/v1/events?since=0001-01-01T00:00:00%2B01:00", None, 400),
    ("GET", "/api/v1/dlq?until=9999-12-31T23:59:59-01:00", None, 400),
    ("GET", "/api/v1/events?limit=%C2%B2", None, 400),
    ("GET", "/api/v1/events?stauts=dead", None, 400),
    ("POST", "/api/v1/dlq/retry", {"error_class": "a\x00b"}, 400),
    ("POST", "/api/v1/dlq/retry", {"since": "0001-01-01T00:00:00+01:00"}, 400),
    ("POST", "/api/v1/dlq/retry", {"since": 5}, 400),
    ("POST", "/api/v1/dlq/retry", {"until": False}, 400),
    ("POST", "/api/v1/dlq/retry", {"limit": 5}, 400),
    ("POST", "/api/v1/tools", {"id": "nul", "description": "a\x00b"}, 400),
    ("PUT", "/api/v1/tools/demo", {"auth": {"type": "none"}, "events": {"\x00": {}}}, 400),
    # A newline in a path id: the /api/v1 mount does not match it; the answer is JSON all the same.
    ("PUT", "/api/v1/tools/x%0Ay", {"auth": {"type": "none"}}, 404),
    ("PATCH", "/api/v1/tools/%0A", {}, 404),
    ("GET", "/api/v1/x%0Ay", None, 404),
]


@pytest.mark.parametrize("backend_settings", ["sqlite", "postgresql+redis"], indirect=True)
async def test_inputs_that_once_answered_500(backend_settings: Settings) -> None:
    settings = replace(backend_settings, admin_token=ADMIN_TOKEN)
    async with open_runtime(settings, migrate_first=True) as runtime:
        await seed(runtime)
        async with serving(runtime) as client:
            answers = [
                await client.request(
                    method,
                    url,
                    content=None if body is None else orjson.dumps(body),
                    headers={
                        "Authorization": f"Bearer {ADMIN_TOKEN}",
                        "Content-Type": "application/json",
                    },
                )
                for method, url, body, _ in FOUND
            ]
    wrong = [
        f"{method} {url}: {answer.status_code} {answer.text[:200]}"
        for (method, url, _, status), answer in zip(FOUND, answers, strict=True)
        if answer.status_code != status
        or answer.headers["content-type"] != "application/json"
        or "error" not in answer.json()
    ]
    assert not wrong, "\n".join(wrong)
