"""Sentinel URLs (`redis+sentinel://s1:p1,.../<master>[/db]`): the client
asks real sentinels where the master is, submits there and waits for a real
worker's result, from both APIs, and finds the new master after a failover.
Every process on a free loopback port, never 127.0.0.1:6379."""

import asyncio
import os
import shutil
import subprocess
import tempfile
from typing import Iterator, List, Optional

import pytest
import redis

from conftest import WAIT, RedisServer, Worker, free_port, wait_until

from tandem import AsyncClient, Client, errors

MASTER = "mymaster"


class Sentinel:
    """A redis-server in sentinel mode watching `MASTER` alone (quorum 1)."""

    def __init__(self, watched: int, requirepass: Optional[str] = None) -> None:
        self.port = free_port()
        assert self.port != 6379
        self.dir = tempfile.mkdtemp(prefix="tandem-py-sentinel-")
        conf = os.path.join(self.dir, "sentinel.conf")
        with open(conf, "w") as f:
            f.write(
                f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
                + (f"requirepass {requirepass}\n" if requirepass else "")
                + f"sentinel monitor {MASTER} 127.0.0.1 {watched} 1\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 4000\n"
            )
        self.proc = subprocess.Popen(
            ["redis-server", conf, "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.conn = redis.Redis(port=self.port, password=requirepass, decode_responses=True)

    def master_port(self) -> Optional[int]:
        try:
            addr = self.conn.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
        except redis.ConnectionError:
            return None
        return int(addr[1]) if addr else None

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Setup:
    def __init__(self) -> None:
        self.master = RedisServer()
        self.replica = RedisServer()
        self.sentinel: Optional[Sentinel] = None
        self.workers: List[Worker] = []
        try:
            self.replica.conn().replicaof("127.0.0.1", self.master.port)
            wait_until(
                "the replica to sync",
                lambda: self.replica.conn().info("replication").get("master_link_status") == "up",
            )
            self.sentinel = Sentinel(self.master.port)
            wait_until("the sentinel to name the master", lambda: self.sentinel.master_port() == self.master.port)
            wait_until(
                "the sentinel to know the replica",
                lambda: len(self.sentinel.conn.execute_command("SENTINEL", "REPLICAS", MASTER)) == 1,
            )
            # A CPU worker that finds the master through the sentinel too.
            worker = Worker(self.master, {"REDIS_URL": self.url, "TANDEM_TEST_KINDS": "true"})
            self.workers.append(worker)
            conn = self.master.conn()
            wait_until(
                "the worker to be healthy",
                lambda: conn.hget(f"tandem:worker:{worker.id}", "health") == b"healthy",
            )
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        assert self.sentinel is not None
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{MASTER}"

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        if self.sentinel is not None:
            self.sentinel.close()
        self.replica.close()
        self.master.close()


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    s = Setup()
    try:
        yield s
    finally:
        s.close()


def test_a_sentinel_url_submits_to_the_master_and_waits(setup):
    with Client(setup.url) as client:
        task = client.submit("echo", [1, 2, 3])
        assert setup.master.conn().exists(f"tandem:{{cpu}}:task:{task}"), "the task is on the master"
        assert client.wait(task, WAIT) == [1, 2, 3]
        assert client.status(task) == "succeeded"
        delayed = client.submit("noop", delay=3600)
        assert client.cancel(delayed) == "cancelled"


def test_a_sentinel_url_from_asyncio(setup):
    async def go():
        async with AsyncClient(setup.url) as client:
            task = await client.submit("echo", {"a": 1})
            assert await client.wait(task, WAIT) == {"a": 1}

    asyncio.run(go())


def test_a_failover_moves_the_client_to_the_new_master(setup):
    """Runs last in this module: after it the replica is the master."""
    assert setup.sentinel is not None
    with Client(setup.url, reconnect_timeout=WAIT) as client:
        before = client.submit("noop")
        assert setup.master.conn().exists(f"tandem:{{cpu}}:task:{before}")

        def failover() -> bool:
            # NOGOODSLAVE: the sentinel has not yet seen the replica linked
            # to the master (it learns replicas from INFO, every 10 s at
            # first); asked again until it has, within WAIT.
            try:
                setup.sentinel.conn.execute_command("SENTINEL", "FAILOVER", MASTER)
            except redis.exceptions.ResponseError as err:
                if "NOGOODSLAVE" in str(err):
                    return False
                raise
            return True

        wait_until("the sentinel to accept a failover (it knows a good replica)", failover)
        wait_until("the sentinel to name the replica", lambda: setup.sentinel.master_port() == setup.replica.port)
        wait_until(
            "the old master to follow the new one",
            lambda: setup.master.conn().info("replication").get("role") == "slave",
        )
        after = client.submit("echo", ["after"])
        record = setup.replica.conn().hgetall(f"tandem:{{cpu}}:task:{after}")
        assert record, "the task is on the new master"
        assert client.record(after) is not None
        # The worker, which asks the sentinel too, runs it there.
        assert client.wait(after, WAIT) == ["after"]


def test_a_sentinel_with_a_password_is_asked_with_sentinel_password(redis_server):
    sentinel = Sentinel(redis_server.port, requirepass="sentinel-secret")
    try:
        wait_until("the guarded sentinel to name the master", lambda: sentinel.master_port() == redis_server.port)
        url = f"redis+sentinel://127.0.0.1:{sentinel.port}/{MASTER}"
        with Client(url, sentinel_password="sentinel-secret") as client:
            task = client.submit("noop")
        assert redis_server.conn().exists(f"tandem:{{cpu}}:task:{task}")
        with Client(url, reconnect_timeout=0.5) as client:
            with pytest.raises(errors.RedisUnavailable):
                client.submit("noop")
    finally:
        sentinel.close()
