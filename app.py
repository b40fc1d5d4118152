#!/usr/bin/env python3
"""The CDK app: reads the configuration once, validates it, and composes the stacks.

Deploy order (cross-stack references, no cycles): ClickstreamStorage -> ClickstreamIngest.
"""

from __future__ import annotations

import os
import sys

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from clickstream.config import ConfigError, load_settings
from stacks.ingest import IngestStack
from stacks.storage import StorageStack


def build_app(app: cdk.App | None = None, *, nag: bool = True) -> cdk.App:
    app = app or cdk.App()
    try:
        settings = load_settings(app.node.try_get_context)
    except ConfigError as exc:
        sys.exit(f"clickstream: {exc}")
    env = cdk.Environment(account=os.environ.get("CDK_DEFAULT_ACCOUNT"), region=os.environ.get("CDK_DEFAULT_REGION"))
    storage = StorageStack(app, "ClickstreamStorage", settings=settings, env=env,
                           description="Clickstream: Kinesis stream, Firehose archive to S3")
    IngestStack(app, "ClickstreamIngest", settings=settings, storage=storage, env=env,
                description="Clickstream: Segment-compatible tracking API (API Gateway -> Kinesis)")
    if nag:
        cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app


if __name__ == "__main__":
    build_app().synth()
