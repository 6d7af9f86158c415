"""Celery's canvas (chain, chord) for the workflow benchmark (scripts/bench-workflows).

  celery -A celery_flow worker --pool prefork --concurrency 2   (the worker)
  python celery_flow.py submit chain|fan N                       (the producer)

Run with the peers' venv (/tmp/tandem-peers/.venv). Broker and result
backend: the Redis on BENCH_REDIS_PORT (a chord needs a result backend;
Redis's joins a chord with a counter, no polling task). Every task is a
no-op whose handler appends "INDEX DONE_US\\n" to
BENCH_RECORDS_DIR/<pid>.rec (one write(2)).

chain N: N no-op tasks in one chain (index 0 first, N-1 last).
fan N: a root task (index -1), a group of N no-op tasks after it, and a
  chord body over them (index N, last): root -> N -> 1.
submit prints {"t0_us", "submitted_us"} as JSON: before apply_async and
when it returned.
"""
import json
import os
import sys
import time

from celery import Celery, chain, chord, group
from celery.signals import worker_ready

PORT = int(os.environ.get("BENCH_REDIS_PORT", "6390"))
URL = f"redis://127.0.0.1:{PORT}/0"
app = Celery("flowbench", broker=URL, backend=URL)
app.conf.broker_connection_retry_on_startup = True

_fd = None


def now_us():
    return time.time_ns() // 1000


@app.task(name="flowbench.noop")
def noop(i, *_parents):
    global _fd
    if _fd is None:
        d = os.environ["BENCH_RECORDS_DIR"]
        _fd = os.open(os.path.join(d, f"{os.getpid()}.rec"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, b"%d %d\n" % (i, now_us()))


@worker_ready.connect
def _ready(**_kw):
    path = os.environ.get("BENCH_READY_FILE")
    if path:
        with open(path, "w") as f:
            f.write("ready\n")


def submit(shape, n):
    if shape == "chain":
        # Immutable signatures: a node ignores its parent's result, as Tandem's no-op does.
        canvas = chain(*(noop.si(i) for i in range(n)))
    elif shape == "fan":
        canvas = chain(noop.si(-1), chord(group(noop.si(i) for i in range(n)), noop.si(n)))
    else:
        raise SystemExit(f"submit: shape must be chain or fan, got {shape!r}")
    # Connected (broker and result backend) before the clock starts, as
    # Tandem's producer is.
    with app.producer_or_acquire() as producer:
        producer.connection.ensure_connection()
    app.backend.client.ping()
    t0 = now_us()
    canvas.apply_async()
    submitted = now_us()
    print(json.dumps({"t0_us": t0, "submitted_us": submitted}))


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "submit":
        raise SystemExit("usage: celery_flow.py submit chain|fan N")
    submit(sys.argv[2], int(sys.argv[3]))
