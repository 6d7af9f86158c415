"""`Client`: the blocking API. Submit tasks, wait for them, read their
status, cancel them; as the Rust producer (`producer/src/producer.rs`)
does, through the same Lua scripts.

Waiting blocks in `XREAD` on this client's reply streams (one per class it
submitted to), so a result wakes the wait within one round trip of its
commit, without polling. Notices of this client's other tasks that arrive
meanwhile are kept for their own wait.
"""

from __future__ import annotations

import datetime
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Set

import redis
from redis.sentinel import Sentinel

from . import _core, _wire
from ._core import Progress, Seconds, Settings
from .errors import RedisUnavailable, TaskNotFound, WaitTimeout
from .outcome import Outcome

# Errors that mean "Redis is away or not ready": retried for
# `reconnect_timeout`, as the Rust producer does.
RETRIED = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.ReadOnlyError)
# A blocking read is re-issued at least this often (ms).
BLOCK_MS = 5_000


class Task:
    """One task for `submit_many`: the arguments of `Client.submit`."""

    def __init__(
        self,
        kind: str,
        params: Any = None,
        *,
        cls: Optional[str] = None,
        priority: str = "normal",
        max_attempts: Optional[int] = None,
        deadline: Optional[Seconds] = None,
        idempotency_key: Optional[str] = None,
        memory_bytes: Optional[int] = None,
        delay: Optional[Seconds] = None,
        run_at: Optional[datetime.datetime] = None,
        rate_key: Optional[str] = None,
        timeout: Optional[Seconds] = None,
    ) -> None:
        self.kind = kind
        self.params = params
        self.options: Dict[str, Any] = dict(
            cls=cls,
            priority=priority,
            max_attempts=max_attempts,
            deadline=deadline,
            idempotency_key=idempotency_key,
            memory_bytes=memory_bytes,
            delay=delay,
            run_at=run_at,
            rate_key=rate_key,
            timeout=timeout,
        )


class Client:
    """A producer: submits tasks and waits for them.

    >>> from tandem import Client, kinds
    >>> client = Client("redis://127.0.0.1:6379")                # doctest: +SKIP
    >>> task = client.submit("sleep", kinds.SleepParams(ms=10))   # doctest: +SKIP
    >>> client.wait(task).slept_ms                                # doctest: +SKIP
    10

    Settings left out come from the environment as for the Rust producer
    (`REDIS_URL`, `TANDEM_PREFIX`, `TANDEM_SIGNING_KEY`, ...).
    """

    def __init__(self, redis_url: Optional[str] = None, **settings: Any) -> None:
        self.settings = Settings.from_env(redis_url=redis_url, **settings)
        target = _core.check_url(self.settings.redis_url)
        self.keys = _wire.Keys(self.settings.prefix)
        self.producer_id = self.settings.producer_id or _core.new_producer_id()
        # A blocking XREAD outlasts any socket timeout: `block=` bounds it.
        if target is None:
            self._redis = redis.Redis.from_url(self.settings.redis_url, socket_timeout=None)
        else:
            # The sentinels say where the master is, again after a failover
            # (a connection that breaks or meets a demoted node asks anew).
            node, asked = _core.sentinel_args(self.settings, target)
            sentinel = Sentinel(target.sentinels, sentinel_kwargs=asked, **node)
            self._redis = sentinel.master_for(target.master, **node)
        self._scripts_loaded = False
        # Reply stream -> the id notices are read after.
        self._cursors: Dict[Any, Any] = {}
        # Tasks this client submitted whose outcome nobody collected yet,
        # and the notices that came for them.
        self._pending: Set[str] = set()
        self._arrived: Dict[str, Dict[str, Any]] = {}

    @property
    def redis(self) -> "redis.Redis":
        """The connection underneath, for inspection."""
        return self._redis

    def close(self) -> None:
        self._redis.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- submitting ----------------------------------------------------------

    def submit(
        self,
        kind: str,
        params: Any = None,
        *,
        cls: Optional[str] = None,
        priority: str = "normal",
        max_attempts: Optional[int] = None,
        deadline: Optional[Seconds] = None,
        idempotency_key: Optional[str] = None,
        memory_bytes: Optional[int] = None,
        delay: Optional[Seconds] = None,
        run_at: Optional[datetime.datetime] = None,
        rate_key: Optional[str] = None,
        timeout: Optional[Seconds] = None,
    ) -> str:
        """Submits one task; returns its id once its entry is in Redis.

        `params` is a parameter class of `tandem.kinds`, or plain values
        (dicts, lists, NumPy arrays). `deadline`: seconds (or a timedelta)
        from now within which it must start, else it ends `expired`.
        With an `idempotency_key` that already names a task (of the same
        class, within `idempotency_ttl_s`), returns that task's id.

        `delay` (seconds or a timedelta, 0 or more) or `run_at` (a datetime
        with a time zone; a time past runs it at once): a delayed task,
        which enters its stream then (by the Redis clock); until then its
        status is `delayed`, and cancel works on it. A deadline counts from
        that time. `rate_key`: the task also counts against this key's rate
        limit (`tandem limit set key:<key> 100/s`). `timeout` (seconds or a
        timedelta, at least 1 ms): the run-time limit of each attempt, past
        which the worker stops it and it fails with `TIMEOUT` (retried
        while attempts remain)."""
        task = Task(
            kind,
            params,
            cls=cls,
            priority=priority,
            max_attempts=max_attempts,
            deadline=deadline,
            idempotency_key=idempotency_key,
            memory_bytes=memory_bytes,
            delay=delay,
            run_at=run_at,
            rate_key=rate_key,
            timeout=timeout,
        )
        return self.submit_many([task])[0]

    def submit_many(self, tasks: Iterable[Task]) -> List[str]:
        """Submits tasks in one round trip (one more when model kinds need
        their model's class). Every task is checked first; if one is
        invalid (`InvalidTask`), nothing is sent."""
        prepared = [(_core.prepare(self.settings, t.kind, t.params, **t.options)) for t in tasks]
        models = sorted({m for _, m in prepared if m})
        classes = self._retry(lambda: self._model_classes(models)) if models else {}
        new_tasks = []
        for task, model in prepared:
            if model and classes.get(model):
                task.cls = classes[model]
            _core.sign(self.settings, task, self.keys.reply(task.cls, self.producer_id))
            new_tasks.append(task)
        for cls in sorted({t.cls for t in new_tasks}):
            self._listen(self.keys.reply(cls, self.producer_id))
        replies = self._retry(lambda: self._send(new_tasks))
        ids = []
        for task, reply in zip(new_tasks, replies):
            if isinstance(reply, Exception):
                raise _core._wire_error("submit", reply)
            task_id, created = _core.parse_submitted(reply)
            if created:
                self._pending.add(task_id)
            ids.append(task_id)
        return ids

    def _send(self, tasks: Sequence[_wire.NewTask]) -> List[Any]:
        """One pipeline of submit.lua calls. A retry after a lost reply
        creates nothing twice: each task carries the id chosen before the
        first try, and the script creates a task only when its id has no
        record yet (and its idempotency key names none)."""
        self._load_scripts()
        calls = []
        for task in tasks:
            reply_to = self.keys.reply(task.cls, self.producer_id)
            keys, args = task.submit_args(self.keys, self.producer_id, reply_to, self.settings.idempotency_ttl_s)
            calls.append((len(keys), *keys, *args))
        if len(calls) == 1:
            # One task: a plain call costs less than a pipeline in redis-py.
            try:
                return [self._redis.evalsha(_core.SUBMIT.variant(self.settings.events)[1], *calls[0])]
            except redis.ResponseError as err:
                if isinstance(err, redis.exceptions.NoScriptError):
                    raise
                return [err]
        pipe = self._redis.pipeline(transaction=False)
        for call in calls:
            pipe.evalsha(_core.SUBMIT.variant(self.settings.events)[1], *call)
        return pipe.execute(raise_on_error=False)

    def _model_classes(self, models: List[str]) -> Dict[str, str]:
        pipe = self._redis.pipeline(transaction=False)
        for name in models:
            pipe.hget(self.keys.model(name), "class")
        found = pipe.execute(raise_on_error=False)
        return {
            name: _wire.text(cls)
            for name, cls in zip(models, found)
            if isinstance(cls, bytes) and _wire.text(cls) in _wire.CLASSES
        }

    # --- reading and cancelling ---------------------------------------------

    def status(self, task_id: str) -> str:
        """The task's status: `queued`, `delayed`, `running`, `retrying` or final."""
        found = self._find(task_id)
        if found is None or "status" not in found[1]:
            raise TaskNotFound(task_id)
        return found[1]["status"]

    def record(self, task_id: str) -> Optional[Dict[str, Any]]:
        """The task's record (docs/wire-format.md, "Task record"), or None."""
        found = self._find(task_id)
        return found[1] if found else None

    def cancel(self, task_id: str) -> str:
        """Cancels a task: `cancelled` (it was queued: it never starts),
        `requested` (it is running: its worker stops it and it ends
        `cancelled`), `finished <status>` (too late), or raises
        `TaskNotFound`."""

        def run() -> Optional[str]:
            self._load_scripts()
            pipe = self._redis.pipeline(transaction=False)
            for cls in _wire.CLASSES:
                keys, args = _core.cancel_args(self.settings, self.keys, cls, task_id)
                pipe.evalsha(_core.CANCEL.variant(self.settings.events)[1], len(keys), *keys, *args)
            for reply in pipe.execute():
                answer = _core.cancel_outcome(reply)
                if answer is not None:
                    return answer
            return None

        answer = self._retry(run)
        if answer is None:
            raise TaskNotFound(task_id)
        return answer

    def _find(self, task_id: str):
        def run():
            self._load_scripts()
            keys = _core.find_keys(self.keys, task_id)
            return _core.parse_found(self._redis.evalsha(_core.FIND.variant(self.settings.events)[1], len(keys), *keys))

        return self._retry(run)

    def last_progress(self, task_id: str) -> Optional[Progress]:
        """The task's last progress report (its record's), or None when it
        reported none yet; raises `TaskNotFound`."""
        found = self._find(task_id)
        if found is None:
            raise TaskNotFound(task_id)
        return Progress.from_fields(found[1], "progress_at_ms")

    def progress(self, task_id: str) -> Iterator[Progress]:
        """The task's progress reports: the last one (when it has one), then
        each new one, ending when the task ends. Woken by the `progress`
        events of the task's class (a blocking `XREAD`; never a poll), as
        the Rust producer's `TaskHandle::progress()`. With events off on the
        workers only the record's report comes; the iteration then ends
        within `PROGRESS_BLOCK_MS` of the task's end, when a read that
        found nothing finds its record final. Raises `TaskNotFound`."""
        found = self._find(task_id)
        if found is None:
            raise TaskNotFound(task_id)
        stream = self.keys.events(found[0])
        following = _core.Following(task_id)

        def newest() -> Any:
            last = self._redis.xrevrange(stream, "+", "-", count=1)
            return last[0][0] if last else b"0-0"

        # The cursor goes after the newest event, then the record is read
        # again: a report written in between is in the record or after the
        # cursor.
        cursor = self._retry(newest)
        found = self._find(task_id)
        if found is None:
            raise TaskNotFound(task_id)
        following.record(found[1])
        while True:
            while following.pending:
                yield following.pending.pop(0)
            if following.done:
                return
            try:
                replies = self._redis.xread({stream: cursor}, count=256, block=_core.PROGRESS_BLOCK_MS)
            except RETRIED:
                self._retry(self._redis.ping)
                replies = None
            read = following.events(replies)
            if read is not None:
                cursor = read
            else:
                # Nothing for a while (or the connection came back): the
                # record says whether the task ended unseen.
                found = self._find(task_id)
                if found is None:
                    raise TaskNotFound(task_id)
                following.record(found[1])

    # --- waiting -------------------------------------------------------------

    def wait(self, task_id: str, timeout: Optional[Seconds] = 60.0) -> Any:
        """Waits for the task and returns its result (typed for built-in
        kinds); raises the `TaskFailed` subclass of its error code when it
        did not succeed, `WaitTimeout` after `timeout` seconds (None: no
        limit)."""
        return self.wait_outcome(task_id, timeout).value()

    def run(self, kind: str, params: Any = None, *, timeout: Optional[Seconds] = 60.0, **options: Any) -> Any:
        """`submit`, then `wait`."""
        return self.wait(self.submit(kind, params, **options), timeout)

    def wait_many(self, task_ids: Sequence[str], timeout: Optional[Seconds] = 60.0) -> List[Outcome]:
        """Outcomes of several tasks, in order; `timeout` bounds the whole."""
        limit = _core.seconds(timeout, "timeout")
        deadline = None if limit is None else time.monotonic() + limit
        outcomes = []
        for task_id in task_ids:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            outcomes.append(self.wait_outcome(task_id, left))
        return outcomes

    def wait_outcome(self, task_id: str, timeout: Optional[Seconds] = 60.0) -> Outcome:
        """Waits for the task and returns how it ended, whatever that was."""
        limit = _core.seconds(timeout, "timeout")
        deadline = None if limit is None else time.monotonic() + limit
        fields = self._arrived.pop(task_id, None)
        if fields is None and task_id not in self._pending:
            fields = self._await_other(task_id, deadline, limit)
        if fields is None:
            fields = self._await_own(task_id, deadline, limit)
        self._pending.discard(task_id)
        return self._complete(task_id, fields)

    def _await_own(self, task_id: str, deadline: Optional[float], limit: Optional[float]) -> Dict[str, Any]:
        """Reads this client's reply streams until the task's notice came."""
        while task_id not in self._arrived:
            if not self._read_notices(deadline):
                # The connection broke and came back (notices may be lost
                # with a restarted Redis), or the time is up: the record
                # decides.
                found = self._find(task_id)
                if found is None:
                    raise TaskNotFound(task_id)
                if found[1].get("status") in _wire.FINAL:
                    return found[1]
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(task_id, limit or 0.0)
        return self._arrived.pop(task_id)

    def _await_other(self, task_id: str, deadline: Optional[float], limit: Optional[float]) -> Optional[Dict[str, Any]]:
        """A task this client did not submit (or submitted by an earlier
        instance): the record says whether it is final; if not, its reply
        stream is read from a point noted before the record was read, so the
        notice cannot be missed. None when the task turns out to be one of
        this client's, left to `_await_own`."""
        found = self._find(task_id)
        if found is None:
            raise TaskNotFound(task_id)
        cls, record = found
        if record.get("status") in _wire.FINAL:
            return record
        stream = record.get("reply_to") or ""
        if not self.keys.is_reply_for(cls, stream):
            return self._await_by_record(task_id, deadline, limit)
        if stream not in self._cursors:
            self._listen(stream)
            found = self._find(task_id)
            if found is None:
                raise TaskNotFound(task_id)
            if found[1].get("status") in _wire.FINAL:
                return found[1]
        self._pending.add(task_id)
        return None

    def _await_by_record(self, task_id: str, deadline: Optional[float], limit: Optional[float]) -> Dict[str, Any]:
        """A task with no reply stream (submitted raw): its record is read
        at growing intervals, 1 s to 8 s, as the Rust producer does."""
        pause = 1.0
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise WaitTimeout(task_id, limit or 0.0)
            time.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 2, 8.0)
            found = self._find(task_id)
            if found is None:
                raise TaskNotFound(task_id)
            if found[1].get("status") in _wire.FINAL:
                return found[1]

    def _listen(self, stream: str) -> None:
        """Notes the newest id of a reply stream, once, before the first
        task whose notice goes there: notices after it are ours to read."""
        if stream in self._cursors:
            return

        def newest() -> Any:
            last = self._redis.xrevrange(stream, "+", "-", count=1)
            return last[0][0] if last else b"0-0"

        self._cursors[stream] = self._retry(newest)

    def _read_notices(self, deadline: Optional[float]) -> bool:
        """One blocking read of every reply stream; keeps the notices of
        pending tasks. False when the time is up or the connection broke
        (after reconnecting): the caller then reads the record."""
        left_ms = BLOCK_MS
        if deadline is not None:
            left_ms = min(left_ms, int((deadline - time.monotonic()) * 1000))
            if left_ms <= 0:
                return False
        try:
            replies: Any = self._redis.xread(dict(self._cursors), block=max(1, left_ms)) or []
        except RETRIED:
            self._retry(self._redis.ping)
            return False
        for stream, notices in replies:
            for notice_id, notice in notices:
                self._cursors[_wire.text(stream)] = notice_id
                fields = _wire.fields(notice)
                task_id = fields.get("id")
                if task_id in self._pending:
                    self._arrived[task_id] = fields
        return True

    def _complete(self, task_id: str, fields: Dict[str, Any]) -> Outcome:
        if _core.left_out(fields):
            cls = str(fields.get("class", ""))
            found = self._retry(lambda: self._redis.hget(self.keys.task(cls, task_id), "result"))
            fields = dict(fields, result=found)
        return _core.outcome(task_id, fields)

    # --- Redis ---------------------------------------------------------------

    def _load_scripts(self) -> None:
        if self._scripts_loaded:
            return
        for script in _core.SCRIPTS:
            source, sha = script.variant(self.settings.events)
            got = _wire.text(self._redis.script_load(source))
            if got != sha:
                raise RedisUnavailable(
                    f"Redis named script {script.name} {got}, expected {sha}: the script was altered in transit"
                )
        self._scripts_loaded = True

    def _retry(self, op):
        """Runs `op` until it succeeds, fails for a reason other than the
        connection, or Redis stayed away for `reconnect_timeout` seconds.
        A Redis that restarted has lost the scripts: they are loaded again."""
        give_up = time.monotonic() + self.settings.reconnect_timeout
        pause = 0.05
        while True:
            try:
                return op()
            except redis.exceptions.NoScriptError:
                self._scripts_loaded = False
                continue
            except RETRIED as err:
                if time.monotonic() >= give_up:
                    raise RedisUnavailable(
                        f"Redis at {_redacted(self.settings.redis_url)} unreachable for "
                        f"{self.settings.reconnect_timeout:g} s: {err}"
                    ) from err
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
                self._scripts_loaded = False


def _redacted(url: str) -> str:
    """A Redis URL without its password, for messages."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
