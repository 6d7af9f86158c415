"""Delays, run-time limits, rate keys and progress against a real fleet:
what the Rust producer's `Task::delay`, `run_at`, `timeout`, `rate_key` and
`TaskHandle::progress()` do, from the sync and asyncio APIs."""

import asyncio
import datetime
import json
import math
import re
import time
from typing import Iterator

import pytest

from conftest import WAIT, Fleet, wait_until

from tandem import AsyncClient, Client, Task, errors

HOUR = 3600


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    """Test kinds on, progress written at most every 50 ms."""
    f = Fleet({"TANDEM_TEST_KINDS": "true", "TANDEM_PROGRESS_INTERVAL_MS": "50"})
    try:
        yield f
    finally:
        f.close()


@pytest.fixture()
def client(fleet):
    with Client(fleet.url) as c:
        yield c


def now_ms():
    return time.time_ns() // 1_000_000


def record_of(fleet, cls, task_id):
    raw = fleet.redis.conn().hgetall(f"tandem:{{{cls}}}:task:{task_id}")
    return {k.decode(): v.decode(errors="backslashreplace") for k, v in raw.items()}


# --- delays -------------------------------------------------------------------


def test_a_delayed_task_is_delayed_until_cancelled(fleet, client):
    before = now_ms()
    task = client.submit("noop", delay=HOUR)
    after = now_ms()
    assert client.status(task) == "delayed"
    record = record_of(fleet, "cpu", task)
    assert record["delay_reason"] == "scheduled"
    # An hour from when Redis took it (the Redis clock: this machine's).
    assert before + HOUR * 1000 <= int(record["run_at_ms"]) <= after + HOUR * 1000
    assert "entry" not in record, "a delayed task is not in its stream yet"
    assert client.cancel(task) == "cancelled"
    assert client.status(task) == "cancelled"
    outcome = client.wait_outcome(task, WAIT)
    assert outcome.status == "cancelled" and outcome.error_code == "CANCELLED"


def test_a_delayed_task_runs_once_its_time_came(fleet, client):
    before = now_ms()
    task = client.submit("noop", delay=datetime.timedelta(milliseconds=300))
    after = now_ms()
    outcome = client.wait_outcome(task, WAIT)
    assert outcome.status == "succeeded", outcome
    record = record_of(fleet, "cpu", task)
    assert before + 300 <= int(record["run_at_ms"]) <= after + 300
    assert int(record["started_at_ms"]) >= int(record["run_at_ms"])


def test_run_at_is_the_time_given_and_cancel_works_from_asyncio(fleet):
    when = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) + datetime.timedelta(hours=2)

    async def go():
        async with AsyncClient(fleet.url) as client:
            task = await client.submit("echo", [1], run_at=when)
            assert await client.status(task) == "delayed"
            record = await client.record(task)
            assert record is not None
            assert int(record["run_at_ms"]) == int(when.timestamp() * 1000)
            assert await client.cancel(task) == "cancelled"
            with pytest.raises(errors.Cancelled):
                await client.wait(task, WAIT)

    asyncio.run(go())


def test_a_run_at_in_the_past_runs_at_once(client):
    past = datetime.datetime(2001, 1, 1, tzinfo=datetime.timezone.utc)
    assert client.wait_outcome(client.submit("noop", run_at=past), WAIT).status == "succeeded"


def test_submit_many_sends_each_tasks_own_options(fleet, client):
    delayed, keyed = client.submit_many(
        [Task("noop", delay=HOUR, timeout=5), Task("echo", [2], rate_key="tenant-many")]
    )
    assert client.status(delayed) == "delayed"
    assert record_of(fleet, "cpu", delayed)["timeout_ms"] == "5000"
    assert client.wait(keyed, WAIT) == [2]
    assert record_of(fleet, "cpu", keyed)["rate_key"] == "tenant-many"
    assert client.cancel(delayed) == "cancelled"


def test_the_entry_and_record_match_the_rust_producers(fleet, client):
    """The same options through `tandem submit` and this client: the same
    record fields and the same parked entry fields."""
    rust = fleet.tandem(
        "submit", "noop", "--delay", "1h", "--rate-key", "tenant-a", "--timeout", "2500ms", "--priority", "low"
    ).stdout.strip()
    ours = client.submit("noop", delay=HOUR, rate_key="tenant-a", timeout=2.5, priority="low")
    conn = fleet.redis.conn()
    rust_record, our_record = record_of(fleet, "cpu", rust), record_of(fleet, "cpu", ours)
    assert sorted(rust_record) == sorted(our_record)
    for name in ("status", "delay_reason", "rate_key", "timeout_ms", "priority", "kind", "class"):
        assert rust_record[name] == our_record[name], name
    assert our_record["timeout_ms"] == "2500" and our_record["status"] == "delayed"
    rust_entry = conn.hgetall(f"tandem:{{cpu}}:retry:{rust}")
    our_entry = conn.hgetall(f"tandem:{{cpu}}:retry:{ours}")
    assert rust_entry and sorted(rust_entry) == sorted(our_entry)
    for task in (rust, ours):
        assert client.cancel(task) == "cancelled"


# --- run-time limits and rate keys ---------------------------------------------


def test_a_task_past_its_timeout_fails_with_timeout(client):
    task = client.submit("spin", {"ms": 600_000, "ignore_stop": False}, cls="cpu", timeout=0.2, max_attempts=1)
    with pytest.raises(errors.TaskTimedOut) as caught:
        client.wait(task, WAIT)
    assert caught.value.code == "TIMEOUT"


def test_a_rate_key_counts_against_its_limit(fleet, client):
    fleet.tandem("limit", "set", "key:py-tenant", "1/h")
    try:
        tasks = client.submit_many([Task("noop", rate_key="py-tenant"), Task("noop", rate_key="py-tenant")])
        # One start an hour: one of them runs, the other waits its turn.
        wait_until(
            "one task to run and the other to be held by the limit",
            lambda: sorted(client.status(t) for t in tasks) == ["delayed", "succeeded"],
        )
        held = next(t for t in tasks if client.status(t) == "delayed")
        assert client.record(held)["delay_reason"] == "limited"
        # Without the key, the same kind runs at once.
        assert client.wait_outcome(client.submit("noop"), WAIT).status == "succeeded"
        assert client.cancel(held) == "cancelled"
    finally:
        fleet.tandem("limit", "rm", "key:py-tenant")


# --- progress -------------------------------------------------------------------


def check_reports(reports, of_ms):
    assert reports, "at least the last report comes"
    for earlier, later in zip(reports, reports[1:]):
        assert earlier.fraction <= later.fraction, reports
    for report in reports:
        assert 0.0 <= report.fraction <= 1.0, report
        assert report.message.startswith("spun ") and report.message.endswith(f" of {of_ms} ms"), report
        assert report.at_ms is not None


def test_progress_yields_each_report_until_the_task_ends(fleet, client):
    task = client.submit("spin", {"ms": 1500, "ignore_stop": False}, cls="cpu")
    reports = list(client.progress(task))  # ends when the task does
    assert client.wait_outcome(task, WAIT).status == "succeeded"
    # A 1.5 s spin reporting every millisecond, written at most every 50 ms.
    assert len(reports) >= 2, reports
    check_reports(reports, 1500)
    # Each report the reader gave is one the worker wrote as an event.
    conn = fleet.redis.conn()
    events = [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in conn.xrange("tandem:{cpu}:events")
    ]
    written = [(float(e["progress"]), e["progress_msg"]) for e in events if e["id"] == task and e["event"] == "progress"]
    assert [(r.fraction, r.message) for r in reports if (r.fraction, r.message) in written] == \
        [(r.fraction, r.message) for r in reports]
    # The record keeps the last one.
    last = client.last_progress(task)
    assert last is not None and (last.fraction, last.message) == (reports[-1].fraction, reports[-1].message)
    record = client.record(task)
    assert record["progress_msg"] == last.message and int(record["progress_at_ms"]) == last.at_ms


def test_progress_of_a_finished_task_is_its_last_report(client):
    task = client.submit("spin", {"ms": 200, "ignore_stop": False}, cls="cpu")
    client.wait(task, WAIT)
    reports = list(client.progress(task))
    assert len(reports) == 1 and reports[0] == client.last_progress(task)
    assert list(client.progress(client.submit("noop"))) == [], "noop reports nothing; the reader ends with it"


def test_progress_of_an_unknown_task_raises(client):
    with pytest.raises(errors.TaskNotFound):
        list(client.progress("0190a5b4-0000-7000-8000-000000000000"))
    with pytest.raises(errors.TaskNotFound):
        client.last_progress("0190a5b4-0000-7000-8000-000000000000")


def test_progress_from_asyncio_follows_a_split_tasks_shards(fleet):
    async def go():
        async with AsyncClient(fleet.url) as client:
            spin = await client.submit("spin", {"ms": 1000, "ignore_stop": False}, cls="cpu")
            reports = [r async for r in client.progress(spin)]
            assert (await client.wait_outcome(spin, WAIT)).status == "succeeded"
            check_reports(reports, 1000)
            assert len(reports) >= 2, reports

            split = await client.submit("split_sum", {"n": 100_000, "block": 10_000, "block_ms": 20})
            shards = [r async for r in client.progress(split)]
            result = await client.wait(split, WAIT)
            assert math.isclose(result.sum, sum(1 / (i + 1) for i in range(100_000)), rel_tol=1e-9)
            assert shards, "a split task reports its shards' commits"
            for earlier, later in zip(shards, shards[1:]):
                assert earlier.fraction <= later.fraction, shards
            # Unsplit it reports its steps; split, its shards' commits.
            for report in shards:
                assert re.fullmatch(r"step \d+ of \d+|\d+ of \d+ shards done", report.message), shards

    asyncio.run(go())


def test_progress_is_woken_by_events_not_by_polling(fleet, client):
    """While a 2 s spin reports, the reader's own reads are a few blocking
    XREADs of the events stream, not a loop of record reads."""
    task = client.submit("spin", {"ms": 2000, "ignore_stop": False}, cls="cpu")
    sent = []
    execute = client.redis.execute_command

    def counted(*args, **options):
        sent.append(args[0])
        return execute(*args, **options)

    client.redis.execute_command = counted
    try:
        reports = list(client.progress(task))
    finally:
        del client.redis.execute_command
    assert len(reports) >= 2
    # One read per wake-up (each brings at least one event) and a few to
    # start: far fewer than a poll every few ms over 2 s would be.
    # (The task's `started` and `succeeded` events wake it too, and a read
    # that waited 5 s in vain reads the record once.)
    assert sent.count("XREAD") <= 2 * len(reports) + 4, sent
    assert len(sent) <= 3 * len(reports) + 10, sent
