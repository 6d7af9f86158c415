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
import json
import os
import time
from typing import IO, Any, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple, Union

import redis
from redis.sentinel import Sentinel

from . import _blob, _core, _wire, _workflow
from ._blob import BlobRef, BlobStat
from ._core import Progress, Seconds, Settings
from ._workflow import Workflow, WorkflowState
from .errors import InvalidTask, InvalidWorkflow, RedisUnavailable, TaskNotFound, WaitTimeout, WorkflowNotFound
from .outcome import Outcome, WorkflowOutcome

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
        notice: bool = True,
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
            notice=notice,
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
        self._blobs = _blob.Layout(self.keys, self.settings)

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
        notice: bool = True,
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
        while attempts remain). `notice=False`: fire and forget, the
        worker's commit writes no completion notice to this client (the
        outcome is in the record all the same; a `wait` on the task then
        re-reads the record, 1 s to 8 s apart, instead of being told)."""
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
            notice=notice,
        )
        return self.submit_many([task])[0]

    def submit_many(self, tasks: Iterable[Task]) -> List[str]:
        """Submits tasks in one round trip (one more when model kinds need
        their model's class). Every task is checked first; if one is
        invalid (`InvalidTask`), nothing is sent."""
        prepared = [(_core.prepare(self.settings, t.kind, t.params, **t.options)) for t in tasks]
        new_tasks = self._finish(prepared)
        for cls in sorted({t.cls for t in new_tasks if t.notice}):
            self._listen(self.keys.reply(cls, self.producer_id))
        replies = self._retry(lambda: self._send(new_tasks))
        ids = []
        for task, reply in zip(new_tasks, replies):
            if isinstance(reply, Exception):
                raise _core._wire_error("submit", reply)
            task_id, created = _core.parse_submitted(reply)
            if created and task.notice:
                self._pending.add(task_id)
            ids.append(task_id)
        return ids

    def _finish(self, prepared: List[Any]) -> List[_wire.NewTask]:
        """Completes checked tasks as the Rust producer's `prepare`: the
        class of model kinds from their model's record and, for those that
        declare no memory, the memory from its shape (one lookup per
        distinct model), parameters above
        `blob_threshold_bytes` stored as a blob (one reference per task,
        given back by the worker that commits its final outcome) and sent
        as its reference, then the signature (over what is sent)."""
        names = _core.models_to_look_up(prepared)
        models = self._retry(lambda: self._registered_models(names)) if names else {}
        new_tasks = []
        for task, lookup in prepared:
            _core.apply_models(task, lookup, models)
            if _core.by_reference(self.settings, task.params):
                task.params = self.put_blob(task.params).encode()
            _core.sign(self.settings, task, self._reply_to(task))
            new_tasks.append(task)
        return new_tasks

    def _reply_to(self, task: _wire.NewTask) -> Optional[str]:
        """The reply stream a task's notice goes to: this client's of its
        class, or none for a task submitted with `notice=False`."""
        return self.keys.reply(task.cls, self.producer_id) if task.notice else None

    def _send(self, tasks: Sequence[_wire.NewTask]) -> List[Any]:
        """One pipeline of submit.lua calls. A retry after a lost reply
        creates nothing twice: each task carries the id chosen before the
        first try, and the script creates a task only when its id has no
        record yet (and its idempotency key names none)."""
        self._load_scripts()
        calls = []
        for task in tasks:
            reply_to = self._reply_to(task)
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

    def _registered_models(self, names: List[str]) -> Dict[str, Tuple[str, Optional[Dict[str, Any]]]]:
        """Each named model's registered class and shape, one pipelined
        round trip; a model not registered, or whose record is damaged, is
        absent (its tasks keep the kind's class and memory estimate)."""
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.hmget(self.keys.model(name), *_core.MODEL_FIELDS)
        found = pipe.execute(raise_on_error=False)
        models = {}
        for name, fields in zip(names, found):
            model = _core.registered_model(fields)
            if model is not None:
                models[name] = model
        return models

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
        # A result above the blob threshold came as a reference: read it.
        blob = BlobRef.detect(fields.get("result"))
        if blob is not None:
            fields = dict(fields, result=self.get_blob(blob))
        outcome = _core.outcome(task_id, fields)
        outcome.result_blob = blob
        return outcome

    # --- workflows -----------------------------------------------------------

    def submit_workflow(self, workflow: Union[Workflow, Dict[str, Any]]) -> "WorkflowHandle":
        """Submits a workflow (a `Workflow`, or a spec as `tandem flow
        submit` reads it, as a dict) as one unit, in one script. Checked
        first, nothing sent when it is refused (`InvalidWorkflow`, naming
        the node): a cycle, a missing parent, a kind that is not built in
        without a class, bad parameters of a node that takes no results, a
        placeholder for a node that is not a parent, a path the parent
        kind's result cannot hold. Returns its handle."""
        if isinstance(workflow, dict):
            workflow = Workflow.from_spec(workflow)
        order, takes = _workflow.check(workflow.nodes, _core.CATALOG)
        prepared = []
        for i in order:
            node = workflow.nodes[i]
            try:
                prepared.append(
                    _core.prepare(self.settings, node.kind, node.params, takes_results=takes[i], **node.options)
                )
            except InvalidWorkflow:
                raise
            except InvalidTask as err:
                raise InvalidWorkflow(
                    f"node {json.dumps(node.name)}: {err}", node=node.name, kind=err.kind, field=err.field
                ) from None
        tasks = self._finish(prepared)
        ordered = [(workflow.nodes[i].name, task, workflow.nodes[i].after) for i, task in zip(order, tasks)]
        for cls in sorted({t.cls for t in tasks}):
            self._listen(self.keys.reply(cls, self.producer_id))
        keys, args = _workflow.submit_args(
            self.keys, workflow.id, workflow.on_failure, ordered, self.producer_id,
            lambda cls: self.keys.reply(cls, self.producer_id),
        )

        def send() -> Any:
            self._load_scripts()
            sha = _core.WORKFLOW_SUBMIT.variant(self.settings.events)[1]
            return self._redis.evalsha(sha, len(keys), *keys, *args)

        try:
            reply = self._retry(send)
        except redis.ResponseError as err:
            raise InvalidWorkflow(f"workflow {workflow.id}: {err}") from None
        created = int(reply[1]) == 1
        nodes = {name: task.id for name, task, _ in ordered}
        if created:
            self._pending.update(nodes.values())
        else:
            # A workflow of this id was there (a retried submit): its own
            # nodes are the ones to follow.
            found = self.workflow_status(workflow.id)
            if found is not None:
                nodes = {n.name: n.id for n in found.nodes}
        return WorkflowHandle(self, workflow.id, nodes, created)

    def workflow_status(self, workflow_id: str) -> Optional[WorkflowState]:
        """The workflow's state with every node's record (state, device,
        times, result, error), or None when unknown or expired."""

        def run() -> Optional[WorkflowState]:
            found = self._find_workflow(workflow_id)
            if found is None:
                return None
            fields = found[1]
            graph = _workflow.parse_graph(fields)
            pipe = self._redis.pipeline(transaction=False)
            for entry in graph:
                pipe.hgetall(self.keys.task(entry["class"], entry["id"]))
            records = [_wire.fields(r) for r in pipe.execute()] if graph else []
            return _workflow.state(workflow_id, fields, graph, records)

        return self._retry(run)

    def _find_workflow(self, workflow_id: str):
        """(class, hash fields) of the workflow, or None."""
        pipe = self._redis.pipeline(transaction=False)
        for cls in _wire.CLASSES:
            pipe.hgetall(_workflow.workflow_key(self.keys, cls, workflow_id))
        for cls, found in zip(_wire.CLASSES, pipe.execute()):
            if found:
                return cls, _wire.fields(found)
        return None

    def wait_workflow(self, workflow_id: str, timeout: Optional[Seconds] = 60.0) -> WorkflowOutcome:
        """Waits until every node of the workflow is final (`timeout`
        bounds the whole; woken by each node's completion notice, no
        polling) and returns how it ended: its status, its sink nodes'
        results (`results`) and every node's outcome."""
        found = self.workflow_status(workflow_id)
        if found is None:
            raise WorkflowNotFound(workflow_id)
        return self._wait_nodes(workflow_id, {n.name: n.id for n in found.nodes}, timeout)

    def _wait_nodes(self, workflow_id: str, nodes: Dict[str, str], timeout: Optional[Seconds]) -> WorkflowOutcome:
        outcomes = self.wait_many(list(nodes.values()), timeout)
        state = self.workflow_status(workflow_id)
        if state is None:
            raise WorkflowNotFound(workflow_id)
        return WorkflowOutcome.of(state, dict(zip(nodes, outcomes)))

    def cancel_workflow(self, workflow_id: str) -> str:
        """Cancels every node not yet finished: `cancelled <ended now>
        <running nodes asked to stop>`, or `finished <status>` (too late);
        raises `WorkflowNotFound`."""

        def run() -> str:
            self._load_scripts()
            found = self._find_workflow(workflow_id)
            if found is None:
                return "not_found"
            sha = _core.WORKFLOW_CANCEL.variant(self.settings.events)[1]
            key = _workflow.workflow_key(self.keys, found[0], workflow_id)
            reply = self._redis.evalsha(
                sha, 1, key, self.settings.result_ttl_s, self.settings.reply_maxlen, self.settings.reply_ttl_s
            )
            return _workflow.cancel_outcome(reply)

        answer = self._retry(run)
        if answer == "not_found":
            raise WorkflowNotFound(workflow_id)
        return answer

    # --- blobs ---------------------------------------------------------------

    def _blob_script(self, sha256: str, op: str, ttl_ms: int, size: int, partial: Optional[str] = None) -> int:
        self._load_scripts()
        keys = self._blobs.keys(sha256) + ([partial] if partial else [])
        return int(self._redis.evalsha(_core.BLOB.sha, len(keys), *keys, op, ttl_ms, size))

    def _ttl_ms(self, ttl: Optional[Seconds]) -> int:
        limit = _core.seconds(ttl, "ttl")
        return max(1, round((self.settings.blob_ttl_s if limit is None else limit) * 1000))

    def put_blob(self, data: bytes, ttl: Optional[Seconds] = None) -> BlobRef:
        """Stores `data` in the blob store (unless it holds them already),
        in chunks of `blob_chunk_bytes`, and takes one reference to them,
        alive for `ttl` seconds at least (default `blob_ttl_s`). Put the
        reference's `encode()` where a task's parameters go (`submit` does
        this by itself above `blob_threshold_bytes`)."""
        self._blobs.check()
        data = bytes(data)
        blob = BlobRef.of(data)
        ttl_ms = self._ttl_ms(ttl)
        self._upload(blob, ttl_ms, lambda: _blob.chunks_of(data, self.settings.blob_chunk_bytes))
        return blob

    def put_blob_file(self, path: "Union[str, os.PathLike[str]]", ttl: Optional[Seconds] = None) -> BlobRef:
        """Stores a file's bytes, read twice in chunks (once for the
        digest, once to upload), never whole in memory; one reference."""
        self._blobs.check()
        chunk_bytes = self.settings.blob_chunk_bytes
        blob = _blob.file_digest(path, chunk_bytes)

        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while True:
                    chunk = f.read(chunk_bytes)
                    if not chunk:
                        return
                    yield chunk

        self._upload(blob, self._ttl_ms(ttl), chunks)
        return blob

    def _upload(self, blob: BlobRef, ttl_ms: int, chunks: Any) -> None:
        def run() -> None:
            if self._blob_script(blob.sha256, "ref", ttl_ms, blob.len) == 1:
                return
            if self._blobs.objects is not None:
                self._blobs.objects.write(blob, chunks())
                self._blob_script(blob.sha256, "stored", ttl_ms, blob.len)
                return
            # Appended to a key of its own, renamed once complete: a reader
            # never sees half a blob, and an upload that dies half-way
            # leaves a key that expires.
            partial = self._blobs.partial(blob.sha256)
            wrote = False
            for chunk in chunks():
                pipe = self._redis.pipeline(transaction=False)
                pipe.append(partial, bytes(chunk))
                pipe.pexpire(partial, ttl_ms)
                pipe.execute()
                wrote = True
            # An empty blob has no chunk: its data key is never made.
            self._blob_script(blob.sha256, "stored", ttl_ms, blob.len, partial if wrote else None)

        self._retry(run)

    def read_blob(self, blob: Union[BlobRef, str]) -> Iterator[bytes]:
        """The blob's bytes in chunks of `blob_chunk_bytes` (GETRANGE, or
        reads of the object), so
        that a caller writing them out never holds the whole; the digest
        is checked as they come and `BlobError` raised after the last chunk
        when it does not match (or when the blob is missing). A digest
        alone (`str`) reads the length the store recorded."""
        self._blobs.check()
        if isinstance(blob, str):
            stat = self.blob_stat(blob)
            if stat is None:
                raise _blob.missing(blob)
            blob = BlobRef(stat.sha256, stat.len)
        _blob.check_digest(blob.sha256)
        meta, _, data = self._blobs.keys(blob.sha256)
        stored = self._retry(lambda: self._redis.get(meta))
        if stored is None:
            raise _blob.missing(blob.sha256)
        if int(stored) != blob.len:
            raise _blob.damaged(blob, f"a length of {int(stored)}, not {blob.len}")
        reader = _blob.Reader(blob)
        if self._blobs.objects is not None:
            f = self._blobs.objects.open(blob)
            try:
                while True:
                    chunk = f.read(self.settings.blob_chunk_bytes)
                    if not chunk:
                        break
                    reader.take(chunk)
                    yield chunk
            finally:
                f.close()
        else:
            for start, end in _blob.ranges(blob.len, self.settings.blob_chunk_bytes):
                chunk = self._retry(lambda: self._redis.getrange(data, start, end))
                if not chunk:
                    raise _blob.missing(blob.sha256)
                reader.take(chunk)
                yield chunk
        reader.finish()

    def get_blob(self, blob: Union[BlobRef, str]) -> bytes:
        """The blob's bytes, read in chunks and checked against its
        digest; `BlobError` when it is missing or damaged."""
        out = bytearray()
        for chunk in self.read_blob(blob):
            out += chunk
        return bytes(out)

    def get_blob_to(self, blob: Union[BlobRef, str], out: IO[bytes]) -> int:
        """Writes the blob's bytes to a binary file, chunk by chunk (never
        whole in memory); returns how many. A damaged blob raises
        `BlobError` after its last chunk was written."""
        written = 0
        for chunk in self.read_blob(blob):
            out.write(chunk)
            written += len(chunk)
        return written

    def blob_stat(self, sha256: str) -> Optional[BlobStat]:
        """Its length, references, time to live and backend, or None when
        the store holds no such blob."""
        _blob.check_digest(sha256)
        meta, refs, _ = self._blobs.keys(sha256)

        def run() -> Any:
            pipe = self._redis.pipeline(transaction=False)
            pipe.get(meta)
            pipe.get(refs)
            pipe.pttl(meta)
            return pipe.execute()

        size, count, ttl = self._retry(run)
        if size is None:
            return None
        return BlobStat(sha256, int(size), int(count or 0), int(ttl) if int(ttl) >= 0 else None,
                        self._blobs.backend)

    def release_blob(self, blob: BlobRef) -> bool:
        """Gives back one reference (one a `put_blob` took and no task
        used); the last one deletes the blob. True when it was deleted."""
        self._blobs.check()
        _blob.check_digest(blob.sha256)
        deleted = self._retry(lambda: self._blob_script(blob.sha256, "release", 0, 0)) == 1
        if deleted and self._blobs.objects is not None:
            self._blobs.objects.delete(blob)
        return deleted

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


class WorkflowHandle:
    """A submitted workflow: its id, its nodes' task ids by name, and
    whether this submit created it (False: a workflow of this id existed)."""

    def __init__(self, client: Client, workflow_id: str, nodes: Dict[str, str], created: bool) -> None:
        self.client = client
        self.id = workflow_id
        self.nodes = nodes
        self.created = created

    def __repr__(self) -> str:
        return f"WorkflowHandle(id={self.id!r}, nodes={list(self.nodes)})"

    def status(self) -> WorkflowState:
        """Every node's state, device and times, now."""
        state = self.client.workflow_status(self.id)
        if state is None:
            raise WorkflowNotFound(self.id)
        return state

    def wait(self, timeout: Optional[Seconds] = 60.0) -> WorkflowOutcome:
        """Waits for every node to be final; see `Client.wait_workflow`."""
        return self.client._wait_nodes(self.id, self.nodes, timeout)

    def result(self, timeout: Optional[Seconds] = 60.0) -> Dict[str, Any]:
        """The workflow's result, its sink nodes' results by name (typed
        for built-in kinds); raises `WorkflowFailed` when it did not
        succeed."""
        return self.wait(timeout).value()

    def cancel(self) -> str:
        """Cancels every node not yet finished; see `Client.cancel_workflow`."""
        return self.client.cancel_workflow(self.id)


def _redacted(url: str) -> str:
    """A Redis URL without its password, for messages."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
