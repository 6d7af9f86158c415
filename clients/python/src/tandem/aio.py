"""`AsyncClient`: the asyncio API, the same calls as `Client` as
coroutines.

As in the Rust producer, one listener task per reply stream blocks in
`XREAD` and hands each notice to whoever waits for that task. A wait
registers first, makes sure the listener of the task's stream runs (it
notes where it starts reading before the record is read), then reads the
record: a task that finished before is found there, one that finishes
after is announced on the stream, so none is missed and none is polled
for. Many waits share one listener: `asyncio.gather` over thousands of
`wait` calls costs one blocking read per class.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from typing import IO, Any, AsyncIterator, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel

from . import _blob, _core, _wire, _workflow
from ._blob import BlobRef, BlobStat
from ._core import Progress, Seconds, Settings
from ._workflow import Workflow, WorkflowState
from .client import BLOCK_MS, RETRIED, Task, _redacted
from .errors import InvalidTask, InvalidWorkflow, RedisUnavailable, TaskNotFound, WaitTimeout, WorkflowNotFound
from .outcome import Outcome, WorkflowOutcome

# Wakes a waiter so that it reads its record again (the listener's
# connection broke: notices may be lost).
_RESYNC = object()


class AsyncClient:
    """A producer for asyncio code.

    >>> async with AsyncClient("redis://127.0.0.1:6379") as client:   # doctest: +SKIP
    ...     task = await client.submit("sleep", {"ms": 10})
    ...     result = await client.wait(task)
    """

    def __init__(self, redis_url: Optional[str] = None, **settings: Any) -> None:
        self.settings = Settings.from_env(redis_url=redis_url, **settings)
        target = _core.check_url(self.settings.redis_url)
        self.keys = _wire.Keys(self.settings.prefix)
        self.producer_id = self.settings.producer_id or _core.new_producer_id()
        if target is None:
            self._redis = aioredis.Redis.from_url(self.settings.redis_url, socket_timeout=None)
        else:
            node, asked = _core.sentinel_args(self.settings, target)
            sentinel = AsyncSentinel(target.sentinels, sentinel_kwargs=asked, **node)
            self._redis = sentinel.master_for(target.master, **node)
        self._scripts_loaded = False
        self._listeners: Dict[str, asyncio.Task] = {}
        self._listener_lock = asyncio.Lock()
        # Task id -> the futures of its waits.
        self._waiters: Dict[str, Set[asyncio.Future]] = {}
        # Tasks this client created, registered before they were sent (as
        # the Rust producer's `submit_handle`): their wait reads nothing.
        self._submitted: Dict[str, asyncio.Future] = {}
        self._blobs = _blob.Layout(self.keys, self.settings)

    @property
    def redis(self) -> "aioredis.Redis":
        return self._redis

    async def close(self) -> None:
        for task in self._listeners.values():
            task.cancel()
        for task in self._listeners.values():
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._listeners.clear()
        await self._redis.aclose() if hasattr(self._redis, "aclose") else await self._redis.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # --- submitting ----------------------------------------------------------

    async def submit(
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
        """As `Client.submit`."""
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
        return (await self.submit_many([task]))[0]

    async def submit_many(self, tasks: Iterable[Task]) -> List[str]:
        """As `Client.submit_many`: one round trip, nothing sent if one task
        is invalid."""
        prepared = [_core.prepare(self.settings, t.kind, t.params, **t.options) for t in tasks]
        new_tasks = await self._finish(prepared)
        # Listen first and register every task before it is sent, so that
        # no notice can come before its waiter.
        for cls in sorted({t.cls for t in new_tasks if t.notice}):
            await self._ensure_listener(self.keys.reply(cls, self.producer_id))
        loop = asyncio.get_running_loop()
        # A task without a notice has nothing to register for: its wait goes
        # the general way (the record).
        for task in (t for t in new_tasks if t.notice):
            future = loop.create_future()
            self._submitted[task.id] = future
            self._waiters.setdefault(task.id, set()).add(future)
        try:
            replies = await self._retry(lambda: self._send(new_tasks))
        except BaseException:
            for task in new_tasks:
                self._unregister(task.id, self._submitted.pop(task.id, None))
            raise
        ids = []
        for task, reply in zip(new_tasks, replies):
            if isinstance(reply, Exception):
                self._unregister(task.id, self._submitted.pop(task.id, None))
                raise _core._wire_error("submit", reply)
            task_id, created = _core.parse_submitted(reply)
            if not created:
                # An idempotency key named an earlier task, which may have
                # finished already: its wait goes the general way.
                self._unregister(task.id, self._submitted.pop(task.id, None))
            ids.append(task_id)
        return ids

    async def _finish(self, prepared: List[Any]) -> List[_wire.NewTask]:
        """As `Client._finish`: model classes and memory, blob references, signatures."""
        names = _core.models_to_look_up(prepared)
        models = await self._retry(lambda: self._registered_models(names)) if names else {}
        new_tasks = []
        for task, lookup in prepared:
            _core.apply_models(task, lookup, models)
            if _core.by_reference(self.settings, task.params):
                task.params = (await self.put_blob(task.params)).encode()
            _core.sign(self.settings, task, self._reply_to(task))
            new_tasks.append(task)
        return new_tasks

    def _unregister(self, task_id: str, future: Optional[asyncio.Future]) -> None:
        waiting = self._waiters.get(task_id)
        if waiting is not None and future is not None:
            waiting.discard(future)
            if not waiting:
                del self._waiters[task_id]

    def _reply_to(self, task: _wire.NewTask) -> Optional[str]:
        """As `Client._reply_to`."""
        return self.keys.reply(task.cls, self.producer_id) if task.notice else None

    async def _send(self, tasks: Sequence[_wire.NewTask]) -> List[Any]:
        await self._load_scripts()
        pipe = self._redis.pipeline(transaction=False)
        for task in tasks:
            reply_to = self._reply_to(task)
            keys, args = task.submit_args(self.keys, self.producer_id, reply_to, self.settings.idempotency_ttl_s)
            pipe.evalsha(_core.SUBMIT.variant(self.settings.events)[1], len(keys), *keys, *args)
        return await pipe.execute(raise_on_error=False)

    async def _registered_models(self, names: List[str]) -> Dict[str, Tuple[str, Optional[Dict[str, Any]]]]:
        """Each named model's registered class and shape, one pipelined
        round trip; a model not registered, or whose record is damaged, is
        absent (its tasks keep the kind's class and memory estimate)."""
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.hmget(self.keys.model(name), *_core.MODEL_FIELDS)
        found = await pipe.execute(raise_on_error=False)
        models = {}
        for name, fields in zip(names, found):
            model = _core.registered_model(fields)
            if model is not None:
                models[name] = model
        return models

    # --- reading and cancelling ---------------------------------------------

    async def status(self, task_id: str) -> str:
        found = await self._find(task_id)
        if found is None or "status" not in found[1]:
            raise TaskNotFound(task_id)
        return found[1]["status"]

    async def record(self, task_id: str) -> Optional[Dict[str, Any]]:
        found = await self._find(task_id)
        return found[1] if found else None

    async def cancel(self, task_id: str) -> str:
        """As `Client.cancel`."""

        async def run() -> Optional[str]:
            await self._load_scripts()
            pipe = self._redis.pipeline(transaction=False)
            for cls in _wire.CLASSES:
                keys, args = _core.cancel_args(self.settings, self.keys, cls, task_id)
                pipe.evalsha(_core.CANCEL.variant(self.settings.events)[1], len(keys), *keys, *args)
            for reply in await pipe.execute():
                answer = _core.cancel_outcome(reply)
                if answer is not None:
                    return answer
            return None

        answer = await self._retry(run)
        if answer is None:
            raise TaskNotFound(task_id)
        return answer

    async def last_progress(self, task_id: str) -> Optional[Progress]:
        """As `Client.last_progress`."""
        found = await self._find(task_id)
        if found is None:
            raise TaskNotFound(task_id)
        return Progress.from_fields(found[1], "progress_at_ms")

    async def progress(self, task_id: str) -> AsyncIterator[Progress]:
        """As `Client.progress`, an async iterator: `async for report in
        client.progress(task_id)`."""
        found = await self._find(task_id)
        if found is None:
            raise TaskNotFound(task_id)
        stream = self.keys.events(found[0])
        following = _core.Following(task_id)

        async def newest() -> Any:
            last = await self._redis.xrevrange(stream, "+", "-", count=1)
            return last[0][0] if last else b"0-0"

        cursor = await self._retry(newest)
        found = await self._find(task_id)
        if found is None:
            raise TaskNotFound(task_id)
        following.record(found[1])
        while True:
            while following.pending:
                yield following.pending.pop(0)
            if following.done:
                return
            try:
                replies = await self._redis.xread({stream: cursor}, count=256, block=_core.PROGRESS_BLOCK_MS)
            except RETRIED:
                await self._retry(self._redis.ping)
                replies = None
            read = following.events(replies)
            if read is not None:
                cursor = read
            else:
                found = await self._find(task_id)
                if found is None:
                    raise TaskNotFound(task_id)
                following.record(found[1])

    async def _find(self, task_id: str):
        async def run():
            await self._load_scripts()
            keys = _core.find_keys(self.keys, task_id)
            return _core.parse_found(await self._redis.evalsha(_core.FIND.variant(self.settings.events)[1], len(keys), *keys))

        return await self._retry(run)

    # --- waiting -------------------------------------------------------------

    async def wait(self, task_id: str, timeout: Optional[Seconds] = 60.0) -> Any:
        """As `Client.wait`."""
        return (await self.wait_outcome(task_id, timeout)).value()

    async def run(self, kind: str, params: Any = None, *, timeout: Optional[Seconds] = 60.0, **options: Any) -> Any:
        return await self.wait(await self.submit(kind, params, **options), timeout)

    async def wait_many(self, task_ids: Sequence[str], timeout: Optional[Seconds] = 60.0) -> List[Outcome]:
        """Outcomes of several tasks, in order, waited for together."""
        return list(await asyncio.gather(*(self.wait_outcome(t, timeout) for t in task_ids)))

    async def wait_outcome(self, task_id: str, timeout: Optional[Seconds] = 60.0) -> Outcome:
        limit = _core.seconds(timeout, "timeout")
        try:
            if limit is None:
                fields = await self._wait_fields(task_id)
            else:
                fields = await asyncio.wait_for(self._wait_fields(task_id), limit)
        except asyncio.TimeoutError:
            raise WaitTimeout(task_id, limit or 0.0) from None
        return await self._complete(task_id, fields)

    async def _wait_fields(self, task_id: str) -> Dict[str, Any]:
        registered = self._submitted.pop(task_id, None)
        if registered is not None:
            try:
                got = await registered
            finally:
                self._unregister(task_id, registered)
            if got is not _RESYNC:
                return got
            # The listener reconnected: the record decides (below).
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(task_id, set()).add(future)
        try:
            found = await self._find(task_id)
            if found is None:
                raise TaskNotFound(task_id)
            cls, record = found
            if record.get("status") in _wire.FINAL:
                return record
            stream = record.get("reply_to") or ""
            if not self.keys.is_reply_for(cls, stream):
                return await self._await_by_record(task_id)
            if await self._ensure_listener(stream):
                # The listener started after the read above: the notice may
                # have come before it, so look once more.
                found = await self._find(task_id)
                if found is None:
                    raise TaskNotFound(task_id)
                if found[1].get("status") in _wire.FINAL:
                    return found[1]
            while True:
                got = await future
                if got is not _RESYNC:
                    return got
                future = asyncio.get_running_loop().create_future()
                self._waiters.setdefault(task_id, set()).add(future)
                found = await self._find(task_id)
                if found is None:
                    raise TaskNotFound(task_id)
                if found[1].get("status") in _wire.FINAL:
                    return found[1]
        finally:
            waiting = self._waiters.get(task_id)
            if waiting is not None:
                waiting.discard(future)
                if not waiting:
                    del self._waiters[task_id]

    async def _await_by_record(self, task_id: str) -> Dict[str, Any]:
        pause = 1.0
        while True:
            await asyncio.sleep(pause)
            pause = min(pause * 2, 8.0)
            found = await self._find(task_id)
            if found is None:
                raise TaskNotFound(task_id)
            if found[1].get("status") in _wire.FINAL:
                return found[1]

    async def _ensure_listener(self, stream: str) -> bool:
        """Starts the listener of `stream` unless one runs; True when this
        call started it."""
        async with self._listener_lock:
            running = self._listeners.get(stream)
            if running is not None and not running.done():
                return False

            async def newest() -> Any:
                last = await self._redis.xrevrange(stream, "+", "-", count=1)
                return last[0][0] if last else b"0-0"

            start = await self._retry(newest)
            self._listeners[stream] = asyncio.get_running_loop().create_task(self._listen(stream, start))
            return True

    async def _listen(self, stream: str, cursor: Any) -> None:
        while True:
            try:
                replies: Any = await self._redis.xread({stream: cursor}, block=BLOCK_MS) or []
            except RETRIED:
                await self._retry(self._redis.ping)
                self._wake_all(_RESYNC)
                continue
            for _, notices in replies:
                for notice_id, notice in notices:
                    cursor = notice_id
                    fields = _wire.fields(notice)
                    for future in self._waiters.get(fields.get("id", ""), ()):
                        if not future.done():
                            future.set_result(fields)

    def _wake_all(self, value: Any) -> None:
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.set_result(value)

    async def _complete(self, task_id: str, fields: Dict[str, Any]) -> Outcome:
        if _core.left_out(fields):
            key = self.keys.task(fields.get("class", ""), task_id)
            found = await self._retry(lambda: self._redis.hget(key, "result"))
            fields = dict(fields, result=found)
        blob = BlobRef.detect(fields.get("result"))
        if blob is not None:
            fields = dict(fields, result=await self.get_blob(blob))
        outcome = _core.outcome(task_id, fields)
        outcome.result_blob = blob
        return outcome

    # --- workflows -----------------------------------------------------------

    async def submit_workflow(self, workflow: Union[Workflow, Dict[str, Any]]) -> "AsyncWorkflowHandle":
        """As `Client.submit_workflow`."""
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
        tasks = await self._finish(prepared)
        ordered = [(workflow.nodes[i].name, task, workflow.nodes[i].after) for i, task in zip(order, tasks)]
        for cls in sorted({t.cls for t in tasks}):
            await self._ensure_listener(self.keys.reply(cls, self.producer_id))
        keys, args = _workflow.submit_args(
            self.keys, workflow.id, workflow.on_failure, ordered, self.producer_id,
            lambda cls: self.keys.reply(cls, self.producer_id),
        )
        loop = asyncio.get_running_loop()
        for task in tasks:
            future = loop.create_future()
            self._submitted[task.id] = future
            self._waiters.setdefault(task.id, set()).add(future)

        async def send() -> Any:
            await self._load_scripts()
            sha = _core.WORKFLOW_SUBMIT.variant(self.settings.events)[1]
            return await self._redis.evalsha(sha, len(keys), *keys, *args)

        try:
            reply = await self._retry(send)
            created = int(reply[1]) == 1
        except BaseException as err:
            for task in tasks:
                self._unregister(task.id, self._submitted.pop(task.id, None))
            if isinstance(err, redis.ResponseError):
                raise InvalidWorkflow(f"workflow {workflow.id}: {err}") from None
            raise
        nodes = {name: task.id for name, task, _ in ordered}
        if not created:
            for task in tasks:
                self._unregister(task.id, self._submitted.pop(task.id, None))
            found = await self.workflow_status(workflow.id)
            if found is not None:
                nodes = {n.name: n.id for n in found.nodes}
        return AsyncWorkflowHandle(self, workflow.id, nodes, created)

    async def workflow_status(self, workflow_id: str) -> Optional[WorkflowState]:
        """As `Client.workflow_status`."""

        async def run() -> Optional[WorkflowState]:
            found = await self._find_workflow(workflow_id)
            if found is None:
                return None
            graph = _workflow.parse_graph(found[1])
            pipe = self._redis.pipeline(transaction=False)
            for entry in graph:
                pipe.hgetall(self.keys.task(entry["class"], entry["id"]))
            records = [_wire.fields(r) for r in await pipe.execute()] if graph else []
            return _workflow.state(workflow_id, found[1], graph, records)

        return await self._retry(run)

    async def _find_workflow(self, workflow_id: str):
        pipe = self._redis.pipeline(transaction=False)
        for cls in _wire.CLASSES:
            pipe.hgetall(self.keys.workflow(cls, workflow_id))
        for cls, found in zip(_wire.CLASSES, await pipe.execute()):
            if found:
                return cls, _wire.fields(found)
        return None

    async def wait_workflow(self, workflow_id: str, timeout: Optional[Seconds] = 60.0) -> WorkflowOutcome:
        """As `Client.wait_workflow`."""
        found = await self.workflow_status(workflow_id)
        if found is None:
            raise WorkflowNotFound(workflow_id)
        return await self._wait_nodes(workflow_id, {n.name: n.id for n in found.nodes}, timeout)

    async def _wait_nodes(self, workflow_id: str, nodes: Dict[str, str],
                          timeout: Optional[Seconds]) -> WorkflowOutcome:
        outcomes = await self.wait_many(list(nodes.values()), timeout)
        state = await self.workflow_status(workflow_id)
        if state is None:
            raise WorkflowNotFound(workflow_id)
        return WorkflowOutcome.of(state, dict(zip(nodes, outcomes)))

    async def cancel_workflow(self, workflow_id: str) -> str:
        """As `Client.cancel_workflow`."""

        async def run() -> str:
            await self._load_scripts()
            found = await self._find_workflow(workflow_id)
            if found is None:
                return "not_found"
            sha = _core.WORKFLOW_CANCEL.variant(self.settings.events)[1]
            reply = await self._redis.evalsha(
                sha, 1, self.keys.workflow(found[0], workflow_id), self.settings.result_ttl_s,
                self.settings.reply_maxlen, self.settings.reply_ttl_s,
            )
            return _workflow.cancel_outcome(reply)

        answer = await self._retry(run)
        if answer == "not_found":
            raise WorkflowNotFound(workflow_id)
        return answer

    # --- blobs ---------------------------------------------------------------

    async def _blob_script(self, sha256: str, op: str, ttl_ms: int, size: int,
                           partial: Optional[str] = None) -> int:
        await self._load_scripts()
        keys = self._blobs.keys(sha256) + ([partial] if partial else [])
        return int(await self._redis.evalsha(_core.BLOB.sha, len(keys), *keys, op, ttl_ms, size))

    async def put_blob(self, data: bytes, ttl: Optional[Seconds] = None) -> BlobRef:
        """As `Client.put_blob` (a directory's file or an S3 object is
        written by a thread)."""
        self._blobs.check()
        data = bytes(data)
        blob = BlobRef.of(data)
        limit = _core.seconds(ttl, "ttl")
        ttl_ms = max(1, round((self.settings.blob_ttl_s if limit is None else limit) * 1000))

        async def run() -> None:
            if await self._blob_script(blob.sha256, "ref", ttl_ms, blob.len) == 1:
                return
            if self._blobs.objects is not None:
                chunks = _blob.chunks_of(data, self.settings.blob_chunk_bytes)
                await asyncio.to_thread(self._blobs.objects.write, blob, chunks)
                await self._blob_script(blob.sha256, "stored", ttl_ms, blob.len)
                return
            partial = self._blobs.partial(blob.sha256)
            wrote = False
            for chunk in _blob.chunks_of(data, self.settings.blob_chunk_bytes):
                pipe = self._redis.pipeline(transaction=False)
                pipe.append(partial, bytes(chunk))
                pipe.pexpire(partial, ttl_ms)
                await pipe.execute()
                wrote = True
            await self._blob_script(blob.sha256, "stored", ttl_ms, blob.len, partial if wrote else None)

        await self._retry(run)
        return blob

    async def read_blob(self, blob: Union[BlobRef, str]) -> AsyncIterator[bytes]:
        """As `Client.read_blob`: chunks, the digest checked at the end."""
        self._blobs.check()
        if isinstance(blob, str):
            stat = await self.blob_stat(blob)
            if stat is None:
                raise _blob.missing(blob)
            blob = BlobRef(stat.sha256, stat.len)
        _blob.check_digest(blob.sha256)
        meta, _, data = self._blobs.keys(blob.sha256)
        stored = await self._retry(lambda: self._redis.get(meta))
        if stored is None:
            raise _blob.missing(blob.sha256)
        if int(stored) != blob.len:
            raise _blob.damaged(blob, f"a length of {int(stored)}, not {blob.len}")
        reader = _blob.Reader(blob)
        if self._blobs.objects is not None:
            f = await asyncio.to_thread(self._blobs.objects.open, blob)
            try:
                while True:
                    chunk = await asyncio.to_thread(f.read, self.settings.blob_chunk_bytes)
                    if not chunk:
                        break
                    reader.take(chunk)
                    yield chunk
            finally:
                f.close()
        else:
            for start, end in _blob.ranges(blob.len, self.settings.blob_chunk_bytes):
                chunk = await self._retry(lambda: self._redis.getrange(data, start, end))
                if not chunk:
                    raise _blob.missing(blob.sha256)
                reader.take(chunk)
                yield chunk
        reader.finish()

    async def get_blob(self, blob: Union[BlobRef, str]) -> bytes:
        """As `Client.get_blob`."""
        out = bytearray()
        async for chunk in self.read_blob(blob):
            out += chunk
        return bytes(out)

    async def get_blob_to(self, blob: Union[BlobRef, str], out: IO[bytes]) -> int:
        """As `Client.get_blob_to`."""
        written = 0
        async for chunk in self.read_blob(blob):
            out.write(chunk)
            written += len(chunk)
        return written

    async def blob_stat(self, sha256: str) -> Optional[BlobStat]:
        """As `Client.blob_stat`."""
        _blob.check_digest(sha256)
        meta, refs, _ = self._blobs.keys(sha256)

        async def run() -> Any:
            pipe = self._redis.pipeline(transaction=False)
            pipe.get(meta)
            pipe.get(refs)
            pipe.pttl(meta)
            return await pipe.execute()

        size, count, ttl = await self._retry(run)
        if size is None:
            return None
        return BlobStat(sha256, int(size), int(count or 0), int(ttl) if int(ttl) >= 0 else None,
                        self._blobs.backend)

    async def release_blob(self, blob: BlobRef) -> bool:
        """As `Client.release_blob`."""
        self._blobs.check()
        _blob.check_digest(blob.sha256)
        deleted = await self._retry(lambda: self._blob_script(blob.sha256, "release", 0, 0)) == 1
        if deleted and self._blobs.objects is not None:
            await asyncio.to_thread(self._blobs.objects.delete, blob)
        return deleted

    # --- Redis ---------------------------------------------------------------

    async def _load_scripts(self) -> None:
        if self._scripts_loaded:
            return
        for script in _core.SCRIPTS:
            source, sha = script.variant(self.settings.events)
            got = _wire.text(await self._redis.script_load(source))
            if got != sha:
                raise RedisUnavailable(
                    f"Redis named script {script.name} {got}, expected {sha}: the script was altered in transit"
                )
        self._scripts_loaded = True

    async def _retry(self, op):
        give_up = time.monotonic() + self.settings.reconnect_timeout
        pause = 0.05
        while True:
            try:
                return await op()
            except redis.exceptions.NoScriptError:
                self._scripts_loaded = False
                continue
            except RETRIED as err:
                if time.monotonic() >= give_up:
                    raise RedisUnavailable(
                        f"Redis at {_redacted(self.settings.redis_url)} unreachable for "
                        f"{self.settings.reconnect_timeout:g} s: {err}"
                    ) from err
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)
                self._scripts_loaded = False


class AsyncWorkflowHandle:
    """As `WorkflowHandle`, for asyncio."""

    def __init__(self, client: AsyncClient, workflow_id: str, nodes: Dict[str, str], created: bool) -> None:
        self.client = client
        self.id = workflow_id
        self.nodes = nodes
        self.created = created

    def __repr__(self) -> str:
        return f"AsyncWorkflowHandle(id={self.id!r}, nodes={list(self.nodes)})"

    async def status(self) -> WorkflowState:
        state = await self.client.workflow_status(self.id)
        if state is None:
            raise WorkflowNotFound(self.id)
        return state

    async def wait(self, timeout: Optional[Seconds] = 60.0) -> WorkflowOutcome:
        return await self.client._wait_nodes(self.id, self.nodes, timeout)

    async def result(self, timeout: Optional[Seconds] = 60.0) -> Dict[str, Any]:
        return (await self.wait(timeout)).value()

    async def cancel(self) -> str:
        return await self.client.cancel_workflow(self.id)
