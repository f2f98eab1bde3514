"""``EventFilter.search`` (a substring of the body, byte-wise) and the event id range a time
filter adds, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from tests.storage.support import BASE_TIME, event_record, seed
from webhook_worker.storage import partitions
from webhook_worker.storage.database import Database
from webhook_worker.storage.events import ID_MARGIN, EventFilter, EventStore
from webhook_worker.storage.schema import events

BODIES = {
    0: b'{"order": "needle-1", "note": "plain"}',
    1: b'{"order": "Needle-2"}',
    2: b'{"discount": "100%", "code": "a_b"}',
    3: b'{"name": "it\'s", "path": "C:\\\\temp"}',  # a quote and a backslash
    4: b'\xff\xfe{"order": "needle-4"}\x80 not UTF-8',
    5: '{"city": "Zürich"}'.encode(),
    6: b'{"city": "Z\xfcrich"}',  # the same name in Latin-1: other bytes
    7: b'{"discount": "100 percent", "code": "axb"}',
}


async def found(db: Database, **fields: object) -> list[int]:
    """The indexes of the events ``EventFilter(**fields)`` lists, oldest first, checked
    against its count."""
    where = EventFilter(**fields)  # type: ignore[arg-type]
    store = EventStore(db)
    page = await store.list(where, limit=100)
    assert await store.count(where) == len(page.items)
    return sorted(int(event.id.rsplit("-", 1)[1]) for event in page.items)


@pytest.fixture
async def bodies(db: Database) -> Database:
    await seed(
        db,
        [
            event_record(index, body=body, tool_id="other" if index == 4 else "demo")
            for index, body in BODIES.items()
        ],
    )
    return db


async def test_search_finds_a_substring_of_the_body(bodies: Database) -> None:
    assert await found(bodies, search="needle") == [0, 4]
    assert await found(bodies, search='"order": "needle-1"') == [0]
    assert await found(bodies, search="haystack") == []


async def test_search_is_case_sensitive(bodies: Database) -> None:
    assert await found(bodies, search="Needle") == [1]


async def test_pattern_and_quoting_characters_are_literal(bodies: Database) -> None:
    assert await found(bodies, search="%") == [2]
    assert await found(bodies, search="100%") == [2]
    assert await found(bodies, search="a_b") == [2]  # not "axb": _ is no wildcard
    assert await found(bodies, search="_") == [2]
    assert await found(bodies, search="it's") == [3]
    assert await found(bodies, search="'") == [3]
    assert await found(bodies, search="C:\\\\temp") == [3]  # the body's escaped backslash
    assert await found(bodies, search="\\") == [3]
    assert await found(bodies, search='"') == list(BODIES)
    assert await found(bodies, search="*") == []


async def test_a_body_that_is_not_utf8_is_searched_and_breaks_nothing(bodies: Database) -> None:
    assert await found(bodies, search="needle-4") == [4]
    assert await found(bodies, search="not UTF-8") == [4]


async def test_the_text_is_searched_as_utf8_bytes(bodies: Database) -> None:
    assert await found(bodies, search="Zürich") == [5]
    assert await found(bodies, search="ü") == [5]
    assert await found(bodies, search="rich") == [5, 6]


async def test_search_combines_with_the_other_filters(bodies: Database) -> None:
    assert await found(bodies, search="needle", tool_id="demo") == [0]
    assert await found(bodies, search="needle", tool_id="other") == [4]
    assert await found(bodies, search="discount", since=BASE_TIME + timedelta(minutes=3)) == [7]
    assert await found(bodies, search="discount", until=BASE_TIME + timedelta(minutes=3)) == [2]
    window = {"since": BASE_TIME + timedelta(minutes=1), "until": BASE_TIME + timedelta(minutes=5)}
    assert await found(bodies, search="needle", **window) == [4]
    assert await found(bodies, search="needle", tool_id="demo", **window) == []


async def test_time_filters_stay_exact_with_the_id_range(db: Database) -> None:
    """The id range is wider than the time range (ID_MARGIN): the received_at condition still
    decides, to the microsecond."""
    await seed(db, [event_record(i) for i in range(5)])
    edge = BASE_TIME + timedelta(minutes=2)
    assert await found(db, since=edge) == [2, 3, 4]
    assert await found(db, since=edge + timedelta(microseconds=1)) == [3, 4]
    assert await found(db, until=edge) == [0, 1]
    assert await found(db, until=edge + timedelta(microseconds=1)) == [0, 1, 2]
    assert await found(db, since=edge, until=edge + timedelta(microseconds=1)) == [2]


async def test_time_filters_take_any_time(db: Database) -> None:
    await seed(db, [event_record(i) for i in range(2)])
    earliest = datetime(1, 1, 1, tzinfo=UTC)
    latest = datetime(9999, 12, 31, 23, 59, tzinfo=UTC)
    assert await found(db, since=earliest) == [0, 1]
    assert await found(db, until=latest) == [0, 1]
    assert await found(db, until=earliest) == []
    assert await found(db, since=latest) == []


async def test_an_event_just_inside_the_margin_is_found(db: Database) -> None:
    """An id made up to ID_MARGIN before its received_at (a clock step between the two) is
    still inside the id range of a filter starting at that received_at."""
    received = BASE_TIME + timedelta(minutes=1)
    made = partitions.id_bound(received.timestamp() - ID_MARGIN + 0.001)
    await seed(db, [event_record(1, id=f"{made[:13]}-7000-8000-000000000001")])
    assert await found(db, since=received) == [1]


async def test_a_time_filter_reads_only_the_partitions_of_its_range(
    postgres_db: Database,
) -> None:
    """On PostgreSQL the id range prunes the partitions outside the time range: the plan of a
    filtered list or search names only the partition holding it."""
    day = 86_400
    # Days well after the partition the migration left for existing rows (up to a midnight
    # after the test database was made).
    start = (int(datetime.now(UTC).timestamp()) // day + 10) * day
    created = [
        partitions.Partition(partitions.partition_name(events.name, low), low, low + day)
        for low in (start, start + day, start + 2 * day)
    ]
    async with postgres_db.begin() as conn:
        for partition in created:
            await partitions.create(conn, partition)
    try:
        middle = datetime.fromtimestamp(start + day, UTC)
        where = EventFilter(
            tool_id="demo",
            search="needle",
            since=middle + timedelta(hours=1),
            until=middle + timedelta(hours=2),
        )
        query = where.apply(select(events)).order_by(events.c.id.desc()).limit(51)
        async with postgres_db.connect() as conn:
            sql = str(query.compile(conn.sync_connection, compile_kwargs={"literal_binds": True}))
            plan = "\n".join(row[0] for row in await conn.execute(text(f"EXPLAIN {sql}")))
            names = [p.name for p in await partitions.list_partitions(conn)]
        read = [name for name in names if f" {name} " in plan or f" {name}\n" in plan]
        assert read == [created[1].name], plan
        unfiltered = EventFilter(tool_id="demo")
        query = unfiltered.apply(select(events))
        async with postgres_db.connect() as conn:
            sql = str(query.compile(conn.sync_connection, compile_kwargs={"literal_binds": True}))
            plan = "\n".join(row[0] for row in await conn.execute(text(f"EXPLAIN {sql}")))
        assert all(p.name in plan for p in created), plan  # the check can see a partition
    finally:
        async with postgres_db.begin() as conn:
            for partition in created:
                await partitions.drop(conn, partition)


async def test_a_filtered_search_finds_events_in_a_partition_of_their_own(
    postgres_db: Database,
) -> None:
    """Events stored in a dated partition are found by a time filter around them."""
    day = 86_400
    start = (int(datetime.now(UTC).timestamp()) // day + 20) * day
    name = partitions.partition_name(events.name, start)
    partition = partitions.Partition(name, start, start + day)
    async with postgres_db.begin() as conn:
        await partitions.create(conn, partition)
    try:
        received = datetime.fromtimestamp(start + 3600, UTC)
        made = partitions.id_bound(received.timestamp())
        await seed(
            postgres_db,
            [
                event_record(
                    1, id=f"{made[:13]}-7000-8000-000000000001", received_at=received,
                    body=b"inside the needle partition",
                ),
                event_record(2),
            ],
        )  # fmt: skip
        minute = timedelta(minutes=1)
        window = {"since": received - minute, "until": received + minute}
        assert await found(postgres_db, search="needle", **window) == [1]
        assert await found(postgres_db, search="needle") == [1]
        assert await found(postgres_db, **window) == [1]
    finally:
        async with postgres_db.begin() as conn:
            await conn.execute(text("DELETE FROM events"))
            await partitions.drop(conn, partition)
