"""Custom resource: associate the streaming-ingestion role with an existing Redshift."""

from __future__ import annotations

import boto3
from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext

from clickstream.deploy_hooks import associate_role

logger = Logger(service="clickstream-redshift-role")
tracer = Tracer(service="clickstream-redshift-role")


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def on_event(event: dict, context: LambdaContext) -> dict:
    props = event["ResourceProperties"]
    mode, name, role = props["Mode"], props["Name"], props["RoleArn"]
    client = boto3.client("redshift" if mode == "provisioned" else "redshift-serverless")
    roles = associate_role(client, mode, name, role, remove=event["RequestType"] == "Delete")
    logger.info("redshift roles", extra={"mode": mode, "name": name, "roles": roles})
    return {"PhysicalResourceId": f"{mode}:{name}:{role}"}
