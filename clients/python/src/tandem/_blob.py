"""The blob store (docs/wire-format.md, "Blob references"), as
`shared/src/blob/` has it: parameters and results too large for a stream
entry or a record, stored once by content (SHA-256) and passed by
reference, `{"tandem_blob": "<sha256 hex>", "len": <n>}`.

This module holds what needs no connection: the reference's wire form
and its detection, the key names, and the directory backend's paths. The
clients (`client.py`, `aio.py`) do the I/O: bytes go in chunks of
`blob_chunk_bytes` (APPEND to `partial:<uuid>`, renamed by `blob.lua`
once complete; read back by GETRANGE), so neither side holds a second
copy, and `blob.lua` counts references and raises TTLs atomically.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
from dataclasses import dataclass
from typing import Any, Iterable, List, Optional, Tuple

import msgpack

from ._wire import Keys
from .errors import BlobError

# The map key that marks a reference.
REF_KEY = "tandem_blob"
# A reference is a fixmap of two entries, well under this size.
_MAX_REF_BYTES = 128
# 0x82: a fixmap of two entries; then the fixstr "tandem_blob".
_HEAD = b"\x82\xabtandem_blob"
_DIGEST = re.compile(r"[0-9a-f]{64}")


def check_digest(sha256: Any) -> str:
    """`sha256` when it is 64 lowercase hex digits, else `BlobError`."""
    if not isinstance(sha256, str) or not _DIGEST.fullmatch(sha256):
        raise BlobError(f"field tandem_blob must be 64 lowercase hex digits (a SHA-256), got {sha256!r}")
    return sha256


@dataclass(frozen=True)
class BlobRef:
    """A reference to one blob: the SHA-256 of its bytes (lowercase hex)
    and their length."""

    sha256: str
    len: int

    @classmethod
    def of(cls, data: bytes) -> "BlobRef":
        return cls(hashlib.sha256(data).hexdigest(), len(data))

    def encode(self) -> bytes:
        """The reference as it travels: exactly these two keys, this order."""
        return msgpack.packb({REF_KEY: self.sha256, "len": self.len}, use_bin_type=True)

    def to_json(self) -> dict:
        """As `tandem blob put` prints it."""
        return {REF_KEY: self.sha256, "len": self.len}

    @classmethod
    def detect(cls, data: Optional[bytes]) -> Optional["BlobRef"]:
        """The reference `data` is, None when it is plain parameters or a
        plain result; `BlobError` for a reference with a bad digest.
        Costs nothing for bytes that cannot be one."""
        if not data or len(data) > _MAX_REF_BYTES or not data.startswith(_HEAD):
            return None
        try:
            value = msgpack.unpackb(data, raw=False)
        except (ValueError, msgpack.ExtraData) as err:
            raise BlobError(f"blob reference: not a {{tandem_blob, len}} map: {err}") from None
        if not isinstance(value, dict) or list(value) != [REF_KEY, "len"]:
            raise BlobError(f"blob reference: not a {{tandem_blob, len}} map: {value!r}")
        size = value["len"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BlobError(f"blob reference: field len must be a byte count, got {size!r}")
        return cls(check_digest(value[REF_KEY]), size)


@dataclass(frozen=True)
class BlobStat:
    """What the store knows of one blob."""

    sha256: str
    len: int
    # Holders of a reference: tasks waiting or running with it as their
    # parameters, records with it as their result.
    refs: int
    # Until it expires unless referenced again (ms; None: no TTL).
    ttl_ms: Optional[int]
    # Where its bytes are: `redis` or the directory (`blob_store`).
    backend: str


class Layout:
    """The key names of one deployment's blobs and, with a directory
    backend, where their objects lie."""

    def __init__(self, keys: Keys, blob_store: str) -> None:
        self.wire_keys = keys
        self.backend = blob_store.strip() or "redis"
        self.directory: Optional[pathlib.Path] = None
        if self.backend != "redis":
            path = self.backend[len("file://"):] if self.backend.startswith("file://") else self.backend
            if self.backend.startswith("s3://"):
                self.problem: Optional[str] = (
                    f"blob_store: {self.backend!r}: S3 is not spoken by the Python client yet; "
                    "use `redis` or a directory every worker shares (or the Rust producer)"
                )
            elif not path.startswith("/"):
                self.problem = (
                    f"blob_store: {self.backend!r} is none of `redis`, an absolute directory (or file:///dir)"
                )
            else:
                # object_store's LocalFileSystem under the directory, as the
                # Rust store names it: `<dir>/blobs/<sha256>`.
                self.directory = pathlib.Path(path) / "blobs"
                self.problem = None
        else:
            self.problem = None

    def check(self) -> None:
        if self.problem is not None:
            raise BlobError(self.problem)

    def base(self, sha256: str) -> str:
        return self.wire_keys.blob(sha256)

    def keys(self, sha256: str) -> List[str]:
        """`blob.lua`'s KEYS[1..3]: meta, refs, data."""
        base = self.base(sha256)
        return [f"{base}meta", f"{base}refs", f"{base}data"]

    def partial(self, sha256: str) -> str:
        """A fresh key for an upload under way (UUID v7, as the Rust store)."""
        from ._wire import new_task_id

        return f"{self.base(sha256)}partial:{new_task_id()}"

    def object_path(self, sha256: str) -> pathlib.Path:
        assert self.directory is not None
        return self.directory / sha256


def chunks_of(data: bytes, size: int):
    """`data` in slices of `size` bytes (memoryviews: no copy)."""
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield view[start : start + size]


def write_object(layout: Layout, blob: BlobRef, chunks: Iterable[Any]) -> None:
    """Writes a blob's object under the shared directory, chunk by chunk,
    to a file of its own renamed once complete (as object_store's
    LocalFileSystem does), so that a reader never sees half of it."""
    target = layout.object_path(blob.sha256)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{blob.sha256}.{os.getpid()}.{os.urandom(8).hex()}")
    try:
        with open(staging, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(staging, target)
    finally:
        if staging.exists():
            staging.unlink()


def file_digest(path: "os.PathLike[str] | str", chunk_bytes: int) -> BlobRef:
    """The reference of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(chunk_bytes)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
    return BlobRef(digest.hexdigest(), size)


class Reader:
    """Checks bytes read back, chunk by chunk, against the reference."""

    def __init__(self, blob: BlobRef) -> None:
        self.blob = blob
        self.digest = hashlib.sha256()
        self.read = 0

    def take(self, chunk: bytes) -> None:
        self.digest.update(chunk)
        self.read += len(chunk)

    def finish(self) -> None:
        if self.read != self.blob.len:
            raise damaged(self.blob, f"{self.read} bytes, not {self.blob.len}")
        got = self.digest.hexdigest()
        if got != self.blob.sha256:
            raise damaged(self.blob, f"bytes whose SHA-256 is {got}")


def missing(sha256: str) -> BlobError:
    return BlobError(f"blob {sha256} is not in the blob store (expired after blob_ttl_s, or never stored)")


def damaged(blob: BlobRef, detail: str) -> BlobError:
    return BlobError(f"blob {blob.sha256}: read back {detail}: the blob store holds damaged data")


def ranges(length: int, chunk_bytes: int) -> List[Tuple[int, int]]:
    """GETRANGE's inclusive (start, end) pairs covering `length` bytes."""
    return [(start, min(start + chunk_bytes, length) - 1) for start in range(0, length, chunk_bytes)]
