"""Submit and wait throughput: the Python client (sync, batched, asyncio)
against Celery's `delay()`/`get()` and the Rust producer, on one private
redis-server, the same run, interleaved.

Run with `target/py-venv/bin/python clients/python/bench/bench.py` after
`cargo build --release -p tandem-worker` and
`cargo build --release -p tandem-producer --example submit_wait`, in a venv
with the package and `celery[redis]` (`pip install ./clients/python celery[redis]`).

Workload: N no-op tasks per run. A run of a system submits them, one
awaited call per task (`batch`: 100 per call), then waits for every result;
it reports submits/s (the submit loop alone) and tasks/s end to end (first
submit to last result). Workers, started once and idle between runs: one
`tandem-worker run` CPU worker with concurrency 2, and one `celery worker`
with the prefork pool and concurrency 2 (the peers' setup in
/work/shared/peers), Celery's broker and result backend on the same
redis-server (database 1). Systems take turns within each round, in an
order that rotates each round, so drift on a noisy machine hits all alike.
Prints a Markdown table: median [min-max] over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import redis

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, check, timeout=120.0):
    give_up = time.monotonic() + timeout
    while not check():
        if time.monotonic() > give_up:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def python_sync(url, n, batch):
    from tandem import Client, Task

    client = Client(url)
    client.run("noop", None, timeout=60)  # connected, scripts loaded, stream noted
    start = time.perf_counter()
    if batch == 1:
        ids = [client.submit("noop", i) for i in range(n)]
    else:
        ids = []
        for lo in range(0, n, batch):
            ids += client.submit_many([Task("noop", i) for i in range(lo, min(n, lo + batch))])
    submitted = time.perf_counter() - start
    for outcome in client.wait_many(ids, timeout=600):
        assert outcome.succeeded, outcome
    total = time.perf_counter() - start
    client.close()
    return submitted, total


def python_asyncio(url, n):
    from tandem import AsyncClient

    async def main():
        async with AsyncClient(url) as client:
            await client.run("noop", None, timeout=60)
            start = time.perf_counter()
            ids = [await client.submit("noop", i) for i in range(n)]
            submitted = time.perf_counter() - start
            outcomes = await client.wait_many(ids, timeout=600)
            assert all(o.succeeded for o in outcomes)
            return submitted, time.perf_counter() - start

    return asyncio.run(main())


def rust(url, n, bin_dir):
    out = subprocess.run(
        [str(bin_dir / "examples" / "submit_wait"), str(n)],
        env={**os.environ, "REDIS_URL": url, "TANDEM_LOG_LEVEL": "warn"},
        capture_output=True,
        text=True,
        check=True,
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    return figures["submit_s"], figures["total_s"]


def celery_run(app_module, n):
    noop = app_module.noop
    noop.delay(-1).get(timeout=60)  # connected, worker warm
    start = time.perf_counter()
    results = [noop.delay(i) for i in range(n)]
    submitted = time.perf_counter() - start
    for r in results:
        r.get(timeout=600)
    return submitted, time.perf_counter() - start


CELERY_APP = '''
import os
from celery import Celery
app = Celery("pybench", broker=os.environ["CELERY_URL"], backend=os.environ["CELERY_URL"])
app.conf.broker_connection_retry_on_startup = True

@app.task(name="pybench.noop")
def noop(job):
    return None
'''


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="tasks per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bin-dir", default=str(ROOT / "target" / "release"))
    parser.add_argument("--systems", default="python-sync,python-batch,python-asyncio,rust,celery")
    args = parser.parse_args()
    bin_dir = pathlib.Path(args.bin_dir)
    systems = args.systems.split(",")

    port = free_port()
    scratch = tempfile.mkdtemp(prefix="tandem-pybench-")
    procs = []
    try:
        procs.append(subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
             "--dir", scratch], stdout=subprocess.DEVNULL))
        url = f"redis://127.0.0.1:{port}"
        conn = redis.Redis(port=port)
        wait_for("redis", lambda: _ping(conn))
        worker_log = open(os.path.join(scratch, "worker.log"), "w")
        procs.append(subprocess.Popen(
            [str(bin_dir / "tandem-worker"), "run"],
            env={"PATH": os.environ["PATH"], "REDIS_URL": url, "TANDEM_CONCURRENCY": "2",
                 "TANDEM_LOG_LEVEL": "warn", "TANDEM_CLASSES": "cpu"},
            stdout=worker_log, stderr=subprocess.STDOUT))
        wait_for("the tandem worker", lambda: conn.scard("tandem:workers") >= 1)
        celery_module = None
        if "celery" in systems:
            (pathlib.Path(scratch) / "pybench_celery.py").write_text(CELERY_APP)
            celery_url = f"redis://127.0.0.1:{port}/1"
            os.environ["CELERY_URL"] = celery_url
            ready = os.path.join(scratch, "celery.log")
            procs.append(subprocess.Popen(
                [str(pathlib.Path(sys.executable).parent / "celery"), "-A", "pybench_celery", "worker",
                 "--pool", "prefork", "--concurrency", "2", "--loglevel", "WARNING", "-n", "pybench@%h"],
                cwd=scratch, env={**os.environ, "CELERY_URL": celery_url},
                stdout=open(ready, "w"), stderr=subprocess.STDOUT))
            sys.path.insert(0, scratch)
            import pybench_celery as celery_module  # noqa: E402

            celery_module.noop.delay(-1).get(timeout=120)

        figures = {s: [] for s in systems}
        for round_ in range(args.rounds):
            order = systems[round_ % len(systems):] + systems[:round_ % len(systems)]
            for system in order:
                if system == "python-sync":
                    got = python_sync(url, args.n, 1)
                elif system == "python-batch":
                    got = python_sync(url, args.n, 100)
                elif system == "python-asyncio":
                    got = python_asyncio(url, args.n)
                elif system == "rust":
                    got = rust(url, args.n, bin_dir)
                elif system == "celery":
                    got = celery_run(celery_module, args.n)
                else:
                    raise SystemExit(f"unknown system {system}")
                figures[system].append(got)
                print(f"round {round_ + 1} {system}: submit {args.n / got[0]:.0f}/s, "
                      f"end to end {args.n / got[1]:.0f}/s", file=sys.stderr)

        def cell(values):
            values = sorted(values)
            return f"{statistics.median(values):,.0f} [{values[0]:,.0f}-{values[-1]:,.0f}]"

        print(f"\n{args.n} no-op tasks per run, {args.rounds} rounds, median [min-max]\n")
        print("| producer | submits/s | tasks/s, submit to last result |")
        print("|---|---|---|")
        for system in systems:
            runs = figures[system]
            print(f"| {system} | {cell([args.n / s for s, _ in runs])} | {cell([args.n / t for _, t in runs])} |")
    finally:
        for p in reversed(procs):
            p.kill()
            p.wait()
        shutil.rmtree(scratch, ignore_errors=True)


def _ping(conn):
    try:
        return conn.ping()
    except redis.ConnectionError:
        return False


if __name__ == "__main__":
    main()
