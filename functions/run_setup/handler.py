"""Custom resource: run the warehouse setup workflow on deploy; fail the deploy if it fails."""

from __future__ import annotations

import os

import boto3
from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext

from clickstream.deploy_hooks import setup_finished, start_setup

STATE_MACHINE_ARN_ENV = "SETUP_STATE_MACHINE_ARN"
logger = Logger(service="clickstream-warehouse-setup")
tracer = Tracer(service="clickstream-warehouse-setup")
sfn = boto3.client("stepfunctions")


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def on_event(event: dict, context: LambdaContext) -> dict:
    if event["RequestType"] == "Delete":
        return {"PhysicalResourceId": event.get("PhysicalResourceId", "warehouse-setup")}
    arn = start_setup(sfn, os.environ[STATE_MACHINE_ARN_ENV], event["RequestId"])
    logger.info("started warehouse setup", extra={"execution": arn})
    return {"PhysicalResourceId": "warehouse-setup", "Data": {"ExecutionArn": arn}}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def is_complete(event: dict, context: LambdaContext) -> dict:
    if event["RequestType"] == "Delete":
        return {"IsComplete": True}
    return {"IsComplete": setup_finished(sfn, event["Data"]["ExecutionArn"])}
