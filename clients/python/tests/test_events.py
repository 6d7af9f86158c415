"""The `events` setting (`TANDEM_EVENTS`): on, a submit writes one
`submitted` event to its class's events stream; off, none (the scripts'
quiet variant). No worker runs here, so nothing else writes events."""

import asyncio

import pytest

from conftest import Fleet

from tandem import AsyncClient, Client, Task


def events_of(server, cls):
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in server.conn().xrange(f"tandem:{{{cls}}}:events")
    ]


def test_with_events_on_a_submit_writes_one_submitted_event(redis_server):
    with Client(redis_server.url, events=True) as client:
        task = client.submit("noop")
        delayed = client.submit("echo", [1], delay=60)
    events = events_of(redis_server, "cpu")
    assert [(e["event"], e["id"]) for e in events] == [("submitted", task), ("submitted", delayed)]
    assert events[0]["kind"] == "noop" and events[0]["class"] == "cpu" and int(events[0]["at_ms"]) > 0


def test_with_events_off_a_submit_writes_none(redis_server, monkeypatch):
    with Client(redis_server.url, events=False) as client:
        task = client.submit("noop")
        client.submit_many([Task("echo", [1]), Task("noop", delay=60)])
        assert client.status(task) == "queued"
        assert client.cancel(task) == "cancelled"
    # The environment variable says the same, for the asyncio client too.
    monkeypatch.setenv("TANDEM_EVENTS", "false")

    async def go():
        async with AsyncClient(redis_server.url) as client:
            assert client.settings.events is False
            await client.submit("noop")

    asyncio.run(go())
    conn = redis_server.conn()
    assert len(conn.keys("tandem:{cpu}:task:*")) == 4, "the tasks were submitted"
    assert not conn.exists("tandem:{cpu}:events"), events_of(redis_server, "cpu")
    # And back on: the next submit writes its event.
    monkeypatch.setenv("TANDEM_EVENTS", "true")
    with Client(redis_server.url) as client:
        task = client.submit("noop")
    assert [(e["event"], e["id"]) for e in events_of(redis_server, "cpu")] == [("submitted", task)]


@pytest.mark.parametrize("events", [True, False])
def test_cancel_writes_an_event_only_with_events_on(redis_server, events):
    with Client(redis_server.url, events=events) as client:
        task = client.submit("noop", delay=3600)
        assert client.cancel(task) == "cancelled"
    names = [e["event"] for e in events_of(redis_server, "cpu") if e["id"] == task]
    assert names == (["submitted", "cancelled"] if events else [])


def test_progress_with_events_off_on_the_workers_ends_with_the_task():
    """No `progress` events to wake the reader: it yields the record's
    report and ends once a read that found nothing finds the task final."""
    fleet = Fleet({"TANDEM_TEST_KINDS": "true", "TANDEM_EVENTS": "false", "TANDEM_PROGRESS_INTERVAL_MS": "50"})
    try:
        with Client(fleet.url, events=False) as client:
            task = client.submit("spin", {"ms": 300, "ignore_stop": False}, cls="cpu")
            reports = list(client.progress(task))
            assert client.status(task) == "succeeded"
            last = client.last_progress(task)
            assert last is not None and reports and reports[-1] == last
            assert not fleet.redis.conn().exists("tandem:{cpu}:events")
    finally:
        fleet.close()
