#!/usr/bin/env python3
"""The CDK app: reads the configuration once, validates it, and composes the stacks.

Deploy order (cross-stack references, no cycles): ClickstreamStorage -> ClickstreamIngest ->
ClickstreamWarehouse.
"""

from __future__ import annotations

import sys

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from clickstream.config import ConfigError, load_settings
from stacks.ingest import IngestStack
from stacks.replay import ReplayStack
from stacks.storage import StorageStack
from stacks.warehouse import WarehouseStack


def build_app(app: cdk.App | None = None, *, nag: bool = True) -> cdk.App:
    app = app or cdk.App()
    try:
        settings = load_settings(app.node.try_get_context)
    except ConfigError as exc:
        sys.exit(f"clickstream: {exc}")
    # Environment-agnostic: the same template deploys to any account and region (`cdk deploy` picks
    # them from the AWS profile); nothing here needs a lookup at synth time.
    env = None
    storage = StorageStack(app, "ClickstreamStorage", settings=settings, env=env,
                           description="Clickstream: Kinesis stream, Firehose archive to S3")
    ingest = IngestStack(app, "ClickstreamIngest", settings=settings, storage=storage, env=env,
                         description="Clickstream: Segment-compatible tracking API (API Gateway -> Kinesis)")
    WarehouseStack(app, "ClickstreamWarehouse", settings=settings, storage=storage,
                   alarm_topic=ingest.monitoring.topic, env=env,
                   description="Clickstream: Redshift streaming ingestion, setup and refresh workflows")
    ReplayStack(app, "ClickstreamReplay", settings=settings, storage=storage, env=env,
                description="Clickstream: replay archived events from S3 onto the stream")
    if nag:
        cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app


if __name__ == "__main__":
    build_app().synth()
