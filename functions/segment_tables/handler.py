"""Refresh workflow step: spread the rows the merge added to `events` into Segment's per-source tables.

Runs after the merge (and its watermark update) succeeded. Input (all optional):
``{"maxNewTables": 2000, "maxNewColumns": 2000, "maxColumnsPerTable": 1500}``; the refresh
workflow sends ``{"execution": "<its execution ARN>"}``, logged with every line.
Output: ``{"rows", "tablesCreated", "columnsAdded", "deferred", "loadedAt", "transactions"}``.
The logic is :class:`clickstream.segment_tables.RedshiftRun`; the SQL comes from
:mod:`clickstream.segment_schema`, the same definition the local warehouse uses. Bundle with the
modules ``segment_schema`` and ``segment_tables`` (neither needs sqlglot or duckdb).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from clickstream.segment_schema import Limits
from clickstream.segment_tables import DataApiExecutor, RedshiftRun, names_from_env
from clickstream.segment_tables import target_from_env as _target

logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace="Clickstream")


def target_from_env(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Where the SQL runs: a Serverless workgroup, or a cluster with a secret or database user (the
    variables the warehouse stack sets with ``segment_tables.lambda_environment``)."""
    return _target(env)


def run(event: dict, client, env: Mapping[str, str] = os.environ) -> dict:
    defaults = Limits()
    limits = Limits(new_tables=int(event.get("maxNewTables", defaults.new_tables)),
                    new_columns=int(event.get("maxNewColumns", defaults.new_columns)),
                    columns_per_table=int(event.get("maxColumnsPerTable", defaults.columns_per_table)))
    return RedshiftRun(DataApiExecutor(client, target_from_env(env)), names_from_env(env), limits).run()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: LambdaContext) -> dict:
    if (event or {}).get("execution"):
        logger.append_keys(execution=event["execution"])  # which refresh run this was
    result = run(event or {}, boto3.client("redshift-data"))
    logger.info("segment tables updated", extra=result)
    metrics.add_metric(name="SegmentRowsSpread", unit=MetricUnit.Count, value=result["rows"])
    metrics.add_metric(name="SegmentColumnsAdded", unit=MetricUnit.Count, value=result["columnsAdded"])
    if result["deferred"]:
        metrics.add_metric(name="SegmentSchemaDeferred", unit=MetricUnit.Count, value=result["deferred"])
    return result
