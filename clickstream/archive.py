"""The archive: Firehose's S3 layout, written locally the same way, and read back from either.

Firehose (storage stack) writes each object as
``<prefix>YYYY/MM/dd/HH/<stream>-<version>-YYYY-MM-dd-HH-MM-SS-<uuid>.gz``, with the time of the
oldest record in the object, UTC, gzip-compressed, records back to back; our records end in ``\\n``
so objects are newline-delimited JSON
(https://docs.aws.amazon.com/firehose/latest/dev/s3-object-name.html). The local archiver writes
the same keys under ``<data dir>/archive/`` with the same bytes, so replay and backfill code reads
both. The layout constants here are also what the storage stack configures.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, cast

from clickstream.contract import is_replayed

if TYPE_CHECKING:  # the stream is local mode's (it needs orjson); the replay Lambda ships this module
    # without it, where only the standard library, boto3 and Powertools can be imported
    from clickstream.stream import LocalStream, StreamRecord

log = logging.getLogger("clickstream.archive")

ARCHIVE_DIR = "archive"
ARCHIVE_PREFIX = "events/"
# What Firehose is configured with: the same layout as its default, written out so that the error
# prefix may use expressions (https://docs.aws.amazon.com/firehose/latest/dev/s3-prefixes.html).
FIREHOSE_PREFIX = ARCHIVE_PREFIX + "!{timestamp:yyyy/MM/dd/HH}/"
# Firehose expands !{firehose:error-output-type}; the local archiver writes "processing-failed".
ERROR_PREFIX = "errors/"
ERROR_PREFIX_FIREHOSE = ERROR_PREFIX + "!{firehose:error-output-type}/!{timestamp:yyyy/MM/dd/HH}/"
LOCAL_ERROR_TYPE = "processing-failed"
DELIVERY_STREAM_VERSION = 1
LOCAL_DELIVERY_STREAM = "clickstream-archive"
OBJECT_SUFFIX = ".gz"
# Firehose's defaults for S3 destinations (docs: buffering hints): 5 MiB or 300 s.
DEFAULT_BUFFER_BYTES = 5 * 1024 * 1024
DEFAULT_BUFFER_SECONDS = 300
ARCHIVER_CONSUMER = "archiver"
# `clickstream archive --flush` creates this file in the data dir; the running archiver then writes
# its buffer at its next poll (and removes the file), as if the buffer interval had passed.
FLUSH_REQUEST_FILE = "archive-flush.request"


def hour_prefix(prefix: str, when: dt.datetime) -> str:
    return f"{prefix}{when:%Y/%m/%d/%H}/"


def object_key(prefix: str, stream_name: str, oldest: dt.datetime, unique: str | None = None) -> str:
    """The key Firehose gives an object whose oldest record arrived at ``oldest`` (UTC)."""
    return (f"{hour_prefix(prefix, oldest)}{stream_name}-{DELIVERY_STREAM_VERSION}-"
            f"{oldest:%Y-%m-%d-%H-%M-%S}-{unique or uuid.uuid4()}{OBJECT_SUFFIX}")


def utc_from_ms(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def write_durably(path: Path, data: bytes) -> None:
    """Write atomically and durably: temp file, fsync, rename, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def _processing_failed(record: StreamRecord, reason: str) -> bytes:
    """Firehose's error-record shape, so error objects read the same in both places."""
    import base64

    return (json.dumps({
        "attemptsMade": 1,
        "arrivalTimestamp": record.arrival_ms,
        "errorCode": "Record.NotNewlineDelimited",
        "errorMessage": reason,
        "rawData": base64.b64encode(record.data).decode("ascii"),
        "sequenceNumber": str(record.seq),
    }, separators=(",", ":")) + "\n").encode()


@dataclass
class ArchiveStats:
    objects: int = 0
    records: int = 0
    error_records: int = 0
    bytes_written: int = 0
    replayed_skipped: int = 0


class Archiver:
    """Checkpointed consumer of the local stream that writes Firehose-layout gzip objects."""

    def __init__(self, data_dir: Path | str, *, buffer_bytes: int = DEFAULT_BUFFER_BYTES,
                 buffer_seconds: float = DEFAULT_BUFFER_SECONDS, stream_name: str = LOCAL_DELIVERY_STREAM) -> None:
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / ARCHIVE_DIR
        self.buffer_bytes = buffer_bytes
        self.buffer_seconds = buffer_seconds
        self.stream_name = stream_name
        self.stats = ArchiveStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, stream: LocalStream, *, force: bool = False) -> int:
        """Archive what is due: full buffers, or (with ``force``, or when old enough) the rest."""
        after = stream.checkpoint(ARCHIVER_CONSUMER)
        written = 0
        while True:
            batch, size = [], 0
            for record in stream.iter_from(after, page=2000):
                batch.append(record)
                size += len(record.data)
                if size >= self.buffer_bytes:
                    break
            if not batch:
                return written
            full = size >= self.buffer_bytes
            old = (time.time() * 1000 - batch[0].arrival_ms) / 1000 >= self.buffer_seconds
            if not (full or old or force):
                return written
            self._write(batch)
            after = batch[-1].seq
            stream.set_checkpoint(ARCHIVER_CONSUMER, after)
            written += len(batch)

    def _write(self, batch: list[StreamRecord]) -> None:
        # Replayed copies are not archived again: their originals are in the archive already.
        fresh = [r for r in batch if not is_replayed(r.data)]
        self.stats.replayed_skipped += len(batch) - len(fresh)
        good = [r for r in fresh if r.data.endswith(b"\n") and r.data.count(b"\n") == 1]
        bad = [r for r in fresh if not (r.data.endswith(b"\n") and r.data.count(b"\n") == 1)]
        if good:
            self._put(ARCHIVE_PREFIX, good[0].arrival_ms, b"".join(r.data for r in good))
            self.stats.records += len(good)
        if bad:
            body = b"".join(_processing_failed(r, "record is not a single newline-terminated line") for r in bad)
            self._put(f"{ERROR_PREFIX}{LOCAL_ERROR_TYPE}/", bad[0].arrival_ms, body)
            self.stats.error_records += len(bad)

    def _put(self, prefix: str, oldest_ms: int, body: bytes) -> None:
        key = object_key(prefix, self.stream_name, utc_from_ms(oldest_ms))
        compressed = gzip.compress(body, mtime=0)
        write_durably(self.root / key, compressed)
        self.stats.objects += 1
        self.stats.bytes_written += len(compressed)

    # -- background thread used by `clickstream local` ------------------------------------------
    def start(self, poll_seconds: float = 1.0) -> None:
        from clickstream.stream import LocalStream

        def loop() -> None:
            stream = LocalStream(self.data_dir)
            try:
                request = self.data_dir / FLUSH_REQUEST_FILE
                while not self._stop.wait(poll_seconds):
                    try:
                        flush = request.exists()
                        self.run_once(stream, force=flush)
                        if flush:
                            request.unlink(missing_ok=True)
                    except Exception:
                        log.exception("archiver run failed; retrying")
                self.run_once(stream, force=True)  # flush on shutdown, like Firehose on a final buffer
            finally:
                stream.close()

        self._thread = threading.Thread(target=loop, name="archiver", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)


# -- reading ----------------------------------------------------------------------------------
def hours_between(start: dt.datetime, end: dt.datetime) -> Iterator[dt.datetime]:
    """Every UTC hour touched by [start, end]; an object's hour is its oldest record's, so one hour
    before ``start`` is included too (an object started then may hold later records)."""
    hour = (start.astimezone(dt.UTC) - dt.timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    while hour <= end.astimezone(dt.UTC):
        yield hour
        hour += dt.timedelta(hours=1)


@dataclass(frozen=True)
class ArchiveObject:
    key: str
    size: int


class Archive(Protocol):
    """Where archived objects are read from: the local archive directory or the S3 bucket, with the
    same keys (Firehose's layout), so replay and its tests need not know which."""

    def list(self, start: dt.datetime, end: dt.datetime, prefix: str = ...) -> Iterator[ArchiveObject]:
        """The objects whose hour prefix may hold records of [start, end]."""
        ...

    def open(self, key: str) -> IO[bytes]:
        """The object's (gzip) bytes, as a readable file object."""
        ...


class LocalArchive:
    """The local archive directory, addressed by the same keys as S3."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def list(self, start: dt.datetime, end: dt.datetime, prefix: str = ARCHIVE_PREFIX) -> Iterator[ArchiveObject]:
        for hour in hours_between(start, end):
            folder = self.root / hour_prefix(prefix, hour)
            if folder.is_dir():
                for path in sorted(folder.glob(f"*{OBJECT_SUFFIX}")):
                    yield ArchiveObject(path.relative_to(self.root).as_posix(), path.stat().st_size)

    def open(self, key: str) -> IO[bytes]:
        return open(self.root / key, "rb")


class S3Archive:
    """The deployed archive bucket (boto3; lists one hour prefix at a time with a paginator)."""

    def __init__(self, url: str, client: Any = None) -> None:
        import boto3

        bucket, _, base = url.removeprefix("s3://").partition("/")
        self.bucket = bucket
        self.base = base if not base or base.endswith("/") else base + "/"
        self.client = client or boto3.client("s3")

    def list(self, start: dt.datetime, end: dt.datetime, prefix: str = ARCHIVE_PREFIX) -> Iterator[ArchiveObject]:
        for hour in hours_between(start, end):
            yield from self.list_prefix(hour_prefix(prefix, hour))

    def list_prefix(self, key_prefix: str) -> Iterator[ArchiveObject]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.base + key_prefix):
            for obj in page.get("Contents", []):
                yield ArchiveObject(obj["Key"][len(self.base):], obj["Size"])

    def open(self, key: str) -> IO[bytes]:
        # botocore's StreamingBody: read(), iteration and a context manager, all gzip needs.
        return cast(IO[bytes], self.client.get_object(Bucket=self.bucket, Key=self.base + key)["Body"])


def open_archive(location: str | Path, region: str | None = None) -> Archive:
    """A local data/archive dir, or ``s3://bucket/prefix`` (``region`` for its S3 client)."""
    text = str(location)
    if text.startswith("s3://"):
        import boto3

        return S3Archive(text, boto3.client("s3", region_name=region))
    path = Path(text)
    return LocalArchive(path / ARCHIVE_DIR if (path / ARCHIVE_DIR).is_dir() else path)


def iter_records(archive: Archive, key: str) -> Iterator[bytes]:
    """Stream the newline-delimited records of one object without loading it whole."""
    with archive.open(key) as raw, gzip.GzipFile(fileobj=raw) as fh:
        for line in fh:
            if line.strip():
                yield line if line.endswith(b"\n") else line + b"\n"
