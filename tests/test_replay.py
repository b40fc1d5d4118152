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
from clickstream.contract import Record, is_replayed, mark_replayed
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
    # every record exactly once, marked as a replayed copy
    assert sorted(r["Data"] for r in got) == sorted(mark_replayed(r.data) for r in sent)
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
    # what landed on the stream named by STREAM_NAME is what was archived, marked, keys included
    assert [(r["Data"], r["PartitionKey"]) for r in got] == [(mark_replayed(r.data), r.partition_key)
                                                             for r in records]


def test_replay_state_machine_is_well_formed():
    from clickstream import workflows

    asl = workflows.render_replay("arn:plan", "arn:replay", 10, 5, "archive")
    assert workflows.dangling_transitions(asl) == []
    mapping = asl["States"]["ReplayEachHour"]
    assert mapping["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED"
    assert (mapping["MaxConcurrency"], mapping["ToleratedFailurePercentage"]) == (10, 5)
    assert asl["States"]["PlanHours"]["Parameters"]["FunctionName"] == "arn:plan"


# ---------------------------------------------------------------------------------------------
# The built Lambda assets, where only the standard library, boto3 and Powertools can be imported
# ---------------------------------------------------------------------------------------------
# What the Lambda runtime (boto3) and the Powertools layer provide, with their dependencies.
LAMBDA_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six",
                   "aws_lambda_powertools", "typing_extensions", "aws_xray_sdk", "wrapt")
CHILD = r"""
import importlib.util, json, sys
from types import SimpleNamespace
asset, site, name, event = sys.argv[1:5]
sys.path[:0] = [asset, site]
assert importlib.util.find_spec("orjson") is None, "orjson must not be importable here"
import handler
ctx = SimpleNamespace(function_name="fn", memory_limit_in_mb=1769, aws_request_id="req-1",
                      invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:fn")
print(json.dumps(getattr(handler, name)(json.loads(event), ctx) if name else "imported"))
"""


def lambda_site(tmp_path: Path) -> Path:
    site = tmp_path / "lambda-site"
    site.mkdir()
    for name in LAMBDA_PACKAGES:
        origin = Path(importlib.util.find_spec(name).origin)
        source = origin.parent if origin.name == "__init__.py" else origin
        (site / source.name).symlink_to(source)
    return site


def run_in_lambda_like_python(asset: Path, site: Path, name: str, event: dict, env: dict) -> dict | str:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-I", "-S", "-c", CHILD, str(asset), str(site), name, json.dumps(event)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def built_assets(tmp_path_factory) -> list[Path]:
    pytest.importorskip("aws_cdk")
    from tests.test_cdk import synth

    assembly, _ = synth(tmp_path_factory.mktemp("cdk.out"))
    return sorted(p for p in Path(assembly.directory).glob("asset.*") if (p / "handler.py").exists())


def test_every_built_function_imports_with_only_stdlib_boto3_and_powertools(built_assets, tmp_path):
    """clickstream.archive imported orjson (through the local stream): every replay failed at import."""
    site = lambda_site(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "AWS_DEFAULT_REGION": "us-east-1", "POWERTOOLS_TRACE_DISABLED": "1"}
    assert len(built_assets) >= 3  # replay, and the warehouse's deploy hooks
    for asset in built_assets:
        assert run_in_lambda_like_python(asset, site, "", {}, env) == "imported", asset


def test_built_replay_function_replays_an_hour_against_moto(built_assets, tmp_path):
    from moto.server import ThreadedMotoServer

    from tests.conftest import free_port

    [asset] = [p for p in built_assets if "def replay_hour" in (p / "handler.py").read_text()]
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
        kinesis = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1",
                               aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket="archive")
        kinesis.create_stream(StreamName="events", ShardCount=1)
        records = envelopes(40, T0 + dt.timedelta(minutes=7), tag="iso")
        key = archive.object_key(archive.ARCHIVE_PREFIX, "firehose", T0 + dt.timedelta(minutes=7))
        s3.put_object(Bucket="archive", Key=key, Body=gzip.compress(b"".join(r.data for r in records)))
        env = {"PATH": "/usr/bin:/bin", "AWS_ENDPOINT_URL": endpoint, **creds, "ARCHIVE_BUCKET": "archive",
               "STREAM_NAME": "events", "POWERTOOLS_TRACE_DISABLED": "1",
               "POWERTOOLS_METRICS_NAMESPACE": "Clickstream", "POWERTOOLS_SERVICE_NAME": "clickstream-replay"}
        site = lambda_site(tmp_path)
        planned = run_in_lambda_like_python(asset, site, "plan", {"from": "2026-11-28T10:00:00Z",
                                                                  "to": "2026-11-28T10:59:59Z"}, env)
        assert planned["hours"] == ["events/2026/11/28/09/", "events/2026/11/28/10/"]
        result = run_in_lambda_like_python(asset, site, "replay_hour", {"prefix": planned["hours"][1],
                                                                        "from": planned["from"],
                                                                        "to": planned["to"]}, env)
        assert (result["records"], result["objects"]) == (40, 1)
        shard = kinesis.describe_stream(StreamName="events")["StreamDescription"]["Shards"][0]["ShardId"]
        it = kinesis.get_shard_iterator(StreamName="events", ShardId=shard, ShardIteratorType="TRIM_HORIZON")
        got = kinesis.get_records(ShardIterator=it["ShardIterator"])["Records"]
        assert [(r["Data"], r["PartitionKey"]) for r in got] == [(mark_replayed(r.data), r.partition_key)
                                                             for r in records]
    finally:
        server.stop()


def _replay_machine_definition() -> str:
    from clickstream import workflows

    asl = workflows.render_replay("arn:aws:lambda:us-east-1:123456789012:function:plan",
                                  "arn:aws:lambda:us-east-1:123456789012:function:replay", 10,
                                  0.0,  # moto's ASL grammar takes only a decimal here; AWS takes 0 too
                                  "archive")
    # the stack substitutes ${Partition} with AWS::Partition (aws, aws-cn, aws-us-gov)
    return json.dumps(asl).replace("${Partition}", "aws")


def test_replay_asl_uses_the_partition_everywhere():
    from clickstream import workflows

    text = json.dumps(workflows.render_replay("arn:plan", "arn:replay", 10, 0, "archive"))
    assert "arn:aws:" not in text
    assert text.count("arn:${Partition}:states:::") == 3


def test_replay_state_machine_runs_in_moto_retries_timeouts_and_writes_results_to_s3(monkeypatch):
    """The deployed ASL, executed by moto's Step Functions engine with the Lambda handlers in-process:
    a timed-out hour is retried (Sandbox.Timedout), every record is put once per successful attempt,
    and the children's summaries go to S3 so the execution's output stays small however long the range."""
    import time as time_

    from moto.awslambda.models import LambdaBackend

    for name, value in {"POWERTOOLS_TRACE_DISABLED": "1", "POWERTOOLS_METRICS_NAMESPACE": "Clickstream",
                        "ARCHIVE_BUCKET": "archive", "STREAM_NAME": "events", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    handler = _handler_module()
    calls: list[str] = []
    context = SimpleNamespace(function_name="fn", memory_limit_in_mb=1769, aws_request_id="req-1",
                              invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:fn")

    def invoke(self, function_name, qualifier, body, headers, response_headers):
        event = json.loads(body)
        if function_name.endswith(":plan"):
            return json.dumps(handler.plan(event, context)).encode()
        calls.append(event["prefix"])
        if calls.count(event["prefix"]) == 1 and event["prefix"].endswith("/11/"):
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps({"errorType": "Sandbox.Timedout",
                               "errorMessage": "Task timed out after 900.00 seconds"}).encode()
        s3, kinesis = boto3.client("s3"), boto3.client("kinesis")
        return json.dumps(handler.replay_hour_logic(event, s3, kinesis)).encode()

    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        monkeypatch.setattr(LambdaBackend, "invoke", invoke)
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="archive")
        kinesis = boto3.client("kinesis", region_name="us-east-1")
        kinesis.create_stream(StreamName="events", ShardCount=1)
        sent = []
        for h in range(3):
            at = T0 + dt.timedelta(hours=h, minutes=2)
            records = envelopes(30, at, tag=f"sfn{h}")
            sent += records
            key = archive.object_key(archive.ARCHIVE_PREFIX, "firehose", at)
            s3.put_object(Bucket="archive", Key=key, Body=gzip.compress(b"".join(r.data for r in records)))
        sfn = boto3.client("stepfunctions", region_name="us-east-1")
        machine = sfn.create_state_machine(name="replay", definition=_replay_machine_definition(),
                                           roleArn="arn:aws:iam::123456789012:role/sfn")["stateMachineArn"]
        execution = sfn.start_execution(stateMachineArn=machine, input=json.dumps(
            {"from": "2026-11-28T10:00:00Z", "to": "2026-11-28T12:59:59Z"}))["executionArn"]
        deadline = time_.monotonic() + 90
        while (described := sfn.describe_execution(executionArn=execution))["status"] == "RUNNING":
            assert time_.monotonic() < deadline, "replay execution did not finish"
            time_.sleep(0.2)
        assert described["status"] == "SUCCEEDED", described
        output = json.loads(described["output"])
        # the summaries are in S3, the state carries only where they are
        details = output["results"]
        assert details["Bucket"] == "archive" and details["Key"].startswith(replay.RESULT_PREFIX + "/")
        assert len(described["output"]) < 500
        written = s3.list_objects_v2(Bucket="archive", Prefix=replay.RESULT_PREFIX + "/")["Contents"]
        assert written
        assert sorted(calls) == sorted(["events/2026/11/28/09/", "events/2026/11/28/10/", "events/2026/11/28/11/",
                                        "events/2026/11/28/11/", "events/2026/11/28/12/"])
        shard = kinesis.describe_stream(StreamName="events")["StreamDescription"]["Shards"][0]["ShardId"]
        it = kinesis.get_shard_iterator(StreamName="events", ShardId=shard, ShardIteratorType="TRIM_HORIZON")
        got = kinesis.get_records(ShardIterator=it["ShardIterator"], Limit=10000)["Records"]
        assert sorted(r["Data"] for r in got) == sorted(mark_replayed(r.data) for r in sent)


def test_chunks_respect_the_put_byte_limit_with_large_records():
    """Records of 600 KB: 8 fit in 5 MiB, the 9th starts a new call (a 100x byte limit would not split)."""
    from clickstream import contract

    big = [Record(f"req-1:{i}", b"x" * (600 * 1024 - 10) + b"\n") for i in range(20)]
    calls = list(replay.chunks(iter(big)))
    assert [len(c) for c in calls] == [8, 8, 4]
    for call in calls:
        assert sum(contract.record_bytes(r.partition_key, r.data) for r in call) <= contract.KINESIS_MAX_BYTES_PER_PUT
    assert [r for c in calls for r in c] == big
    # exactly at the limit still fits one call; one byte more does not
    size = contract.KINESIS_MAX_BYTES_PER_PUT // 5
    exact = [Record("k", b"y" * (size - 1)) for _ in range(5)]
    assert [len(c) for c in replay.chunks(iter(exact))] == [5]
    over = [Record("k", b"y" * (size - 1)) for _ in range(4)] + [Record("k", b"y" * size)]
    assert [len(c) for c in replay.chunks(iter(over))] == [4, 1]


def test_replaying_events_without_message_ids_changes_nothing(tmp_path):
    """The warehouse derives a missing messageId from the envelope's requestId and index, which replay
    keeps: replayed copies of id-less events are recognised as the same events."""
    data = tmp_path / "source"
    stream = LocalStream(data)
    at = T0 + dt.timedelta(minutes=5)
    body = {"writeKey": "test-write-key", "batch": [
        {"type": "track", "event": f"no id {i}", "userId": f"u{i}", "timestamp": at.isoformat()} for i in range(25)]}
    records = build_records(RequestInfo("batch", "req-noid", int(at.timestamp() * 1000), "203.0.113.1"),
                            json.dumps(body).encode(), KEYS)
    assert all("messageId" not in json.loads(r.data)["message"] for r in records)
    stream.put(records)
    path = data / archive.ARCHIVE_DIR / archive.object_key(archive.ARCHIVE_PREFIX, "clickstream-archive", at)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(b"".join(r.data for r in records)))
    wh = Warehouse.in_dir(data)
    wh.load_from(stream)
    before = snapshot(wh)
    assert len(before["events"]) == 25
    assert sorted(row[0] for row in before["events"]) == sorted(f"req-noid-{i}" for i in range(25))
    stats = replay.replay(archive.open_archive(data), replay.LocalTarget(data), T0, T0 + dt.timedelta(hours=1))
    assert stats.records == 25 and stream.count() == 50
    wh.load_from(stream)
    assert snapshot(wh) == before
    wh.close()


def test_replaying_a_range_that_includes_now_does_not_grow_the_archive(tmp_path):
    """Replayed copies are marked; the archiver does not archive them again and replay skips them,
    so replaying the same range twice replays the same records and the archive stays as it was."""
    data = archived_dir(tmp_path)
    root = data / archive.ARCHIVE_DIR
    before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.gz"))
    stream = LocalStream(data)
    archiver = archive.Archiver(data)
    stream.set_checkpoint(archive.ARCHIVER_CONSUMER, stream.last_seq())  # the originals are archived
    originals = before
    now = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)  # the range includes the archiver's "now"
    for attempt in range(2):
        stats = replay.replay(archive.open_archive(data), replay.LocalTarget(data), T0, now)
        # 360 envelopes and the malformed record, plus that record's copy archived by the first round
        assert stats.records == 361 + attempt and stats.skipped_replayed == 0
        archiver.run_once(stream, force=True)
        written = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.gz"))
        new = [k for k in written if k not in originals]
        assert [len(list(archive.iter_records(archive.open_archive(data), k))) for k in new] == [1 + attempt]
        originals = written
    # 360 envelopes per replay are marked and skipped; the one malformed record keeps its bytes
    # (the warehouse dedups rejected rows by them) and is archived again
    assert archiver.stats.replayed_skipped == 2 * 360
    copies = [r for r in stream.iter_from(0) if is_replayed(r.data)]
    assert len(copies) == 2 * 360
    assert all(json.loads(r.data)["replayed"] is True for r in copies)
    stream.close()


def test_replay_skips_replayed_copies_it_finds_in_an_archive(tmp_path):
    """In AWS, Firehose archives the replayed copies (marked): a later replay must not put them again."""
    data = tmp_path / "aws-like"
    at = T0 + dt.timedelta(minutes=20)
    originals = envelopes(30, at, tag="orig")
    copies = [mark_replayed(r.data) for r in originals]
    path = data / archive.ARCHIVE_DIR / archive.object_key(archive.ARCHIVE_PREFIX, "firehose", at)
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress(b"".join(r.data for r in originals) + b"".join(copies)))
    target = tmp_path / "target"
    stats = replay.replay(archive.open_archive(data), replay.LocalTarget(target), T0, T0 + dt.timedelta(hours=1))
    assert (stats.records, stats.skipped_replayed) == (30, 30)
    assert [r.data for r in LocalStream(target).iter_from(0)] == copies
    assert mark_replayed(copies[0]) == copies[0]  # marking is idempotent
    assert json.loads(copies[0])["message"] == json.loads(originals[0].data)["message"]
