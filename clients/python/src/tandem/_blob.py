"""The blob store (docs/wire-format.md, "Blob references"), as
`shared/src/blob/` has it: parameters and results too large for a stream
entry or a record, stored once by content (SHA-256) and passed by
reference, `{"tandem_blob": "<sha256 hex>", "len": <n>}`.

This module holds the reference's wire form and its detection, the key
names, and the object backends (`Objects`): a directory every worker
shares (`DirectoryObjects`) and an S3-compatible bucket (`S3Objects`,
with boto3, the `tandem-client[s3]` extra), each blob one object named by
its digest, as the Rust store lays them out. The clients (`client.py`,
`aio.py`) do the Redis I/O: bytes go in chunks of `blob_chunk_bytes`
(APPEND to `partial:<uuid>`, renamed by `blob.lua` once complete; read
back by GETRANGE), so neither side holds a second copy, and `blob.lua`
counts references and raises TTLs atomically, whatever the backend.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterable, List, Optional, Tuple

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
# Object stores take multipart uploads in parts of at least 5 MiB (S3's
# rule); a smaller blob goes in one request (as shared/src/blob/).
MIN_PART_BYTES = 5 << 20


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
    # Where its bytes are: `redis` or the `blob_store` URL.
    backend: str


class Layout:
    """The key names of one deployment's blobs and, with an object backend
    (a directory, S3), where their objects lie."""

    def __init__(self, keys: Keys, settings: Any) -> None:
        self.wire_keys = keys
        self.backend = settings.blob_store.strip() or "redis"
        self.problem: Optional[str] = None
        # None: the bytes live in Redis.
        self.objects: Optional[Objects] = None
        if self.backend == "redis":
            return
        if self.backend.startswith("s3://"):
            bucket, _, prefix = self.backend[len("s3://"):].partition("/")
            if not bucket:
                self.problem = f"blob_store: {self.backend!r} names no bucket (s3://bucket[/prefix])"
            else:
                self.objects = S3Objects(self.backend, bucket, prefix, settings)
            return
        path = self.backend[len("file://"):] if self.backend.startswith("file://") else self.backend
        if not path.startswith("/"):
            self.problem = (
                f"blob_store: {self.backend!r} is none of `redis`, an absolute directory (or file:///dir), "
                "s3://bucket[/prefix]"
            )
        else:
            # object_store's LocalFileSystem under the directory, as the
            # Rust store names it: `<dir>/blobs/<sha256>`.
            self.objects = DirectoryObjects(pathlib.Path(path) / "blobs")

    def check(self) -> None:
        if self.problem is not None:
            raise BlobError(self.problem)
        if self.objects is not None:
            self.objects.check()

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


class Objects:
    """Where an object backend keeps blobs' bytes, one object per blob
    named by its digest. Blocking calls: the asyncio client runs them in a
    thread. Redis keeps the bookkeeping (`blob.lua`) as with the Redis
    backend; an object is written before its blob is marked stored, and
    deleted after its last reference went."""

    def check(self) -> None:
        """Raises `BlobError` when the backend cannot be used here."""

    def write(self, blob: BlobRef, chunks: Iterable[Any]) -> None:
        """Stores the blob's bytes, given in chunks, so that a reader never
        sees half of them."""
        raise NotImplementedError

    def open(self, blob: BlobRef) -> BinaryIO:
        """The object, to `read(n)` in chunks and `close()`; `BlobError`
        (missing) when there is none."""
        raise NotImplementedError

    def delete(self, blob: BlobRef) -> None:
        """Deletes the object; one already gone is no error."""
        raise NotImplementedError


class DirectoryObjects(Objects):
    """A directory every producer and worker shares: `<dir>/blobs/<sha256>`."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory

    def path(self, sha256: str) -> pathlib.Path:
        return self.directory / sha256

    def write(self, blob: BlobRef, chunks: Iterable[Any]) -> None:
        # To a file of its own renamed once complete (as object_store's
        # LocalFileSystem does), so that a reader never sees half of it.
        target = self.path(blob.sha256)
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

    def open(self, blob: BlobRef) -> BinaryIO:
        try:
            return open(self.path(blob.sha256), "rb")
        except FileNotFoundError:
            raise missing(blob.sha256) from None

    def delete(self, blob: BlobRef) -> None:
        try:
            self.path(blob.sha256).unlink()
        except FileNotFoundError:
            pass


class S3Objects(Objects):
    """An S3-compatible bucket, as shared/src/blob/ writes it: the object
    `<prefix>/<sha256>` (just `<sha256>` without a prefix), no metadata of
    its own, put in one request below 5 MiB and as a multipart upload of
    parts of `max(blob_chunk_bytes, 5 MiB)` above. Configured by the same
    settings: `blob_s3_endpoint` (MinIO, Ceph, moto; path-style requests),
    `blob_s3_region`, `blob_s3_access_key_id` and
    `blob_s3_secret_access_key`, else the usual `AWS_*` variables. The
    boto3 client is made on first use."""

    def __init__(self, url: str, bucket: str, prefix: str, settings: Any) -> None:
        self.url = url
        self.bucket = bucket
        # object_store's Path: the parts between slashes, empty ones dropped.
        self.prefix = "/".join(part for part in prefix.split("/") if part)
        self.settings = settings
        self.chunk_bytes = max(1, settings.blob_chunk_bytes)
        self._client: Any = None

    def check(self) -> None:
        self.client()

    def key(self, sha256: str) -> str:
        return f"{self.prefix}/{sha256}" if self.prefix else sha256

    def client(self) -> Any:
        if self._client is not None:
            return self._client
        try:
            import boto3
            from botocore.config import Config as BotoConfig
        except ImportError:
            raise BlobError(
                f"blob_store: {self.url!r} needs boto3, which is not installed: "
                "pip install 'tandem-client[s3]'"
            ) from None
        settings = self.settings
        options: dict = {}
        endpoint = settings.blob_s3_endpoint.strip()
        if endpoint:
            options["endpoint_url"] = endpoint
        region = (
            settings.blob_s3_region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or "us-east-1"
        )
        if settings.blob_s3_access_key_id:
            options["aws_access_key_id"] = settings.blob_s3_access_key_id
            options["aws_secret_access_key"] = settings.blob_s3_secret_access_key or ""
        try:
            self._client = boto3.session.Session().client(
                "s3",
                region_name=region,
                config=BotoConfig(s3={"addressing_style": "path"}, signature_version="s3v4"),
                **options,
            )
        except Exception as err:  # botocore raises several kinds for bad settings
            raise BlobError(f"blob_store: {self.url!r}: {err}") from None
        return self._client

    def _failed(self, what: str, err: Exception) -> BlobError:
        return BlobError(f"blob store: {self.url}: {what}: {err}")

    def write(self, blob: BlobRef, chunks: Iterable[Any]) -> None:
        client = self.client()
        key = self.key(blob.sha256)
        if blob.len < MIN_PART_BYTES:
            body = b"".join(bytes(chunk) for chunk in chunks)
            try:
                client.put_object(Bucket=self.bucket, Key=key, Body=body)
            except Exception as err:
                raise self._failed(f"put {key}", err) from err
            return
        # A multipart upload, one part in memory at a time: the object
        # appears whole when it completes, never half.
        part_bytes = max(self.chunk_bytes, MIN_PART_BYTES)
        try:
            upload_id = client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        except Exception as err:
            raise self._failed(f"start the upload of {key}", err) from err
        parts: List[dict] = []

        def send(part: bytes) -> None:
            number = len(parts) + 1
            reply = client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=part
            )
            parts.append({"PartNumber": number, "ETag": reply["ETag"]})

        try:
            pending = bytearray()
            for chunk in chunks:
                pending += chunk
                while len(pending) >= part_bytes:
                    send(bytes(pending[:part_bytes]))
                    del pending[:part_bytes]
            if pending or not parts:
                send(bytes(pending))
            client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException as err:
            try:
                client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except Exception:
                pass  # The bucket's lifecycle rules (or `tandem blob sweep`) are the backstop.
            if isinstance(err, Exception) and not isinstance(err, BlobError):
                raise self._failed(f"upload {key}", err) from err
            raise

    def open(self, blob: BlobRef) -> BinaryIO:
        key = self.key(blob.sha256)
        try:
            return self.client().get_object(Bucket=self.bucket, Key=key)["Body"]
        except Exception as err:
            if _s3_code(err) in ("NoSuchKey", "404", "NotFound"):
                raise missing(blob.sha256) from None
            raise self._failed(f"get {key}", err) from err

    def delete(self, blob: BlobRef) -> None:
        key = self.key(blob.sha256)
        try:
            self.client().delete_object(Bucket=self.bucket, Key=key)
        except Exception as err:
            if _s3_code(err) not in ("NoSuchKey", "404", "NotFound"):
                raise self._failed(f"delete {key}", err) from err


def _s3_code(err: Exception) -> Optional[str]:
    """The error code of a botocore `ClientError`, None for any other."""
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", "")) or None
    return None


def chunks_of(data: bytes, size: int):
    """`data` in slices of `size` bytes (memoryviews: no copy)."""
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield view[start : start + size]


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
