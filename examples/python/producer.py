"""Submits tasks to a Tandem fleet and reads their results with redis-py and
msgpack alone, following docs/wire-format.md (the section of each step is
named in its comment).

Run with `python examples/python/producer.py` against a running fleet
(`tandem-worker fleet`), after `pip install -r examples/python/requirements.txt`.

Settings, from the environment:
  REDIS_URL (or TANDEM_REDIS_URL)  default redis://127.0.0.1:6379
  TANDEM_PREFIX                    default tandem
  TANDEM_SIGNING_KEY               when set, every task is signed (workers
                                   with a signing_key refuse unsigned ones)
  TANDEM_IDEMPOTENCY_TTL_S         default 86400, as the workers' setting

It submits an `echo`, a `sleep`, the same `echo` twice under one
idempotency key, and a `monte_carlo` option price; waits for every result
on its reply streams (one per class it submitted to) with a blocking XREAD;
prints each outcome; and exits
with 1 when any task did not succeed (2 on a usage error).
"""

import argparse
import hashlib
import hmac
import math
import os
import socket
import sys
import time
import uuid

import msgpack
import redis

WIRE_VERSION = "2"
MAX_ATTEMPTS = 3
FINAL = {"succeeded", "failed", "cancelled", "expired"}

# The option the monte_carlo task prices. A European call under geometric
# Brownian motion converges to Black-Scholes, printed beside it.
OPTION = {
    "s0": 100.0,
    "strike": 100.0,
    "rate": 0.05,
    "dividend": 0.0,
    "sigma": 0.2,
    "maturity": 1.0,
    "steps": 64,
    "paths": 200_000,
    "seed": 42,
    "percentiles": [5.0, 50.0, 95.0],
}


class Tandem:
    """The keys of one deployment (section "Keys") and one producer's reply
    streams (section "How a producer learns that a result is ready")."""

    def __init__(self, client, prefix, signing_key, idempotency_ttl_s):
        self.r = client
        self.prefix = prefix
        self.signing_key = signing_key
        self.idempotency_ttl_s = idempotency_ttl_s
        self.producer_id = f"python-{socket.gethostname()}-{os.getpid()}"
        # Reply stream -> the id notices are read after: one stream per
        # class this producer submitted to, noted before its first submit.
        self.since = {}

    def stream(self, cls, priority):
        return f"{self.prefix}:{{{cls}}}:stream:{priority}"

    def record(self, cls, task_id):
        return f"{self.prefix}:{{{cls}}}:task:{task_id}"

    def idempotency(self, cls, key):
        return f"{self.prefix}:{{{cls}}}:idem:{key}"

    def reply_to(self, cls):
        """This producer's reply stream for tasks of class `cls`: one per
        class, under the class's hash tag, as workers notify no other."""
        return f"{self.prefix}:{{{cls}}}:reply:{self.producer_id}"

    def listen_to(self, cls):
        """Notes the newest id of the class's reply stream, once, before
        the first submit of that class: notices after it are ours to read."""
        stream = self.reply_to(cls)
        if stream not in self.since:
            newest = self.r.xrevrange(stream, "+", "-", count=1)
            self.since[stream] = newest[0][0] if newest else b"0-0"
        return stream

    def submit(self, kind, cls, priority, params, deadline_in_ms=None, idempotency_key=None):
        """Submits one task; returns (task id, whether it is new). With an
        idempotency key that already names a task, returns that task."""
        task_id = str(uuid.uuid4())
        reply_to = self.listen_to(cls)
        packed = msgpack.packb(params)
        seconds, micros = self.r.time()  # times come from the Redis clock
        now_ms = seconds * 1000 + micros // 1000
        # Section "Task entry": the required fields, then the optional ones
        # this producer uses. Class and priority must equal the stream's.
        entry = {
            "version": WIRE_VERSION,
            "id": task_id,
            "kind": kind,
            "class": cls,
            "priority": priority,
            "attempt": "1",
            "max_attempts": str(MAX_ATTEMPTS),
            "memory_bytes": "0",
            "producer": self.producer_id,
            "submitted_at_ms": str(now_ms),
            "reply_to": reply_to,
        }
        if deadline_in_ms is not None:
            entry["deadline_ms"] = str(now_ms + deadline_in_ms)
        entry["params"] = packed
        if self.signing_key:
            entry["signature"] = signature(
                self.signing_key, task_id, kind, cls, priority, MAX_ATTEMPTS, reply_to, packed
            )
        # Section "Task record": the fields set at submit, so that a status
        # read sees the task while it is queued. `entry` (the stream entry
        # id) is not known until the XADD has run, and writing it afterwards
        # could land on a record a worker already finished; only a cancel
        # reads it, and a cancelled task's entry is dropped by the worker
        # that claims it (its record is final).
        record = {k: v for k, v in entry.items() if k not in ("params", "signature", "attempt")}
        record["status"] = "queued"
        record["attempt"] = "1"
        if idempotency_key is not None:
            record["idempotency_key"] = idempotency_key
        return self._write(cls, priority, task_id, entry, record, idempotency_key)

    def _write(self, cls, priority, task_id, entry, record, idempotency_key):
        """Writes the record and the entry in one MULTI, so a worker never
        sees one without the other. With an idempotency key the key is
        WATCHed: a producer that sets it first wins, and the loser retries
        and finds the winner's task id (section "Keys": `idem:<key>` holds
        the task id the key created, for `idempotency_ttl_s`)."""
        idem_key = self.idempotency(cls, idempotency_key) if idempotency_key else None
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    if idem_key:
                        pipe.watch(idem_key)
                        existing = pipe.get(idem_key)
                        if existing is not None:
                            pipe.unwatch()
                            return existing.decode(), False
                    pipe.multi()
                    if idem_key:
                        pipe.set(idem_key, task_id, ex=self.idempotency_ttl_s)
                    pipe.hset(self.record(cls, task_id), mapping=record)
                    pipe.xadd(self.stream(cls, priority), entry)
                    pipe.execute()
                    return task_id, True
                except redis.WatchError:
                    continue

    def wait_all(self, tasks, timeout_s):
        """Waits for every task in `tasks` (id -> class) to finish. Returns
        id -> outcome (a dict of text fields, `result` still MessagePack).

        Section "How a producer learns that a result is ready": notices are
        read from the reply stream of each class submitted to, from the id
        noted before that class's first submit, so none is missed; a task
        that was already final (an idempotency key naming an older task) is
        read from its record instead."""
        outcomes = {}
        for task_id, cls in tasks.items():
            record = self.r.hgetall(self.record(cls, task_id))
            if text(record.get(b"status")) in FINAL:
                outcomes[task_id] = self._outcome(cls, task_id, record)
        deadline = time.monotonic() + timeout_s
        while len(outcomes) < len(tasks):
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            # A blocking read of every stream at once (on a single Redis;
            # Redis Cluster takes one XREAD per stream, the slots differ):
            # woken within a round trip of the commit.
            for stream, notices in self.r.xread(dict(self.since), block=left_ms) or []:
                for notice_id, notice in notices:
                    self.since[text(stream)] = notice_id
                    task_id = text(notice.get(b"id"))
                    if task_id in tasks and task_id not in outcomes:
                        outcomes[task_id] = self._outcome(tasks[task_id], task_id, notice)
        return outcomes

    def _outcome(self, cls, task_id, fields):
        outcome = {k.decode(): v for k, v in fields.items()}
        # A result over `inline_result_bytes` is left out of the notice;
        # the record always has it.
        if outcome.get("status") == b"succeeded" and "result" not in outcome:
            outcome["result"] = self.r.hget(self.record(cls, task_id), "result")
        return {k: (v if k == "result" else text(v)) for k, v in outcome.items()}


def signature(key, task_id, kind, cls, priority, max_attempts, reply_to, params):
    """Section "Signed tasks": HMAC-SHA256 over netstrings of the fields."""
    parts = [WIRE_VERSION.encode(), task_id.encode(), kind.encode(), cls.encode(),
             priority.encode(), str(max_attempts).encode(), reply_to.encode(), params]
    signed = b"".join(b"%d:%s," % (len(p), p) for p in parts)
    return hmac.new(key, signed, hashlib.sha256).hexdigest()


def text(value):
    return value.decode() if isinstance(value, bytes) else value


def black_scholes_call(s0, strike, rate, dividend, sigma, maturity, **_):
    vol = sigma * math.sqrt(maturity)
    d1 = (math.log(s0 / strike) + (rate - dividend + sigma * sigma / 2) * maturity) / vol
    d2 = d1 - vol
    cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    return s0 * math.exp(-dividend * maturity) * cdf(d1) - strike * math.exp(-rate * maturity) * cdf(d2)


def report(label, outcome):
    """Prints one outcome; returns whether it succeeded."""
    where = f"device={outcome.get('device', '-')} worker={outcome.get('worker', '-')}"
    status = outcome.get("status")
    if status != "succeeded":
        print(f"{label}: {status} {where} error={outcome.get('error_code')}: {outcome.get('error_message')}")
        return False
    result = msgpack.unpackb(outcome["result"]) if outcome.get("result") else None
    print(f"{label}: succeeded {where} run_us={outcome.get('run_us')} result={result}")
    if label == "monte_carlo":
        call = result["european_call"]
        exact = black_scholes_call(**OPTION)
        print(f"monte_carlo european_call={call['price']:.6f} std_error={call['std_error']:.6f} "
              f"black_scholes={exact:.6f}")
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout-s", type=float, default=60.0, help="how long to wait for all results")
    args = parser.parse_args()
    url = os.environ.get("REDIS_URL") or os.environ.get("TANDEM_REDIS_URL") or "redis://127.0.0.1:6379"
    prefix = os.environ.get("TANDEM_PREFIX") or "tandem"
    key = os.environ.get("TANDEM_SIGNING_KEY", "").encode() or None
    ttl = int(os.environ.get("TANDEM_IDEMPOTENCY_TTL_S") or 86_400)
    # A blocking XREAD waits longer than a default socket timeout (redis-py 8
    # sets 5 s): the wait is bounded by `block=` instead.
    tandem = Tandem(redis.Redis.from_url(url, socket_timeout=None), prefix, key, ttl)

    tasks = {}  # task id -> class, for the wait
    labels = {}  # task id -> what it is, for the report

    def submit(label, kind, cls, priority, params, **options):
        task_id, new = tandem.submit(kind, cls, priority, params, **options)
        tasks[task_id] = cls
        labels.setdefault(task_id, label)
        print(f"submitted {label}: {task_id} to {tandem.stream(cls, priority)}"
              + ("" if new else " (the idempotency key's existing task)"))
        return task_id

    submit("echo", "echo", "cpu", "high", {"symbol": "ES", "qty": 3}, deadline_in_ms=60_000)
    submit("sleep", "sleep", "cpu", "normal", {"ms": 100})
    quote = f"quote-{uuid.uuid4()}"
    first = submit("idempotent", "echo", "cpu", "normal", {"quote": quote}, idempotency_key=quote)
    again = submit("idempotent again", "echo", "cpu", "normal", {"quote": quote}, idempotency_key=quote)
    submit("monte_carlo", "monte_carlo", "parallel", "high", OPTION)
    if key:
        print("every task is signed (TANDEM_SIGNING_KEY)")

    outcomes = tandem.wait_all(tasks, args.timeout_s)
    ok = True
    for task_id, label in labels.items():
        if task_id not in outcomes:
            print(f"{label}: no result within {args.timeout_s} s ({task_id})")
            ok = False
        else:
            ok = report(label, outcomes[task_id]) and ok
    if first != again:
        print(f"idempotent: the second submit made a new task {again}, not {first}")
        ok = False
    else:
        print(f"idempotent: the second submit returned the same task {first}")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except redis.RedisError as err:
        print(f"error: Redis: {err}", file=sys.stderr)
        sys.exit(1)
