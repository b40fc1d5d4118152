"""Custom resources on the Redshift side of the warehouse stack (one provider, dispatched by type).

- ``Custom::StreamingRoleAssociation``: associate the streaming-ingestion role with Redshift, then
  wait until it is in-sync. ``Associate`` is "false" when the stack created the namespace with the
  role: then it only waits (and never removes the role on delete: the namespace goes with the stack).
- ``Custom::ServerlessUsageLimit``: the workgroup's RPU-hour usage limit (no CloudFormation type).
"""

from __future__ import annotations

import boto3
from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext

from clickstream.deploy_hooks import apply_usage_limit, associate_role, role_apply_status

USAGE_LIMIT = "Custom::ServerlessUsageLimit"
logger = Logger(service="clickstream-redshift-role")
tracer = Tracer(service="clickstream-redshift-role")


def _client(mode: str):
    return boto3.client("redshift" if mode == "provisioned" else "redshift-serverless")


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def on_event(event: dict, context: LambdaContext) -> dict:
    props = event["ResourceProperties"]
    if event.get("ResourceType") == USAGE_LIMIT:
        props = {**props, "_Old": event.get("OldResourceProperties")}
        limit_id = apply_usage_limit(_client("serverless"), event["RequestType"], props,
                                     event.get("PhysicalResourceId"))
        logger.info("usage limit", extra={"id": limit_id, "amount": props["Amount"], "period": props["Period"]})
        return {"PhysicalResourceId": limit_id or f"none-{event['RequestId']}"}
    mode, name, role = props["Mode"], props["Name"], props["RoleArn"]
    if props.get("Associate", "true") == "true":
        roles = associate_role(_client(mode), mode, name, role, remove=event["RequestType"] == "Delete")
        logger.info("redshift roles", extra={"mode": mode, "target": name, "roles": roles})
    return {"PhysicalResourceId": f"{mode}:{name}:{role}"}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def is_complete(event: dict, context: LambdaContext) -> dict:
    """Setup depends on the association: it starts only once the role's apply status is in-sync."""
    if event["RequestType"] == "Delete" or event.get("ResourceType") == USAGE_LIMIT:
        return {"IsComplete": True}
    props = event["ResourceProperties"]
    status = role_apply_status(_client(props["Mode"]), props["Mode"], props["Name"], props["RoleArn"])
    logger.info("role apply status", extra={"target": props["Name"], "status": status})
    return {"IsComplete": status == "in-sync"}
