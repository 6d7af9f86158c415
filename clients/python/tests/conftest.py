"""The harness: a real `redis-server` on a free loopback port and real
`tandem-worker` processes (the built binaries, `target/debug` unless
`TANDEM_BIN_DIR` says otherwise), started per test module and killed at its
end, even when a test fails. Nothing here touches 127.0.0.1:6379.

Every wait is for a condition, bounded by `WAIT` (generous, so a loaded
machine passes too); nothing sleeps a fixed time hoping something happened.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, Iterator, List, Optional

import pytest
import redis

ROOT = pathlib.Path(__file__).resolve().parents[3]
BIN_DIR = pathlib.Path(os.environ.get("TANDEM_BIN_DIR") or ROOT / "target" / "debug")
WAIT = 120.0
# One simulated GPU (role `both`: it takes heavy, light and parallel tasks).
GPU = "RTX 4070 Ti, 12 GiB, 40.09 TFLOPS"
GPU_UUID = "SIM-0-rtx-4070-ti"


def binary(name: str) -> str:
    path = BIN_DIR / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `cargo build -p tandem-cli -p tandem-worker` first")
    return str(path)


def wait_until(what: str, check: Callable[[], bool], timeout: float = WAIT) -> None:
    """Waits for `check()` to hold, checking every 20 ms up to `timeout`."""
    give_up = time.monotonic() + timeout
    while not check():
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private redis-server; `restart()` keeps its port."""

    def __init__(self) -> None:
        self.port = free_port()
        assert self.port != 6379
        self.dir = tempfile.mkdtemp(prefix="tandem-py-redis-")
        self.proc: Optional[subprocess.Popen] = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", self.dir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        conn = redis.Redis(port=self.port)

        def up() -> bool:
            try:
                return bool(conn.ping())
            except redis.ConnectionError:
                return False

        wait_until("redis-server to answer", up)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def conn(self) -> redis.Redis:
        return redis.Redis(port=self.port)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Worker:
    """A `tandem-worker run` process with test timings."""

    _next = 0

    def __init__(self, redis_server: RedisServer, env: Dict[str, str]) -> None:
        Worker._next += 1
        self.id = f"py-test-worker-{os.getpid()}-{Worker._next}"
        self.log = tempfile.NamedTemporaryFile(prefix="tandem-py-worker-", suffix=".log", delete=False)
        full_env = {
            "PATH": os.environ.get("PATH", ""),
            "REDIS_URL": redis_server.url,
            "TANDEM_WORKER_ID": self.id,
            "TANDEM_HEARTBEAT_INTERVAL_MS": "200",
            "TANDEM_HEARTBEAT_TTL_MS": "1000",
            "TANDEM_SHUTDOWN_GRACE_MS": "5000",
            "TANDEM_LOG_LEVEL": "info",
        }
        full_env.update(env)
        self.proc = subprocess.Popen(
            [binary("tandem-worker"), "run"], env=full_env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        os.unlink(self.log.name)


class Fleet:
    """A Redis, a simulated GPU worker and a CPU worker, with `extra`
    settings on every worker; ready once both are healthy and each has seen
    the other (so the CPU worker leaves `parallel` tasks to the GPU)."""

    def __init__(self, extra: Optional[Dict[str, str]] = None, cpu_env: Optional[Dict[str, str]] = None) -> None:
        self.redis = RedisServer()
        self.workers: List[Worker] = []
        extra = dict(extra or {})
        try:
            self.workers.append(
                Worker(self.redis, {"TANDEM_SIMULATE_GPUS": GPU, "TANDEM_DEVICE": GPU_UUID, **extra})
            )
            self.workers.append(Worker(self.redis, {**extra, **(cpu_env or {})}))
            conn = self.redis.conn()

            def ready() -> bool:
                for w in self.workers:
                    if w.proc.poll() is not None:
                        raise AssertionError(f"worker {w.id} exited: {open(w.log.name).read()[-4000:]}")
                records = [conn.hgetall(f"tandem:worker:{w.id}") for w in self.workers]
                return all(
                    r.get(b"health") == b"healthy" and r.get(b"live_seen") == str(len(self.workers)).encode()
                    for r in records
                )

            wait_until("both workers healthy and routing from the whole fleet", ready)
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return self.redis.url

    def tandem(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Runs the `tandem` CLI (the Rust producer) against this fleet."""
        env = {"PATH": os.environ.get("PATH", ""), "REDIS_URL": self.url}
        out = subprocess.run([binary("tandem"), *args], env=env, capture_output=True, text=True, timeout=WAIT)
        if check and out.returncode != 0:
            raise AssertionError(f"tandem {' '.join(args)} exited {out.returncode}: {out.stderr}")
        return out

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.redis.close()


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    """One fleet per test module: test kinds on, one task at a time on the
    CPU worker (so a test can hold it busy), and the model `alpha-mlp`
    (4 inputs, 1 output) the catalog's model examples use."""
    f = Fleet({"TANDEM_TEST_KINDS": "true"}, cpu_env={"TANDEM_CONCURRENCY": "1"})
    try:
        f.tandem("model", "new", "alpha-mlp", "--layers", "4,8,1", "--upload")
        yield f
    finally:
        f.close()


@pytest.fixture(scope="module")
def signed_fleet() -> Iterator[Fleet]:
    """A fleet whose workers run only tasks signed with `python-shared-secret`."""
    f = Fleet({"TANDEM_SIGNING_KEY": "python-shared-secret"})
    try:
        yield f
    finally:
        f.close()


@pytest.fixture()
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server
    finally:
        server.close()


def moto_server_binary() -> Optional[str]:
    """The moto S3 server to test the S3 blob store against, as
    tests/e2e/blobs.rs finds it: `TANDEM_MOTO_SERVER`, else the one `.ci/run`
    installs in target/moto-venv, else `moto_server` next to this Python
    (`pip install 'moto[server]'`). None outside CI when there is none; in
    CI (`CI` set) a missing moto fails the test instead of skipping it."""
    named = os.environ.get("TANDEM_MOTO_SERVER")
    if named:
        return named
    for candidate in (ROOT / "target" / "moto-venv" / "bin" / "moto_server",
                      pathlib.Path(sys.executable).parent / "moto_server"):
        if candidate.exists():
            return str(candidate)
    if os.environ.get("CI"):
        pytest.fail("CI must run the S3 tests: set TANDEM_MOTO_SERVER (.ci/run installs moto in target/moto-venv)")
    return None


class MotoServer:
    """A moto S3 server on a free loopback port, with the bucket
    `tandem-blobs` made; `settings` and `env` reach it from a client and
    from the Rust binaries (the same names)."""

    BUCKET = "tandem-blobs"

    def __init__(self, path: str) -> None:
        import boto3

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([path, "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.s3 = boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id="test", aws_secret_access_key="test",
        )

        def bucket_made() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"moto_server exited with {self.proc.returncode}")
            try:
                self.s3.create_bucket(Bucket=self.BUCKET)
                return True
            except Exception:  # not listening yet
                return False

        try:
            wait_until("moto answers and makes the bucket", bucket_made)
        except BaseException:
            self.close()
            raise

    def settings(self, prefix: str) -> Dict[str, str]:
        return dict(blob_store=f"s3://{self.BUCKET}/{prefix}", blob_s3_endpoint=self.endpoint,
                    blob_s3_region="us-east-1", blob_s3_access_key_id="test", blob_s3_secret_access_key="test")

    def env(self, prefix: str) -> Dict[str, str]:
        return {f"TANDEM_{name.upper()}": value for name, value in self.settings(prefix).items()}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    path = moto_server_binary()
    if path is None:
        pytest.skip("no moto server (pip install 'moto[server]'; set TANDEM_MOTO_SERVER)")
    server = MotoServer(path)
    try:
        yield server
    finally:
        server.close()
