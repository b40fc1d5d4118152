"""Replay Lambda: ``plan`` turns a time range into hour prefixes; ``replay_hour`` replays one hour
of archive objects onto the stream. The Distributed Map of the replay state machine fans out over
the hours. Both call the same code as ``clickstream replay``."""

from __future__ import annotations

import os

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from clickstream import replay
from clickstream.archive import S3Archive

BUCKET_ENV, STREAM_ENV = "ARCHIVE_BUCKET", "STREAM_NAME"
logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace="Clickstream")


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def plan(event: dict, context: LambdaContext) -> dict:
    start, end = replay.parse_time(event["from"]), replay.parse_time(event["to"])
    if end < start:
        raise ValueError("'to' is before 'from'")
    hours = replay.hour_prefixes(start, end)
    logger.info("replay planned", extra={"hours": len(hours)})
    return {"from": start.isoformat(), "to": end.isoformat(), "hours": hours}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def replay_hour(event: dict, context: LambdaContext) -> dict:
    return replay_hour_logic(event, boto3.client("s3"), boto3.client("kinesis"))


def replay_hour_logic(event: dict, s3, kinesis) -> dict:
    archive = S3Archive(f"s3://{os.environ[BUCKET_ENV]}", s3)
    target = replay.KinesisTarget(os.environ[STREAM_ENV], kinesis)
    start, end = replay.parse_time(event["from"]), replay.parse_time(event["to"])
    stats = replay.ReplayStats()
    prefix = event["prefix"]
    for obj in archive.list_prefix(prefix):
        replay.replay_object(archive, obj.key, target, start, end, stats=stats)
    metrics.add_metric(name="RecordsReplayed", unit=MetricUnit.Count, value=stats.records)
    metrics.add_metric(name="RecordsRetried", unit=MetricUnit.Count, value=stats.retries)
    logger.info("hour replayed", extra={"prefix": prefix, **replay.stats_dict(stats)})
    return {"prefix": prefix, **replay.stats_dict(stats)}
