"""Replay: archive -> stream, locally and from S3 to Kinesis (moto), idempotent end to end."""

from __future__ import annotations

import datetime as dt
import gzip
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
from moto import mock_aws

from clickstream import archive, replay
from clickstream.cli import main
from clickstream.contract import Record
from clickstream.ingest import RequestInfo, build_records
from clickstream.stream import LocalStream
from clickstream.warehouse import Warehouse

KEYS = {"test-write-key": "web"}
T0 = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)
ROOT = Path(__file__).resolve().parents[1]


def envelopes(n: int, at: dt.datetime, tag: str = "e") -> list[Record]:
    body = {"writeKey": "test-write-key", "sentAt": at.isoformat(), "batch": [
        {"type": "identify" if i % 10 == 0 else "track", "event": f"{tag} {i}", "userId": f"u{i % 7}",
         "traits": {"n": i}, "messageId": f"{tag}-{i}", "timestamp": at.isoformat()} for i in range(n)]}
    info = RequestInfo("batch", f"req-{tag}", int(at.timestamp() * 1000), "203.0.113.1", "test")
    return build_records(info, json.dumps(body).encode(), KEYS)


def archived_dir(tmp_path: Path) -> Path:
    """A data dir whose stream and archive hold the same 3 hours of events (and one bad record),
    one gzip object per hour under Firehose's keys, as the archiver would write them."""
    data = tmp_path / "source"
    stream = LocalStream(data)
    for h in range(3):
        at = T0 + dt.timedelta(hours=h, minutes=5)
        records = envelopes(120, at, tag=f"h{h}")
        if h == 1:
            records.append(Record("bad", b'{"v":1,"receivedAt":%d}\n' % int(at.timestamp() * 1000)))
        stream.put(records)
        path = data / archive.ARCHIVE_DIR / archive.object_key(archive.ARCHIVE_PREFIX, "clickstream-archive", at)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(b"".join(r.data for r in records)))
    stream.close()
    return data


def snapshot(wh: Warehouse) -> dict[str, list]:
    out = {}
    for table, cols in [("events", 'message_id, type, source, user_id, event, received_at, "timestamp", traits'),
                        ("rejected", "reason, raw_record"), ("users", "id, traits")]:
        out[table] = wh.query(f"SELECT {cols} FROM clickstream.{table} ORDER BY 1, 2")[1]
    return out


def test_replaying_loaded_data_changes_nothing_and_restores_an_empty_warehouse(tmp_path):
    data = archived_dir(tmp_path)
    wh = Warehouse.in_dir(data)
    stream = LocalStream(data)
    wh.load_from(stream)
    before = snapshot(wh)
    assert len(before["events"]) == 360 and len(before["rejected"]) == 1
    stats = replay.replay(archive.open_archive(data), replay.LocalTarget(data), T0, T0 + dt.timedelta(hours=3))
    assert stats.records == 361 and stats.objects == 3
    assert stream.count() == 722  # the stream now holds every record twice ...
    wh.load_from(stream)
    assert snapshot(wh) == before  # ... and the warehouse is unchanged
    wh.close()

    fresh = tmp_path / "fresh"
    replay.replay(archive.open_archive(data), replay.LocalTarget(fresh), T0, T0 + dt.timedelta(hours=3))
    wh2 = Warehouse.in_dir(fresh)
    wh2.load_from(LocalStream(fresh))
    assert snapshot(wh2) == before  # an empty environment gets the same rows back
    wh2.close()


def test_time_range_selects_records_by_receive_time_and_lists_only_its_hours(tmp_path):
    data = archived_dir(tmp_path)
    start, end = T0 + dt.timedelta(hours=1), T0 + dt.timedelta(hours=1, minutes=30)
    listed = [o.key for o in archive.open_archive(data).list(start, end)]
    assert {k.split("/")[4] for k in listed} == {"10", "11"}  # the hour before may hold later records
    stats = replay.replay(archive.open_archive(data), None, start, end)  # dry run
    assert stats.records == 121 and stats.skipped_out_of_range == 120
    assert LocalStream(tmp_path / "nothing").count() == 0


class FlakyKinesis:
    """Wraps a real (moto) Kinesis client; the first put of each record fails for every third record."""

    def __init__(self, client):
        self.client, self.calls, self.seen = client, [], set()

    def put_records(self, StreamName, Records):
        self.calls.append(len(Records))
        results, ok = [], []
        for r in Records:
            key = r["Data"]
            if key not in self.seen and len(self.seen) % 3 == 0:
                self.seen.add(key)
                results.append({"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "slow"})
            else:
                self.seen.add(key)
                ok.append(r)
                results.append({"SequenceNumber": "1", "ShardId": "shardId-000000000000"})
        if ok:
            self.client.put_records(StreamName=StreamName, Records=ok)
        return {"FailedRecordCount": sum("ErrorCode" in r for r in results), "Records": results}


@mock_aws
def test_s3_to_kinesis_retries_only_failed_records_and_loses_none(tmp_path, monkeypatch):
    monkeypatch.setattr(replay.time, "sleep", lambda s: None)
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="archive")
    sent = []
    for h in range(2):
        at = T0 + dt.timedelta(hours=h, minutes=1)
        records = envelopes(400, at, tag=f"s3h{h}a") + envelopes(300, at, tag=f"s3h{h}b")  # > one PutRecords chunk
        sent += records
        key = archive.object_key(archive.ARCHIVE_PREFIX, "clickstream-archive", T0 + dt.timedelta(hours=h, minutes=1))
        s3.put_object(Bucket="archive", Key=f"firehose/{key}",
                      Body=gzip.compress(b"".join(r.data for r in records)))
    kinesis = boto3.client("kinesis", region_name="us-east-1")
    kinesis.create_stream(StreamName="events", ShardCount=1)
    flaky = FlakyKinesis(kinesis)
    arc = archive.S3Archive("s3://archive/firehose", s3)
    stats = replay.replay(arc, replay.KinesisTarget("events", flaky), T0, T0 + dt.timedelta(hours=2))
    assert stats.records == 1400 and stats.objects == 2
    assert max(flaky.calls) == 500  # PutRecords-sized chunks
    first_attempts = sum(c for c in flaky.calls) - stats.retries
    assert first_attempts == 1400 and stats.retries == len([1 for _ in range(0, 1400, 3)])
    shard = kinesis.describe_stream(StreamName="events")["StreamDescription"]["Shards"][0]["ShardId"]
    it = kinesis.get_shard_iterator(StreamName="events", ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    got, iterator = [], it["ShardIterator"]
    while True:
        page = kinesis.get_records(ShardIterator=iterator, Limit=10000)
        got += page["Records"]
        if not page["Records"]:
            break
        iterator = page["NextShardIterator"]
    assert sorted(r["Data"] for r in got) == sorted(r.data for r in sent)  # every record exactly once
    assert {r["PartitionKey"] for r in got} == {r.partition_key for r in sent}


def test_interrupted_replay_resumes_from_its_checkpoint(tmp_path):
    data = archived_dir(tmp_path)

    class Dying(replay.LocalTarget):
        puts = 0

        def put(self, records):
            Dying.puts += 1
            if Dying.puts == 2:
                raise KeyboardInterrupt
            return super().put(records)

    target_dir = tmp_path / "target"
    checkpoint = replay.Checkpoint.load(tmp_path / "cp.json")
    with pytest.raises(KeyboardInterrupt):
        replay.replay(archive.open_archive(data), Dying(target_dir), T0, T0 + dt.timedelta(hours=3),
                      checkpoint=checkpoint)
    assert LocalStream(target_dir).count() == 120  # first object done
    resumed = replay.Checkpoint.load(tmp_path / "cp.json")
    assert len(resumed.done) == 1
    stats = replay.replay(archive.open_archive(data), replay.LocalTarget(target_dir), T0,
                          T0 + dt.timedelta(hours=3), checkpoint=resumed)
    assert stats.objects == 2 and LocalStream(target_dir).count() == 361


def test_rate_limit_paces_the_puts():
    now = [0.0]
    slept = []
    limiter = replay.RateLimiter(100, clock=lambda: now[0], sleep=lambda s: (slept.append(s), now.__setitem__(
        0, now[0] + s)))
    for _ in range(5):
        limiter.wait(50)
    assert now[0] == pytest.approx(2.5)


def test_cli_replay_dry_run_and_local(tmp_path, capsys):
    data = archived_dir(tmp_path)
    assert main(["replay", "--data-dir", str(tmp_path / "t"), "--source", str(data), "--from", "2026-11-28T10:00Z",
                 "--to", "2026-11-28T13:00Z", "--dry-run", "--json"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert (dry["records"], dry["objects"], dry["dry_run"]) == (361, 3, True)
    assert not (tmp_path / "t" / "stream.sqlite3").exists()
    assert main(["replay", "--data-dir", str(tmp_path / "t"), "--source", str(data), "--from", "2026-11-28T10:00Z",
                 "--to", "2026-11-28T13:00Z"]) == 0
    assert "replayed 361 records" in capsys.readouterr().out
    assert main(["replay", "--from", "2026-11-28T13:00Z", "--to", "2026-11-28T10:00Z"]) == 2


def _handler_module():
    spec = importlib.util.spec_from_file_location("replay_handler", ROOT / "functions" / "replay" / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@mock_aws
def test_lambda_handlers_plan_and_replay_an_hour(monkeypatch):
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "1")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Clickstream")
    monkeypatch.setenv("ARCHIVE_BUCKET", "archive")
    monkeypatch.setenv("STREAM_NAME", "events")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="archive")
    records = envelopes(50, T0 + dt.timedelta(minutes=3), tag="lam")
    key = archive.object_key(archive.ARCHIVE_PREFIX, "firehose", T0 + dt.timedelta(minutes=3))
    s3.put_object(Bucket="archive", Key=key, Body=gzip.compress(b"".join(r.data for r in records)))
    kinesis = boto3.client("kinesis", region_name="us-east-1")
    kinesis.create_stream(StreamName="events", ShardCount=1)
    handler = _handler_module()
    context = SimpleNamespace(function_name="replay", memory_limit_in_mb=512, aws_request_id="req-1",
                              invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:replay")
    planned = handler.plan({"from": "2026-11-28T10:00:00Z", "to": "2026-11-28T11:30:00Z"}, context)
    assert planned["hours"] == ["events/2026/11/28/09/", "events/2026/11/28/10/", "events/2026/11/28/11/"]
    result = handler.replay_hour({"prefix": planned["hours"][1], "from": planned["from"], "to": planned["to"]},
                                 context)
    assert result["records"] == 50 and result["objects"] == 1
    shard = kinesis.describe_stream(StreamName="events")["StreamDescription"]["Shards"][0]["ShardId"]
    it = kinesis.get_shard_iterator(StreamName="events", ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    got = kinesis.get_records(ShardIterator=it["ShardIterator"])["Records"]
    assert len(got) == 50
    # what landed on the stream named by STREAM_NAME is exactly what was archived, keys included
    assert [(r["Data"], r["PartitionKey"]) for r in got] == [(r.data, r.partition_key) for r in records]


def test_replay_state_machine_is_well_formed():
    from clickstream import workflows

    asl = workflows.render_replay("arn:plan", "arn:replay", 10, 5)
    assert workflows.dangling_transitions(asl) == []
    mapping = asl["States"]["ReplayEachHour"]
    assert mapping["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED"
    assert (mapping["MaxConcurrency"], mapping["ToleratedFailurePercentage"]) == (10, 5)
    assert asl["States"]["PlanHours"]["Parameters"]["FunctionName"] == "arn:plan"
