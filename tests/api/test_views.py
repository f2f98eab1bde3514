"""The JSON views of stored rows and the page cursor: pure functions, no database."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone

import pytest

from webhook_worker.api.cursor import decode_cursor, encode_cursor, next_cursor
from webhook_worker.api.views import dead_letter_view, event_view, page_view
from webhook_worker.storage.rows import AttemptRow, DeadLetterRow, DeliveryRow, EventRow, Page
from webhook_worker.vocabulary import DeadLetterStatus, DeliveryStatus, EventStatus

WHEN = datetime(2024, 1, 15, 10, 0, tzinfo=UTC)
EVENT_ID = "01900000-0000-7000-8000-000000000001"
LETTER_ID = "01900000-0000-7000-8000-0000000000d1"


def event(**fields: object) -> EventRow:
    values: dict[str, object] = {
        "id": EVENT_ID,
        "tool_id": "demo",
        "event_type": "push",
        "delivery_id": "delivery-1",
        "status": EventStatus.PROCESSED,
        "received_at": WHEN,
        "processed_at": WHEN + timedelta(seconds=1, microseconds=250),
        "headers": {"content-type": "application/json"},
        "body": b'{"n": 1}',
        "payload": None,
        "attempt_count": 0,
        "attempts": (),
    }
    values.update(fields)
    return EventRow(**values)  # type: ignore[arg-type]


def letter(**fields: object) -> DeadLetterRow:
    values: dict[str, object] = {
        "id": LETTER_ID,
        "event_id": EVENT_ID,
        "destination_id": None,
        "tool_id": "demo",
        "event_type": None,
        "error": "forward answered 400",
        "error_class": "http_4xx",
        "retryable": False,
        "retry_count": 2,
        "status": DeadLetterStatus.PENDING,
        "created_at": WHEN,
        "updated_at": WHEN + timedelta(minutes=1),
        "last_retry_at": None,
        "next_retry_at": WHEN + timedelta(hours=1),
    }
    values.update(fields)
    return DeadLetterRow(**values)  # type: ignore[arg-type]


def test_an_event_view_is_the_spec_shape() -> None:
    attempt = AttemptRow(
        attempt=1,
        started_at=WHEN,
        duration_ms=12.34567,
        outcome="forwarded",
        error_class=None,
        error=None,
        http_status=200,
        destination_id="default",
    )
    delivery = DeliveryRow("default", DeliveryStatus.DELIVERED, 1, None, WHEN)
    attempt_json = {
        "attempt": 1,
        "started_at": "2024-01-15T10:00:00Z",
        "duration_ms": 12.346,
        "outcome": "forwarded",
        "error_class": None,
        "error": None,
        "http_status": 200,
        "destination_id": "default",
    }
    shown = event_view(event(attempts=(attempt,), attempt_count=1, deliveries=(delivery,)))
    assert shown == {
        "id": EVENT_ID,
        "tool_id": "demo",
        "event_type": "push",
        "delivery_id": "delivery-1",
        "status": "processed",
        "received_at": "2024-01-15T10:00:00Z",
        "processed_at": "2024-01-15T10:00:01.000250Z",
        "payload": {"n": 1},
        "headers": {"content-type": "application/json"},
        "attempts": [attempt_json],
        "deliveries": [
            {
                "destination_id": "default",
                "status": "delivered",
                "attempt_count": 1,
                "next_attempt_at": None,
                "updated_at": "2024-01-15T10:00:00Z",
                "attempts": [attempt_json],
            }
        ],
    }


def test_raw_payload_appears_only_when_a_transform_stored_something_else() -> None:
    transformed = event_view(event(payload={"summary": 1}))
    assert transformed["payload"] == {"summary": 1}
    assert transformed["raw_payload"] == {"n": 1}
    assert "raw_payload" not in event_view(event())


def test_a_body_that_is_not_json_is_shown_as_text() -> None:
    view = event_view(event(body=b"\xff\xfe not json", processed_at=None))
    assert view["payload"] == "\ufffd\ufffd not json"
    assert view["processed_at"] is None


def test_statuses_are_plain_wire_words() -> None:
    assert type(event_view(event())["status"]) is str
    assert type(dead_letter_view(letter())["status"]) is str


def test_times_in_other_zones_are_shown_in_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    view = event_view(event(received_at=datetime(2024, 1, 15, 12, 0, tzinfo=plus_two)))
    assert view["received_at"] == "2024-01-15T10:00:00Z"


def test_a_dead_letter_view_is_the_spec_shape_with_its_event_when_given() -> None:
    expected = {
        "id": LETTER_ID,
        "event_id": EVENT_ID,
        "destination_id": None,
        "tool_id": "demo",
        "event_type": None,
        "error": "forward answered 400",
        "error_class": "http_4xx",
        "retryable": False,
        "retry_count": 2,
        "status": "pending",
        "created_at": "2024-01-15T10:00:00Z",
        "last_retry_at": None,
        "next_retry_at": "2024-01-15T11:00:00Z",
    }
    assert dead_letter_view(letter()) == expected
    assert dead_letter_view(letter(), event()) == {**expected, "event": event_view(event())}


def test_a_page_view_carries_the_cursor_of_its_last_item() -> None:
    more = page_view(Page([letter()], after=LETTER_ID), dead_letter_view)
    assert more["items"] == [dead_letter_view(letter())]
    assert decode_cursor(more["next_cursor"]) == LETTER_ID
    assert page_view(Page([], after=None), dead_letter_view) == {"items": [], "next_cursor": None}
    assert next_cursor(Page([1], after=None)) is None


@pytest.mark.parametrize(
    "position",
    [EVENT_ID, "00000000-0000-0000-0000-000000000000", "ffffffff-ffff-7fff-bfff-ffffffffffff"],
)
def test_a_cursor_round_trips_and_is_url_safe(position: str) -> None:
    cursor = encode_cursor(position)
    assert decode_cursor(cursor) == position
    assert "=" not in cursor and "/" not in cursor and "+" not in cursor


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "not a cursor",
        "a=b",
        "abc",  # base64 of bytes that are not UTF-8
        "Zm9v",  # "foo": UTF-8, not an id
        base64.urlsafe_b64encode(b"01900000-0000-7000-8000-00000000000").decode(),  # one short
        encode_cursor(EVENT_ID) + "==",
        encode_cursor(EVENT_ID)[:-1],
        "\u00e9t\u00e9",
        encode_cursor(EVENT_ID) + "\n",
    ],
)
def test_a_cursor_this_api_did_not_return_is_a_value_error_naming_cursor(cursor: str) -> None:
    with pytest.raises(ValueError, match=r"^cursor: "):
        decode_cursor(cursor)
