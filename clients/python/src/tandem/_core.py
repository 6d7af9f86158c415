"""What the sync and asyncio clients share: settings, checking and
completing a task before it is sent (the Rust producer's `Task::into_new_task`
and `Producer::prepare`), the Lua scripts, and reading records."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import unicodedata
import uuid
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Dict, List, Optional, Set, Tuple, Union
from urllib.parse import unquote

from . import _estimates, _model, _schema, _wire
from .errors import InvalidTask
from .outcome import Outcome

Seconds = Union[float, int, datetime.timedelta]

# Kinds whose class is their model's registered class unless given (the
# Rust producer's MODEL_CLASS_KINDS; `train` only with train_on_primary off).
MODEL_CLASS_KINDS = ("infer", "train")
# The registry record's fields `_finish` reads (docs/wire-format.md,
# "Models"): the class, and the architecture that decides a model kind's
# memory (`arch` absent: an MLP).
MODEL_FIELDS = ("class", "arch", "config")


@dataclass(frozen=True)
class ModelLookup:
    """What a checked task waits on from the model registry (the Rust
    producer's `model_deciding_class` and `model_deciding_memory`): the
    model whose registered class becomes its class, and the model whose
    registered shape decides its memory (an `infer`, `predict_batch` or
    `train` task that declares none), with the parameters to size."""

    class_model: Optional[str]
    memory_model: Optional[str]
    params: Any


def registered_model(fields: Any) -> Optional[Tuple[str, Optional[Dict[str, Any]]]]:
    """A model's class and shape (a transformer's; None for an MLP) from
    `HMGET <model> class arch config`, or None when the model is not
    registered or its record is damaged: as the Rust producer, its tasks
    then keep the kind's class and memory estimate."""
    if not isinstance(fields, (list, tuple)) or len(fields) != len(MODEL_FIELDS):
        return None
    cls, arch, config = (_wire.text(v) if isinstance(v, bytes) else None for v in fields)
    if cls not in _wire.CLASSES:
        return None
    if arch is None or arch == "mlp":
        return cls, None
    if arch != "transformer" or config is None:
        return None
    try:
        return cls, _estimates.parse_transformer_config(config)
    except ValueError:
        return None


def models_to_look_up(prepared: List[Tuple[_wire.NewTask, Optional[ModelLookup]]]) -> List[str]:
    """Each model the checked tasks name, once."""
    names: Set[str] = set()
    for _, lookup in prepared:
        if lookup is not None:
            names.update(m for m in (lookup.class_model, lookup.memory_model) if m)
    return sorted(names)


def apply_models(
    task: _wire.NewTask,
    lookup: Optional[ModelLookup],
    models: Dict[str, Tuple[str, Optional[Dict[str, Any]]]],
) -> None:
    """Sets the task's class from its model's registered class and its
    memory from its model's registered shape, as the Rust producer's
    `prepare` (`model_kinds::memory_for_model`)."""
    if lookup is None:
        return
    found = models.get(lookup.class_model) if lookup.class_model else None
    if found is not None:
        task.cls = found[0]
    found = models.get(lookup.memory_model) if lookup.memory_model else None
    if found is not None:
        try:
            task.memory_bytes = _estimates.memory_for_model(task.kind, lookup.params, found[1])
        except (KeyError, TypeError, ValueError, AttributeError):
            # Parameters the kind's own checks report; the estimate stays.
            pass


@dataclass
class Settings:
    """The producer settings of docs/operations.md, with the same defaults
    and environment variables as the Rust producer."""

    redis_url: str = "redis://127.0.0.1:6379"
    prefix: str = "tandem"
    producer_id: str = ""
    signing_key: Optional[bytes] = None
    reconnect_timeout: float = 30.0
    default_max_attempts: int = 3
    max_payload_bytes: int = 1 << 20
    idempotency_ttl_s: int = 86_400
    result_ttl_s: int = 86_400
    reply_maxlen: int = 10_000
    reply_ttl_s: int = 3_600
    train_on_primary: bool = True
    events: bool = True
    # The sentinels' own password (`TANDEM_REDIS_SENTINEL_PASSWORD`), when
    # they require one; the data nodes' is in `redis_url`.
    sentinel_password: Optional[str] = None
    # The blob store (docs/wire-format.md, "Blob references"): parameters
    # and results above `blob_threshold_bytes` travel as a reference (0:
    # never), written and read in chunks of `blob_chunk_bytes`; a put's
    # reference lives `blob_ttl_s` unless given back. `blob_store` is
    # `redis` (the default), a directory every worker shares, or an
    # S3-compatible bucket, `s3://bucket[/prefix]`, reached with the
    # `blob_s3_*` settings (empty: the usual `AWS_*` variables).
    blob_store: str = "redis"
    blob_threshold_bytes: int = 1 << 20
    blob_ttl_s: int = 86_400
    blob_chunk_bytes: int = 1 << 20
    max_blob_bytes: int = 1 << 30
    blob_s3_endpoint: str = ""
    blob_s3_region: str = ""
    blob_s3_access_key_id: str = ""
    blob_s3_secret_access_key: str = field(default="", repr=False)
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, **overrides: Any) -> "Settings":
        env = os.environ

        def num(name: str, default: Any, kind: Any = int) -> Any:
            value = env.get(name)
            if value is None or value == "":
                return default
            try:
                return kind(value)
            except ValueError:
                raise InvalidTask(f"{name}={value!r} is not a number") from None

        key = env.get("TANDEM_SIGNING_KEY", "")
        settings = cls(
            redis_url=env.get("REDIS_URL") or env.get("TANDEM_REDIS_URL") or cls.redis_url,
            prefix=env.get("TANDEM_PREFIX") or cls.prefix,
            producer_id=env.get("TANDEM_PRODUCER_ID", ""),
            signing_key=key.encode() if key else None,
            reconnect_timeout=num("TANDEM_RECONNECT_TIMEOUT_MS", 30_000) / 1000,
            default_max_attempts=num("TANDEM_DEFAULT_MAX_ATTEMPTS", 3),
            max_payload_bytes=num("TANDEM_MAX_PAYLOAD_BYTES", 1 << 20),
            idempotency_ttl_s=num("TANDEM_IDEMPOTENCY_TTL_S", 86_400),
            result_ttl_s=num("TANDEM_RESULT_TTL_S", 86_400),
            reply_maxlen=num("TANDEM_REPLY_MAXLEN", 10_000),
            reply_ttl_s=num("TANDEM_REPLY_TTL_S", 3_600),
            train_on_primary=env.get("TANDEM_TRAIN_ON_PRIMARY", "true").lower() not in ("false", "0", "no"),
            events=env.get("TANDEM_EVENTS", "true").lower() not in ("false", "0", "no"),
            sentinel_password=env.get("TANDEM_REDIS_SENTINEL_PASSWORD") or None,
            blob_store=env.get("TANDEM_BLOB_STORE") or cls.blob_store,
            blob_threshold_bytes=num("TANDEM_BLOB_THRESHOLD_BYTES", 1 << 20),
            blob_ttl_s=num("TANDEM_BLOB_TTL_S", 86_400),
            blob_chunk_bytes=num("TANDEM_BLOB_CHUNK_BYTES", 1 << 20),
            max_blob_bytes=num("TANDEM_MAX_BLOB_BYTES", 1 << 30),
            blob_s3_endpoint=env.get("TANDEM_BLOB_S3_ENDPOINT", ""),
            blob_s3_region=env.get("TANDEM_BLOB_S3_REGION", ""),
            blob_s3_access_key_id=env.get("TANDEM_BLOB_S3_ACCESS_KEY_ID", ""),
            blob_s3_secret_access_key=env.get("TANDEM_BLOB_S3_SECRET_ACCESS_KEY", ""),
        )
        for name, value in overrides.items():
            if value is not None:
                setattr(settings, name, value)
        if isinstance(settings.signing_key, str):
            settings.signing_key = settings.signing_key.encode()
        for name, least in (("blob_chunk_bytes", 1), ("blob_ttl_s", 1), ("blob_threshold_bytes", 0)):
            value = getattr(settings, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise InvalidTask(f"{name}: must be a whole number, at least {least}, got {value!r}", field=name)
        return settings


@dataclass
class SentinelTarget:
    """A master watched by Sentinel (`redis+sentinel://`): the sentinels
    to ask and the master's name; credentials, TLS and db are the data
    nodes' (shared/src/connect.rs)."""

    sentinels: List[Tuple[str, int]]
    master: str
    tls: bool
    username: Optional[str]
    password: Optional[str]
    db: int


def check_url(url: str) -> Optional[SentinelTarget]:
    """One Redis server (`redis://`, `rediss://` for TLS, `unix://`): None;
    a Sentinel URL, `redis+sentinel://[user:password@]s1:p1,s2:p2/<master>[/db]`
    (`rediss+sentinel://` for TLS): its parts, parsed as the Rust producer
    parses them. Cluster URLs are not spoken here yet."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme = ""
    if scheme in ("redis", "rediss", "unix"):
        return None
    if scheme not in ("redis+sentinel", "rediss+sentinel"):
        raise InvalidTask(
            f"redis_url: {scheme or url!r} is not supported by the Python client; use redis://, "
            "rediss://, unix:// or redis+sentinel:// (Cluster URLs: not yet)",
            field="redis_url",
        )

    def bad(problem: str) -> InvalidTask:
        return InvalidTask(f"redis_url: {problem}", field="redis_url")

    authority, _, path = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if not at:
        userinfo, hosts = "", authority
    sentinels = []
    for node in hosts.split(","):
        host, colon, port = node.rpartition(":")
        if not colon:
            raise bad(f"node {node!r} must be host:port")
        if not port.isdigit() or int(port) > 65535:
            raise bad(f"node {node!r} has a bad port")
        if not host:
            raise bad(f"node {node!r} has no host")
        sentinels.append((host.strip("[]"), int(port)))
    master, _, db = path.partition("/")
    if not master:
        raise bad("a sentinel URL ends with /<master name>")
    try:
        number = int(db) if db else 0
    except ValueError:
        raise bad(f"bad database number {db!r}") from None
    username, colon, password = userinfo.partition(":")
    return SentinelTarget(
        sentinels=sentinels,
        master=unquote(master),
        tls=scheme == "rediss+sentinel",
        # As in a redis:// URL: `user:password@`, `:password@` or `user@`.
        username=unquote(username) or None,
        password=(unquote(password) or None) if colon else None,
        db=number,
    )


def sentinel_args(settings: Settings, target: SentinelTarget) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The keyword arguments of redis-py's `Sentinel` for the data nodes
    and for the sentinels (whose password is `sentinel_password`)."""
    node: Dict[str, Any] = {"db": target.db, "socket_timeout": None}
    if target.username:
        node["username"] = target.username
    if target.password:
        node["password"] = target.password
    if target.tls:
        node["ssl"] = True
    asked: Dict[str, Any] = {}
    if settings.sentinel_password:
        asked["password"] = settings.sentinel_password
    return node, asked


def new_producer_id() -> str:
    """`p-` and the last 12 hex digits of a UUID v7, as the Rust producer."""
    return "p-" + uuid.UUID(_wire.new_task_id()).hex[-12:]


class Script:
    """One Lua script: `common.lua` followed by its own file, as
    `shared/src/scripts.rs` builds it (which keeps of `common.lua` only
    what the script uses: the SHA differs, the behaviour does not). It
    comes in two variants, as there: with lifecycle events (the setting
    `events`, on by default) and without. A `standalone` script
    (`blob.lua`) is its file alone, as `shared/src/blob/` loads it, in one
    variant."""

    def __init__(self, name: str, standalone: bool = False) -> None:
        lua = resources.files("tandem") / "lua"
        body = (lua / name).read_text()
        self.name = name
        if standalone:
            self.source = self.quiet_source = body
            self.sha = self.quiet_sha = hashlib.sha1(body.encode()).hexdigest()
            return
        common = (lua / "common.lua").read_text()
        base = f"{common}\n-- {name}\n{body}"
        self.source = f"local EVENTS_MAXLEN = {EVENTS_MAXLEN}\n{base}"
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()
        self.quiet_source = f"local EVENTS_MAXLEN = 0\n{base}"
        self.quiet_sha = hashlib.sha1(self.quiet_source.encode()).hexdigest()

    def variant(self, events: bool) -> Tuple[str, str]:
        """(source, SHA) of the variant the setting `events` names."""
        return (self.source, self.sha) if events else (self.quiet_source, self.quiet_sha)


# The approximate cap of each class's events stream (scripts.rs's
# EVENTS_MAXLEN; a test checks they agree).
EVENTS_MAXLEN = 100_000


SUBMIT = Script("submit.lua")
CANCEL = Script("cancel.lua")
FIND = Script("find.lua")
WORKFLOW_SUBMIT = Script("workflow_submit.lua")
WORKFLOW_CANCEL = Script("workflow_cancel.lua")
BLOB = Script("blob.lua", standalone=True)
SCRIPTS = (SUBMIT, CANCEL, FIND, WORKFLOW_SUBMIT, WORKFLOW_CANCEL, BLOB)


def _catalog() -> Dict[str, Any]:
    text = (resources.files("tandem") / "kinds.json").read_text()
    return json.loads(text)


CATALOG: Dict[str, Any] = _catalog()


def seconds(value: Optional[Seconds], name: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise InvalidTask(f"{name}: expected seconds, 0 or more, got {value!r}", field=name)
    return float(value)


def prepare(
    settings: Settings,
    kind: str,
    params: Any,
    *,
    cls: Optional[str],
    priority: str,
    max_attempts: Optional[int],
    deadline: Optional[Seconds],
    idempotency_key: Optional[str],
    memory_bytes: Optional[int],
    delay: Optional[Seconds] = None,
    run_at: Optional[datetime.datetime] = None,
    rate_key: Optional[str] = None,
    timeout: Optional[Seconds] = None,
    takes_results: bool = False,
    notice: bool = True,
) -> Tuple[_wire.NewTask, Optional[ModelLookup]]:
    """Checks a task and fills in defaults; returns it and, for a model
    kind, the models whose registered class and shape decide its class and
    memory (looked up by the caller: `apply_models`).
    Parameters above `blob_threshold_bytes` are checked against
    `max_blob_bytes` instead of `max_payload_bytes`: the caller stores them
    as a blob and sends its reference (`by_reference`). A workflow node
    whose parameters take its parents' results (`takes_results`) skips the
    kind's schema check: the worker checks them once the results are in."""
    if not isinstance(kind, str) or not kind:
        raise InvalidTask(f"kind: expected a kind's name, got {kind!r}", field="kind")
    params = _model._wire_value(params)
    entry = CATALOG.get(kind)
    if entry is not None and not takes_results:
        try:
            _schema.check(entry["params"], params)
        except _schema.SchemaError as err:
            raise InvalidTask(f"bad parameters for kind {kind}: {err}", kind=kind, field=err.path) from None
    try:
        packed = _wire.pack(params)
    except (TypeError, ValueError, OverflowError) as err:
        raise InvalidTask(f"parameters of kind {kind} cannot be sent as MessagePack: {err}", kind=kind) from None
    if by_reference(settings, packed):
        if len(packed) > settings.max_blob_bytes:
            raise InvalidTask(
                f"parameters are {len(packed)} bytes; the largest blob is {settings.max_blob_bytes} bytes "
                "(max_blob_bytes)",
                kind=kind,
            )
    elif len(packed) > settings.max_payload_bytes:
        raise InvalidTask(
            f"parameters are {len(packed)} bytes; the limit is {settings.max_payload_bytes} (max_payload_bytes)",
            kind=kind,
        )
    if priority not in _wire.PRIORITIES:
        raise InvalidTask(
            f"priority: {priority!r} is not one of {', '.join(_wire.PRIORITIES)}", kind=kind, field="priority"
        )
    if cls is not None and cls not in _wire.CLASSES:
        raise InvalidTask(f"cls: {cls!r} is not one of {', '.join(_wire.CLASSES)}", kind=kind, field="cls")
    model = None
    if cls is None:
        if entry is None:
            raise InvalidTask(f"kind {kind!r} is not built in, so its class must be given (cls=...)", kind=kind)
        cls = _estimates.kind_class(kind, params, entry["class"])
        if kind in MODEL_CLASS_KINDS and not (kind == "train" and settings.train_on_primary):
            model = params.get("model") if isinstance(params, dict) else None
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str)
        or not idempotency_key
        or len(idempotency_key) > 200
        or any(c.isspace() or not c.isprintable() for c in idempotency_key)
    ):
        raise InvalidTask(
            f"idempotency_key: {idempotency_key!r} must be 1-200 characters without whitespace",
            kind=kind,
            field="idempotency_key",
        )
    attempts = settings.default_max_attempts if max_attempts is None else max_attempts
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise InvalidTask(f"max_attempts: must be at least 1, got {attempts!r}", kind=kind, field="max_attempts")
    # As the Rust producer's `Task::memory_bytes`: a given value (even 0,
    # which means the kind's estimate) is not replaced by the model's.
    memory_declared = memory_bytes is not None
    if memory_bytes is None or memory_bytes == 0:
        # As the Rust producer: 0 (or nothing) means the kind's estimate.
        memory_bytes = 0
        if entry is not None:
            try:
                memory_bytes = _estimates.memory_estimate(kind, params)
            except (KeyError, TypeError, ValueError, AttributeError):
                # Placeholders stand where the estimate reads (a node that
                # takes its parents' results): the worker sizes it.
                if not takes_results:
                    raise

    if isinstance(memory_bytes, bool) or not isinstance(memory_bytes, int) or memory_bytes < 0:
        raise InvalidTask(f"memory_bytes: expected bytes, 0 or more, got {memory_bytes!r}", field="memory_bytes")
    deadline_s = seconds(deadline, "deadline")
    if rate_key is not None and (
        not isinstance(rate_key, str)
        or not rate_key
        or len(rate_key.encode()) > 200
        or any(c.isspace() or unicodedata.category(c) == "Cc" for c in rate_key)
    ):
        raise InvalidTask(
            f"rate_key {rate_key!r} must be 1-200 characters, without whitespace or control characters",
            kind=kind,
            field="rate_key",
        )
    task = _wire.NewTask(
        id=_wire.new_task_id(),
        kind=kind,
        cls=cls,
        priority=priority,
        params=packed,
        max_attempts=attempts,
        memory_bytes=memory_bytes,
        deadline_in_ms=max(1, round(deadline_s * 1000)) if deadline_s is not None else 0,
        idempotency_key=idempotency_key,
        timeout_ms=_timeout_ms(timeout, kind),
        rate_key=rate_key,
        run_at=_run_at(delay, run_at, kind),
        notice=bool(notice),
    )
    memory_model = None
    if kind in _estimates.MODEL_MEMORY_KINDS and not memory_declared and not takes_results:
        memory_model = params.get("model") if isinstance(params, dict) else None
    lookup = None
    if isinstance(model, str) or isinstance(memory_model, str):
        lookup = ModelLookup(
            class_model=model if isinstance(model, str) else None,
            memory_model=memory_model if isinstance(memory_model, str) else None,
            params=params,
        )
    return task, lookup


def by_reference(settings: Settings, packed: bytes) -> bool:
    """Whether parameters travel as a blob reference (above
    `blob_threshold_bytes`; 0: never), as the Rust producer decides."""
    return 0 < settings.blob_threshold_bytes < len(packed)


def _run_at(delay: Optional[Seconds], run_at: Optional[datetime.datetime], kind: str) -> Optional[Tuple[str, int]]:
    """submit.lua's `delay_ms` or `run_at_ms` pair, as the Rust producer's
    `Task::delay` and `Task::run_at` send them (whole ms, rounded down)."""
    if delay is not None and run_at is not None:
        raise InvalidTask("delay and run_at: give one of them, not both", kind=kind, field="delay")
    if delay is not None:
        value = delay.total_seconds() if isinstance(delay, datetime.timedelta) else delay
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise InvalidTask(
                f"delay: expected seconds (or a timedelta), got {delay!r}", kind=kind, field="delay"
            )
        if value < 0:
            raise InvalidTask(
                f"delay: {delay!r} is negative; a delay is 0 or more (to run at once, leave it out)",
                kind=kind,
                field="delay",
            )
        if value == float("inf") or value * 1000 >= 2**64:
            raise InvalidTask(f"delay {delay!r} is too long", kind=kind, field="delay")
        return ("delay_ms", _whole_ms(delay))
    if run_at is not None:
        if not isinstance(run_at, datetime.datetime):
            raise InvalidTask(
                f"run_at: expected a datetime with a time zone, got {run_at!r}", kind=kind, field="run_at"
            )
        if run_at.tzinfo is None or run_at.utcoffset() is None:
            raise InvalidTask(
                f"run_at: {run_at.isoformat()} has no time zone; give one "
                "(datetime.now(timezone.utc) + timedelta(...), or tzinfo=...)",
                kind=kind,
                field="run_at",
            )
        ms = (run_at - _EPOCH) // datetime.timedelta(milliseconds=1)
        if ms < 0:
            raise InvalidTask(
                f"run_at {run_at.isoformat()} is before 1970 or too far ahead", kind=kind, field="run_at"
            )
        return ("run_at_ms", ms)
    return None


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def _timeout_ms(timeout: Optional[Seconds], kind: str) -> Optional[int]:
    """The run-time limit in whole ms (rounded down, at least 1), as the
    Rust producer's `Task::timeout`."""
    if timeout is None:
        return None
    value = timeout.total_seconds() if isinstance(timeout, datetime.timedelta) else timeout
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
        raise InvalidTask(
            f"timeout: expected seconds (or a timedelta) above 0, got {timeout!r}", kind=kind, field="timeout"
        )
    if value == 0:
        raise InvalidTask("timeout must be at least 1 ms", kind=kind, field="timeout")
    return max(1, min(_whole_ms(timeout if value < 1e300 else 1e300), 2**64 - 1))


def _whole_ms(value: Seconds) -> int:
    """Whole ms, rounded down: a timedelta exactly; seconds as a float to
    the nearest microsecond first, so that 1.001 s is 1001 ms, not the
    1000.999... ms its binary value holds."""
    if isinstance(value, datetime.timedelta):
        return value // datetime.timedelta(milliseconds=1)
    return round(value * 1_000_000) // 1000


def sign(settings: Settings, task: _wire.NewTask, reply_to: Optional[str]) -> None:
    if settings.signing_key:
        task.signature = _wire.signature(
            settings.signing_key,
            task.id,
            task.kind,
            task.cls,
            task.priority,
            task.max_attempts,
            reply_to or "",
            task.params,
        )


def parse_submitted(reply: Any) -> Tuple[str, bool]:
    """submit.lua's reply: (task id, created)."""
    if not isinstance(reply, (list, tuple)) or len(reply) != 2:
        raise _wire_error("submit", reply)
    return _wire.text(reply[0]), int(reply[1]) == 1


def parse_found(reply: Any) -> Optional[Tuple[str, Dict[str, Any]]]:
    """find.lua's reply: (class, record fields) or None."""
    if not isinstance(reply, (list, tuple)) or not reply:
        raise _wire_error("find", reply)
    index = int(reply[0])
    if index == 0:
        return None
    return _wire.CLASSES[index - 1], _wire.fields(reply[1])


def find_keys(keys: _wire.Keys, task_id: str) -> List[str]:
    return [keys.task(cls, task_id) for cls in _wire.CLASSES]


def cancel_args(settings: Settings, keys: _wire.Keys, cls: str, task_id: str) -> Tuple[List[str], List[Any]]:
    return [keys.task(cls, task_id)], [
        keys.cancel_channel(),
        settings.result_ttl_s,
        settings.reply_maxlen,
        settings.reply_ttl_s,
        task_id,
    ]


def cancel_outcome(reply: Any) -> Optional[str]:
    """`cancelled`, `requested`, `finished <status>`, or None (not found
    in this class)."""
    words = [_wire.text(w) for w in reply]
    if words[0] == "not_found":
        return None
    return " ".join(words)


@dataclass(frozen=True)
class Progress:
    """A task's progress report: the fraction done (0 to 1), a short
    message, and when it was written (ms since the epoch, Redis clock)."""

    fraction: float
    message: str
    at_ms: Optional[int]

    @classmethod
    def from_fields(cls, fields: Dict[str, Any], at: str) -> Optional["Progress"]:
        """From a record (`at` = `progress_at_ms`) or a `progress` event
        (`at_ms`); None when it holds no readable report."""
        try:
            fraction = float(fields["progress"])
        except (KeyError, TypeError, ValueError):
            return None
        try:
            at_ms: Optional[int] = int(fields[at])
        except (KeyError, TypeError, ValueError):
            at_ms = None
        return cls(fraction, str(fields.get("progress_msg") or ""), at_ms)


# How long one blocking read of the events waits before it re-arms (ms),
# as the Rust producer's PROGRESS_BLOCK_MS.
PROGRESS_BLOCK_MS = 5_000
# Events that end a task's progress: it is final.
FINAL_EVENTS = frozenset(("succeeded", "failed", "cancelled", "expired"))


class Following:
    """Where a progress reader stands (the Rust producer's `Following`):
    reports read and not handed out, the last one handed out (a repeat is
    skipped), whether the task ended."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.pending: List[Progress] = []
        self.last: Optional[Tuple[float, str]] = None
        self.done = False

    def push(self, progress: Optional[Progress]) -> None:
        if progress is not None and (progress.fraction, progress.message) != self.last:
            self.last = (progress.fraction, progress.message)
            self.pending.append(progress)

    def record(self, fields: Dict[str, Any]) -> None:
        """The record read after the cursor was placed."""
        if fields.get("status") in _wire.FINAL:
            self.done = True
        self.push(Progress.from_fields(fields, "progress_at_ms"))

    def events(self, replies: Any) -> Any:
        """Takes this task's reports and end from an XREAD reply; returns
        the id to read after (None: nothing read)."""
        cursor = None
        for _stream, entries in replies or []:
            for entry_id, raw in entries:
                cursor = entry_id
                fields = _wire.fields(raw)
                if fields.get("id") != self.task_id:
                    continue
                event = fields.get("event")
                if event == "progress":
                    self.push(Progress.from_fields(fields, "at_ms"))
                elif event in FINAL_EVENTS:
                    self.done = True
        return cursor


def left_out(fields: Dict[str, Any]) -> bool:
    """A succeeded notice whose result was over `inline_result_bytes`."""
    return fields.get("status") == "succeeded" and "result" not in fields and "result_bytes" in fields


def outcome(task_id: str, fields: Dict[str, Any]) -> Outcome:
    return Outcome.from_fields(task_id, fields)


def _wire_error(what: str, reply: Any) -> Exception:
    from .errors import TandemError

    return TandemError(f"{what}: unexpected reply from Redis: {reply!r}")
