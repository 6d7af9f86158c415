"""What this client writes to and reads from Redis, following
docs/wire-format.md (version 2): key names, the task entry's metadata, the
signature, and the MessagePack encoding of parameters (NumPy arrays
included). Only this module and the Lua scripts in ``lua/`` (copies of
``shared/lua/``, checked by the tests) know field and key names.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import msgpack

WIRE_VERSION = "2"
CLASSES = ("heavy", "light", "parallel", "cpu")
PRIORITIES = ("critical", "high", "normal", "low")
FINAL = frozenset(("succeeded", "failed", "cancelled", "expired"))


class Keys:
    """The key names of one deployment (section "Keys")."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def stream(self, cls: str, priority: str) -> str:
        return f"{self.prefix}:{{{cls}}}:stream:{priority}"

    def task(self, cls: str, task_id: str) -> str:
        return f"{self.prefix}:{{{cls}}}:task:{task_id}"

    def idempotency(self, cls: str, key: str) -> str:
        return f"{self.prefix}:{{{cls}}}:idem:{key}"

    def reply(self, cls: str, producer_id: str) -> str:
        return f"{self.prefix}:{{{cls}}}:reply:{producer_id}"

    def is_reply_for(self, cls: str, stream: str) -> bool:
        return stream.startswith(f"{self.prefix}:{{{cls}}}:reply:")

    def model(self, name: str) -> str:
        return f"{self.prefix}:{{models}}:model:{name}"

    def events(self, cls: str) -> str:
        """The class's lifecycle events stream (section "Events")."""
        return f"{self.prefix}:{{{cls}}}:events"

    def cancel_channel(self) -> str:
        return f"{self.prefix}:cancel"

    def workflow(self, cls: str, workflow_id: str) -> str:
        """A workflow's hash (revision 2.7), under its first node's class."""
        return f"{self.prefix}:{{{cls}}}:workflow:{workflow_id}"

    def blob(self, sha256: str) -> str:
        """The base of one blob's keys (revision 2.6): `meta`, `refs`,
        `data`, `partial:<uuid>` follow it."""
        return f"{self.prefix}:{{blob:{sha256}}}:"


def new_task_id() -> str:
    """A UUID v7 (section "Conventions": ids sort by creation time)."""
    return str(_uuid7(time.time_ns() // 1_000_000, int.from_bytes(os.urandom(10), "big")))


def _uuid7(ms: int, rand: int) -> uuid.UUID:
    # 48 bits of Unix ms, version 7, 12 random bits, variant 0b10, 62 random.
    rand_a = (rand >> 62) & 0xFFF
    rand_b = rand & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return uuid.UUID(int=value)


def signature(
    key: bytes,
    task_id: str,
    kind: str,
    cls: str,
    priority: str,
    max_attempts: int,
    reply_to: str,
    params: bytes,
) -> str:
    """Section "Signed tasks": HMAC-SHA256 over netstrings of the fields."""
    parts = [
        WIRE_VERSION.encode(),
        task_id.encode(),
        kind.encode(),
        cls.encode(),
        priority.encode(),
        str(max_attempts).encode(),
        reply_to.encode(),
        params,
    ]
    signed = b"".join(b"%d:%s," % (len(p), p) for p in parts)
    return hmac.new(key, signed, hashlib.sha256).hexdigest()


@dataclass
class NewTask:
    """A task checked and completed, ready for the submit script."""

    id: str
    kind: str
    cls: str
    priority: str
    params: bytes
    max_attempts: int
    memory_bytes: int
    deadline_in_ms: int
    idempotency_key: Optional[str]
    signature: Optional[str] = None
    # The run-time limit of each attempt, ms from its start (`timeout_ms`).
    timeout_ms: Optional[int] = None
    # The key whose rate limit the task also counts against (`rate_key`).
    rate_key: Optional[str] = None
    # A delayed task: ("delay_ms", ms from when Redis accepts it) or
    # ("run_at_ms", ms since the epoch), both by the Redis clock. Read by
    # submit.lua, not copied into the entry.
    run_at: Optional[Tuple[str, int]] = None
    # Whether the commit writes a completion notice to the submitting
    # client's reply stream (the entry then names it in `reply_to`); without,
    # the outcome is in the record only (`Task(..., notice=False)`).
    notice: bool = True

    def metadata(self, producer: str, reply_to: Optional[str]) -> List[str]:
        """The entry's fields after `params`, in the Rust producer's order
        (`NewTask::metadata`)."""
        pairs = [
            "version", WIRE_VERSION,
            "id", self.id,
            "kind", self.kind,
            "class", self.cls,
            "priority", self.priority,
            "attempt", "1",
            "max_attempts", str(self.max_attempts),
            "memory_bytes", str(self.memory_bytes),
            "producer", producer,
        ]  # fmt: skip
        if reply_to is not None:
            pairs += ["reply_to", reply_to]
        if self.timeout_ms is not None:
            pairs += ["timeout_ms", str(self.timeout_ms)]
        if self.signature is not None:
            pairs += ["signature", self.signature]
        if self.rate_key is not None:
            pairs += ["rate_key", self.rate_key]
        if self.run_at is not None:
            pairs += [self.run_at[0], str(self.run_at[1])]
        return pairs

    def submit_args(self, keys: Keys, producer: str, reply_to: Optional[str], idempotency_ttl_s: int):
        """KEYS and ARGV of submit.lua, as its header documents."""
        call_keys = [keys.stream(self.cls, self.priority), keys.task(self.cls, self.id)]
        if self.idempotency_key is not None:
            call_keys.append(keys.idempotency(self.cls, self.idempotency_key))
        args: List[Any] = [
            self.id,
            str(self.deadline_in_ms),
            str(idempotency_ttl_s),
            self.idempotency_key or "",
            self.params,
        ]
        args += self.metadata(producer, reply_to)
        return call_keys, args


def text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def fields(raw: Any) -> Dict[str, Any]:
    """A flat reply or a dict of a hash or stream entry, with text names;
    `result` and `params` stay bytes, every other value is text."""
    if isinstance(raw, dict):
        items = list(raw.items())
    else:
        items = [(raw[i], raw[i + 1]) for i in range(0, len(raw), 2)]
    out: Dict[str, Any] = {}
    for name, value in items:
        name = text(name)
        out[name] = value if name in ("result", "params") else text(value)
    return out


# --- MessagePack -------------------------------------------------------------

_MAX_DEPTH = 128


def pack(value: Any) -> bytes:
    """MessagePack of `value`, with NumPy arrays written as MessagePack
    arrays (row-major, flattened) in one vectorised step instead of element
    by element. Everything else goes through msgpack's C packer."""
    if not _has_ndarray(value, 0):
        return msgpack.packb(value, use_bin_type=True)
    out = bytearray()
    _pack_into(value, out, 0)
    return bytes(out)


def _is_ndarray(value: Any) -> bool:
    return type(value).__module__ == "numpy" and type(value).__name__ == "ndarray"


def _has_ndarray(value: Any, depth: int) -> bool:
    if depth > _MAX_DEPTH:
        return False
    if _is_ndarray(value):
        return True
    if isinstance(value, dict):
        return any(_has_ndarray(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        # A list of numbers (the common case, and often long) holds none.
        if value and isinstance(value[0], (int, float)) and isinstance(value[-1], (int, float)):
            return False
        return any(
            _has_ndarray(v, depth + 1) for v in value if isinstance(v, (dict, list, tuple)) or _is_ndarray(v)
        )
    return False


def _pack_into(value: Any, out: bytearray, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError(f"parameters nest more than {_MAX_DEPTH} deep")
    if _is_ndarray(value):
        out += ndarray_msgpack(value)
    elif isinstance(value, dict):
        out += _header(len(value), 0x80, 0xDE, 0xDF, 16)
        for k, v in value.items():
            out += msgpack.packb(k, use_bin_type=True)
            _pack_into(v, out, depth + 1)
    elif isinstance(value, (list, tuple)):
        out += _header(len(value), 0x90, 0xDC, 0xDD, 16)
        for v in value:
            _pack_into(v, out, depth + 1)
    else:
        out += msgpack.packb(value, use_bin_type=True)


def _header(n: int, fix: int, m16: int, m32: int, fix_max: int) -> bytes:
    if n < fix_max:
        return bytes((fix | n,))
    if n < 1 << 16:
        return struct.pack(">BH", m16, n)
    return struct.pack(">BI", m32, n)


def ndarray_msgpack(array: Any) -> bytes:
    """A NumPy array as one MessagePack array of its elements in row-major
    order: float64 as `float 64`, float32 as `float 32`, integers as
    `int 64`, booleans as `true`/`false`. Built with one structured array
    (marker byte + big-endian value per element), so the cost is a few
    vectorised copies, not a Python loop."""
    import numpy as np

    flat = np.ascontiguousarray(array).reshape(-1)
    kind = flat.dtype.kind
    if kind == "f" and flat.dtype.itemsize == 4:
        marker, wire = 0xCA, ">f4"
    elif kind == "f":
        marker, wire = 0xCB, ">f8"
    elif kind in "iu":
        marker, wire = 0xD3, ">i8"
        if kind == "u" and flat.size and int(flat.max()) > (1 << 63) - 1:
            marker, wire = 0xCF, ">u8"
    elif kind == "b":
        body = np.where(flat, np.uint8(0xC3), np.uint8(0xC2)).astype(np.uint8)
        return _header(flat.size, 0x90, 0xDC, 0xDD, 16) + body.tobytes()
    else:
        raise TypeError(f"cannot send a NumPy array of {flat.dtype} (numbers or booleans only)")
    cells = np.empty(flat.size, dtype=[("marker", "u1"), ("value", wire)])
    cells["marker"] = marker
    cells["value"] = flat
    return _header(flat.size, 0x90, 0xDC, 0xDD, 16) + cells.tobytes()


def unpack(blob: Optional[bytes]) -> Any:
    if blob is None or blob == b"":
        return None
    return msgpack.unpackb(blob, raw=False, strict_map_key=False)
