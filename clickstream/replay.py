"""Replay archived records back onto a stream: one implementation for the CLI and the replay Lambda.

Objects are found by hour prefix (never by listing the whole archive) and read as streams; records
whose envelope ``receivedAt`` falls in the range are put in PutRecords-sized chunks, only failed
records are retried (exponential backoff with full jitter), and progress is checkpointed after
every chunk so an interrupted replay resumes where it stopped. Replaying is idempotent end to end:
records keep their envelope (and so their messageId), and the warehouse deduplicates by it. The
copies are marked (``contract.mark_replayed``): the local archiver does not archive them again and
replay skips them when it finds them in an archive (Firehose archives them in AWS).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from clickstream import contract
from clickstream.archive import ARCHIVE_PREFIX, Archive, hour_prefix, hours_between, iter_records, write_durably
from clickstream.contract import Record

MAX_ATTEMPTS = 8
# Where the replay state machine's Distributed Map writes its children's summaries (ResultWriter),
# in the archive bucket, outside the archive's own events/ prefix.
RESULT_PREFIX = "replay-results"


class Target(Protocol):
    def put(self, records: Sequence[Record]) -> list[int]:
        """Put records; return the indexes of those that failed (to be retried)."""


class LocalTarget:
    def __init__(self, data_dir: Path | str) -> None:
        from clickstream.stream import LocalStream

        self.stream = LocalStream(data_dir)

    def put(self, records: Sequence[Record]) -> list[int]:
        self.stream.put(records)
        return []


class KinesisTarget:
    def __init__(self, stream_name: str, client: Any = None) -> None:
        import boto3

        self.stream_name = stream_name
        self.client = client or boto3.client("kinesis")

    def put(self, records: Sequence[Record]) -> list[int]:
        answer = self.client.put_records(
            StreamName=self.stream_name,
            Records=[{"Data": r.data, "PartitionKey": r.partition_key} for r in records])
        if not answer.get("FailedRecordCount"):
            return []
        return [i for i, r in enumerate(answer["Records"]) if r.get("ErrorCode")]


def parse_time(text: str) -> dt.datetime:
    """ISO 8601 (``2026-11-28``, ``2026-11-28T14:00``, ``...Z``, ``...+01:00``); naive means UTC."""
    value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def hour_prefixes(start: dt.datetime, end: dt.datetime, prefix: str = ARCHIVE_PREFIX) -> list[str]:
    return [hour_prefix(prefix, h) for h in hours_between(start, end)]


def _envelope(data: bytes) -> dict[str, Any] | None:
    """The record's envelope, parsed once per record (it is the replay's main CPU cost), or None."""
    try:
        env = json.loads(data)
    except ValueError:
        return None
    return env if isinstance(env, dict) else None


def _in_range(env: dict[str, Any] | None, start_ms: int, end_ms: int) -> bool:
    received = env.get("receivedAt") if env is not None else None
    # not an envelope we can date: replay it rather than drop it silently
    return not isinstance(received, int) or start_ms <= received <= end_ms


def to_record(data: bytes, env: dict[str, Any] | None = None) -> Record:
    """The envelope's own request id and index give the same partition key as the original put."""
    env = _envelope(data) if env is None else env
    try:
        key = contract.partition_key(env["requestId"], env["index"])  # type: ignore[index]
    except (KeyError, TypeError):
        key = f"replay-{zlib.crc32(data):08x}"
    return Record(key[: contract.MAX_PARTITION_KEY_CHARS], data)


def chunks(records: Iterator[Record]) -> Iterator[list[Record]]:
    batch: list[Record] = []
    size = 0
    for record in records:
        weight = contract.record_bytes(record.partition_key, record.data)
        if batch and (len(batch) >= contract.KINESIS_MAX_RECORDS_PER_PUT
                      or size + weight > contract.KINESIS_MAX_BYTES_PER_PUT):
            yield batch
            batch, size = [], 0
        batch.append(record)
        size += weight
    if batch:
        yield batch


def put_with_retries(target: Target, records: Sequence[Record], *, sleep: Callable[[float], None] = time.sleep,
                     base_delay: float = 0.1, max_delay: float = 10.0, max_attempts: int = MAX_ATTEMPTS) -> int:
    """Put, then re-put only what failed, with full-jitter backoff. Returns the number of retries."""
    pending = list(records)
    retries = 0
    for attempt in range(max_attempts):
        failed = target.put(pending)
        if not failed:
            return retries
        pending = [pending[i] for i in failed]
        retries += len(pending)
        sleep(random.uniform(0, min(max_delay, base_delay * 2**attempt)))
    raise RuntimeError(f"{len(pending)} records still failing after {max_attempts} attempts")


class RateLimiter:
    """At most ``rate`` records per second, smoothed over the run."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate, self.clock, self.sleep = rate, clock, sleep
        self.start = clock()
        self.sent = 0

    def wait(self, n: int) -> None:
        if not self.rate:
            return
        self.sent += n
        ahead = self.sent / self.rate - (self.clock() - self.start)
        if ahead > 0:
            self.sleep(ahead)


@dataclass
class ReplayStats:
    objects: int = 0
    records: int = 0
    bytes: int = 0
    skipped_out_of_range: int = 0
    skipped_replayed: int = 0
    retries: int = 0
    seconds: float = 0.0


@dataclass
class Checkpoint:
    """Objects finished, and how many lines of the current one are already put."""

    path: Path | None
    done: list[str] = field(default_factory=list)
    current: str | None = None
    lines: int = 0

    @classmethod
    def load(cls, path: Path | None) -> Checkpoint:
        if path and path.exists():
            data = json.loads(path.read_text())
            return cls(path, data.get("done", []), data.get("current"), data.get("lines", 0))
        return cls(path)

    def save(self) -> None:
        if self.path is not None:
            state = {"done": self.done, "current": self.current, "lines": self.lines}
            write_durably(self.path, json.dumps(state).encode())


def replay_object(archive: Archive, key: str, target: Target | None, start: dt.datetime, end: dt.datetime, *,
                  stats: ReplayStats, checkpoint: Checkpoint | None = None, limiter: RateLimiter | None = None,
                  on_records: Callable[[int], None] | None = None) -> None:
    """Replay the in-range records of one archive object (``target`` None: count only, a dry run)."""
    start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    skip = checkpoint.lines if checkpoint and checkpoint.current == key else 0
    line_no = 0

    def selected() -> Iterator[Record]:
        nonlocal line_no
        for data in iter_records(archive, key):
            line_no += 1
            if line_no <= skip:
                continue
            if contract.is_replayed(data):  # a copy a replay put back (archived by Firehose): never again
                stats.skipped_replayed += 1
                continue
            env = _envelope(data)
            if not _in_range(env, start_ms, end_ms):
                stats.skipped_out_of_range += 1
                continue
            # Only envelopes are marked: a malformed record keeps its bytes, so the warehouse's
            # `rejected` table (deduplicated by the raw record) still recognises its copy.
            is_envelope = env is not None and "requestId" in env and "index" in env
            yield to_record(contract.mark_replayed(data) if is_envelope else data, env)

    for batch in chunks(selected()):
        if limiter:
            limiter.wait(len(batch))
        if target is not None:
            stats.retries += put_with_retries(target, batch)
        stats.records += len(batch)
        stats.bytes += sum(len(r.data) for r in batch)
        if checkpoint:
            checkpoint.current, checkpoint.lines = key, line_no
            checkpoint.save()
        if on_records:
            on_records(len(batch))
    stats.objects += 1
    if checkpoint:
        checkpoint.done.append(key)
        checkpoint.current, checkpoint.lines = None, 0
        checkpoint.save()


def replay(archive: Archive, target: Target | None, start: dt.datetime, end: dt.datetime, *, rate: float | None = None,
           checkpoint: Checkpoint | None = None, progress: bool = False) -> ReplayStats:
    """Replay every archived record received in [start, end]. ``target=None`` is a dry run."""
    if end < start:
        raise ValueError("--to is before --from")
    stats = ReplayStats()
    began = time.perf_counter()
    objects = [o for o in archive.list(start, end) if not (checkpoint and o.key in checkpoint.done)]
    limiter = RateLimiter(rate)
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("[bold]replay"), BarColumn(), MofNCompleteColumn(), TextColumn("objects"),
                   TextColumn("{task.fields[records]:,} records"), TimeRemainingColumn())
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task("replay", total=len(objects), records=0)
            for obj in objects:
                replay_object(archive, obj.key, target, start, end, stats=stats, checkpoint=checkpoint,
                              limiter=limiter, on_records=lambda n: bar.update(task, records=stats.records))
                bar.advance(task)
    else:
        for obj in objects:
            replay_object(archive, obj.key, target, start, end, stats=stats, checkpoint=checkpoint, limiter=limiter)
    stats.seconds = time.perf_counter() - began
    return stats


def stats_dict(stats: ReplayStats) -> dict[str, Any]:
    out = asdict(stats)
    out["records_per_second"] = round(stats.records / stats.seconds, 1) if stats.seconds else 0.0
    return out
