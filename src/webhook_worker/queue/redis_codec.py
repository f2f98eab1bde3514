"""How a :class:`Message` is laid out as the fields of a Redis stream entry (and of the hash
that holds it while it waits for a retry): raw bytes, no base64, absent optionals left out."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from webhook_worker.constants import (
    FIELD_ATTEMPT,
    FIELD_BODY,
    FIELD_DELIVERY_ID,
    FIELD_DESTINATION,
    FIELD_EVENT_ID,
    FIELD_EVENT_TYPE,
    FIELD_HEADERS,
    FIELD_ORDERING,
    FIELD_RECEIVED_AT,
    FIELD_RETRY_FROM,
    FIELD_TOOL_ID,
    FIELD_TRACEPARENT,
)
from webhook_worker.queue.base import Message
from webhook_worker.queue.positions import decode_ordering, encode_ordering


def encode(message: Message, *, ordering: bool = True) -> list[bytes]:
    """The entry's fields, name and value in turn. ``ordering=False`` leaves the positions
    out: the enqueue script writes them itself, once it has given the seqs."""
    fields = [
        FIELD_EVENT_ID,
        message.event_id.encode(),
        FIELD_TOOL_ID,
        message.tool_id.encode(),
        FIELD_DELIVERY_ID,
        message.delivery_id.encode(),
        FIELD_RECEIVED_AT,
        repr(float(message.received_at)).encode(),
        FIELD_HEADERS,
        message.headers,
        FIELD_BODY,
        message.body,
    ]
    # Absent optional fields are omitted, so None and "" stay distinct on the way back.
    if message.event_type is not None:
        fields += [FIELD_EVENT_TYPE, message.event_type.encode()]
    if message.traceparent is not None:
        fields += [FIELD_TRACEPARENT, message.traceparent.encode()]
    if message.attempt:
        fields += [FIELD_ATTEMPT, str(message.attempt).encode()]
    if message.retry_from is not None:
        fields += [FIELD_RETRY_FROM, repr(float(message.retry_from)).encode()]
    if message.destination_id is not None:
        fields += [FIELD_DESTINATION, message.destination_id.encode()]
    text = encode_ordering(message.ordering) if ordering else None
    if text is not None:
        fields += [FIELD_ORDERING, text.encode()]
    return fields


def pairs(fields: list[bytes]) -> Iterator[tuple[bytes, bytes]]:
    return zip(fields[::2], fields[1::2], strict=True)


def decode(fields: Mapping[bytes, bytes]) -> Message:
    """Raises KeyError for a missing field, ValueError (UnicodeDecodeError) for a bad one."""
    event_type = fields.get(FIELD_EVENT_TYPE)
    traceparent = fields.get(FIELD_TRACEPARENT)
    retry_from = fields.get(FIELD_RETRY_FROM)
    destination = fields.get(FIELD_DESTINATION)
    return Message(
        event_id=fields[FIELD_EVENT_ID].decode(),
        tool_id=fields[FIELD_TOOL_ID].decode(),
        event_type=None if event_type is None else event_type.decode(),
        delivery_id=fields[FIELD_DELIVERY_ID].decode(),
        received_at=float(fields[FIELD_RECEIVED_AT]),
        headers=fields[FIELD_HEADERS],
        body=fields[FIELD_BODY],
        traceparent=None if traceparent is None else traceparent.decode(),
        attempt=int(fields.get(FIELD_ATTEMPT, b"0")),
        retry_from=None if retry_from is None else float(retry_from),
        destination_id=None if destination is None else destination.decode(),
        ordering=decode_ordering(fields.get(FIELD_ORDERING)),
    )
