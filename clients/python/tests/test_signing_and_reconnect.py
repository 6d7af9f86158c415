"""Signed tasks against workers that require them, and submits and waits
that ride out a Redis restart."""

import asyncio
import threading

import pytest

from conftest import WAIT, Worker, wait_until

from tandem import AsyncClient, Client, errors


def test_signed_tasks_run_and_unsigned_ones_are_refused(signed_fleet):
    with Client(signed_fleet.url, signing_key="python-shared-secret") as signed:
        assert signed.run("echo", {"signed": True}, timeout=WAIT) == {"signed": True}
        result = signed.run("monte_carlo", {"s0": 100.0, "strike": 100.0, "rate": 0.05, "sigma": 0.2,
                                            "maturity": 1.0, "steps": 8, "paths": 8192, "seed": 5}, timeout=WAIT)
        assert result.paths == 8192
    with Client(signed_fleet.url) as unsigned:
        with pytest.raises(errors.BadSignature):
            unsigned.run("echo", {"signed": False}, timeout=WAIT)
    with Client(signed_fleet.url, signing_key="another-key") as wrong:
        with pytest.raises(errors.BadSignature):
            wrong.run("echo", {"signed": "badly"}, timeout=WAIT)

    async def main():
        async with AsyncClient(signed_fleet.url, signing_key=b"python-shared-secret") as client:
            assert await client.run("echo", [1], timeout=WAIT) == [1]

    asyncio.run(main())


def test_the_signing_key_comes_from_the_environment(signed_fleet, monkeypatch):
    monkeypatch.setenv("TANDEM_SIGNING_KEY", "python-shared-secret")
    with Client(signed_fleet.url) as client:
        assert client.run("echo", "from env", timeout=WAIT) == "from env"


def test_a_submit_while_redis_restarts_is_retried_and_goes_through_once(redis_server):
    client = Client(redis_server.url, reconnect_timeout=WAIT)
    client.submit("echo", "before", cls="cpu")  # connected, scripts loaded
    redis_server.stop()
    tried = threading.Event()
    original = client._send

    def send(tasks):
        tried.set()
        return original(tasks)

    client._send = send

    def restart():
        tried.wait(WAIT)
        redis_server.start()

    restarter = threading.Thread(target=restart)
    restarter.start()
    try:
        task = client.submit("echo", "during", cls="cpu")
    finally:
        restarter.join()
    # The restarted Redis (no persistence) holds exactly this task.
    conn = redis_server.conn()
    assert conn.xlen("tandem:{cpu}:stream:normal") == 1
    assert conn.hget(f"tandem:{{cpu}}:task:{task}", "status") == b"queued"
    # And a worker started now runs it; the wait is woken by its notice.
    worker = Worker(redis_server, {})
    try:
        assert client.wait(task, WAIT) == "during"
    finally:
        worker.stop()


def test_redis_away_for_longer_than_reconnect_timeout_raises(redis_server):
    client = Client(redis_server.url, reconnect_timeout=0.3)
    redis_server.stop()
    with pytest.raises(errors.RedisUnavailable, match="unreachable for 0.3 s"):
        client.submit("echo", None, cls="cpu")


def test_a_wait_rides_out_a_redis_restart(redis_server):
    """The wait's blocking read breaks with the connection; it reconnects,
    reads the record, and goes on waiting on the reply stream."""
    client = Client(redis_server.url, reconnect_timeout=WAIT)
    task = client.submit("echo", "x", cls="cpu")
    result = {}

    def waiter():
        try:
            result["value"] = client.wait(task, WAIT)
        except Exception as err:  # noqa: BLE001 - reported below
            result["error"] = err

    thread = threading.Thread(target=waiter)
    thread.start()
    conn = redis_server.conn()
    wait_until("the wait to block on the reply stream",
               lambda: any(c.get("cmd") == "xread" for c in conn.client_list()))
    redis_server.stop()
    redis_server.start()
    # The restarted Redis lost the task (no persistence): the wait says so.
    thread.join(WAIT)
    assert isinstance(result.get("error"), errors.TaskNotFound), result


def test_an_asyncio_wait_rides_out_a_redis_restart(redis_server):
    """The listener's blocking read breaks; once Redis is back every waiter
    reads its record again: the task (lost with the unpersisted Redis) is
    not found, and a task submitted afterwards is still woken by its
    notice."""
    conn = redis_server.conn()

    async def main():
        async with AsyncClient(redis_server.url, reconnect_timeout=WAIT) as client:
            task = await client.submit("echo", "x", cls="cpu")
            waiting = asyncio.ensure_future(client.wait(task, WAIT))
            while not any(c.get("cmd") == "xread" for c in conn.client_list()):
                await asyncio.sleep(0.02)
            redis_server.stop()
            redis_server.start()
            with pytest.raises(errors.TaskNotFound):
                await waiting
            worker = Worker(redis_server, {})
            try:
                assert await client.run("echo", "after", cls="cpu", timeout=WAIT) == "after"
            finally:
                worker.stop()

    asyncio.run(main())
