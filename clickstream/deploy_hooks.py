"""What the warehouse stack's custom resources do, as plain functions the tests call directly.

- Run the setup workflow on ``cdk deploy`` and fail the deploy with its error.
- Associate the streaming-ingestion role with an existing cluster or Serverless namespace without
  dropping the roles already there (UpdateNamespace replaces the whole list), then wait until its
  apply status is ``in-sync``: a role is usable by ``CREATE EXTERNAL SCHEMA ... IAM_ROLE`` only then
  (https://docs.aws.amazon.com/redshift/latest/dg/materialized-view-streaming-ingestion-getting-started.html),
  so setup must not start before.
"""

from __future__ import annotations

import json
import re
from typing import Any

TERMINAL_FAILURES = ("FAILED", "TIMED_OUT", "ABORTED")
_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+")
# Serverless lists roles as "IamRole(applyStatus=in-sync, iamRoleArn=arn:...)".
_SERVERLESS_ROLE = re.compile(r"applyStatus=([\w-]+),\s*iamRoleArn=(arn:[^)\s,]+)")
IN_SYNC = "in-sync"


class SetupFailed(RuntimeError):
    """The setup workflow ended badly; the message is what CloudFormation shows."""


def start_setup(sfn: Any, state_machine_arn: str, request_id: str) -> str:
    """Start one setup execution per CloudFormation request (the name makes retries idempotent)."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", f"deploy-{request_id}")[:80]
    try:
        return sfn.start_execution(stateMachineArn=state_machine_arn, name=name,
                                   input=json.dumps({"trigger": "cdk-deploy"}))["executionArn"]
    except sfn.exceptions.ExecutionAlreadyExists:
        prefix, machine = state_machine_arn.split(":stateMachine:")
        return f"{prefix}:execution:{machine}:{name}"


def setup_finished(sfn: Any, execution_arn: str) -> bool:
    """True when the execution succeeded, False while it runs; raises with its error otherwise."""
    result = sfn.describe_execution(executionArn=execution_arn)
    status = result["status"]
    if status == "SUCCEEDED":
        return True
    if status in TERMINAL_FAILURES:
        raise SetupFailed(f"warehouse setup {status}: {result.get('error', '')}: {result.get('cause', '')}".strip())
    return False


def _role_arns(entries: list[Any]) -> list[str]:
    """Serverless reports roles as 'IamRole(applyStatus=..., iamRoleArn=arn:...)' strings."""
    arns: list[str] = []
    for entry in entries:
        text = entry if isinstance(entry, str) else json.dumps(entry)
        arns += _ARN.findall(text)
    return arns


def associate_role(client: Any, mode: str, name: str, role_arn: str, *, remove: bool = False) -> list[str]:
    """Add (or remove) ``role_arn`` on a provisioned cluster or the namespace of a workgroup."""
    if mode == "provisioned":
        key = "RemoveIamRoles" if remove else "AddIamRoles"
        cluster = client.modify_cluster_iam_roles(ClusterIdentifier=name, **{key: [role_arn]})["Cluster"]
        return [r["IamRoleArn"] for r in cluster.get("IamRoles", [])]
    namespace = client.get_workgroup(workgroupName=name)["workgroup"]["namespaceName"]
    current = _role_arns(client.get_namespace(namespaceName=namespace)["namespace"].get("iamRoles", []))
    wanted = [a for a in current if a != role_arn] + ([] if remove else [role_arn])
    if wanted != current:
        client.update_namespace(namespaceName=namespace, iamRoles=wanted)
    return wanted


def role_apply_status(client: Any, mode: str, name: str, role_arn: str) -> str | None:
    """The apply status of ``role_arn`` on the cluster or the workgroup's namespace (None: not listed)."""
    if mode == "provisioned":
        [cluster] = client.describe_clusters(ClusterIdentifier=name)["Clusters"]
        return next((r.get("ApplyStatus") for r in cluster.get("IamRoles", []) if r["IamRoleArn"] == role_arn), None)
    namespace = client.get_workgroup(workgroupName=name)["workgroup"]["namespaceName"]
    for entry in client.get_namespace(namespaceName=namespace)["namespace"].get("iamRoles", []):
        if isinstance(entry, dict):  # the documented shape, should the service return one
            status, arn = entry.get("applyStatus"), entry.get("iamRoleArn")
        else:
            found = _SERVERLESS_ROLE.search(entry)
            status, arn = (found.group(1), found.group(2)) if found else (None, None)
        if arn == role_arn:
            return status
    return None


def role_in_sync(client: Any, mode: str, name: str, role_arn: str) -> bool:
    """True once Redshift applied the association; False while it is adding it."""
    return role_apply_status(client, mode, name, role_arn) == IN_SYNC


def apply_usage_limit(client: Any, request: str, props: dict[str, Any], limit_id: str | None) -> str | None:
    """Create, update or delete the workgroup's RPU-hour limit (CloudFormation has no resource type
    for it); returns the usage limit id, the custom resource's physical id.

    A new period or workgroup creates a new limit and returns its id: CloudFormation then deletes the
    old one (a changed physical id means replacement). Deleting one that is gone is not an error.
    https://docs.aws.amazon.com/redshift-serverless/latest/APIReference/API_CreateUsageLimit.html
    """
    if request == "Delete":
        if limit_id and not limit_id.startswith("none"):
            try:
                client.delete_usage_limit(usageLimitId=limit_id)
            except client.exceptions.ResourceNotFoundException:
                pass
            except client.exceptions.ValidationException:  # an id from a create that failed
                pass
        return limit_id
    old = props.get("_Old") or {}
    same = old.get("Period") == props["Period"] and old.get("ResourceArn") == props["ResourceArn"]
    if request == "Update" and limit_id and same:
        client.update_usage_limit(usageLimitId=limit_id, amount=int(props["Amount"]),
                                  breachAction=props["BreachAction"])
        return limit_id
    created = client.create_usage_limit(resourceArn=props["ResourceArn"], usageType="serverless-compute",
                                        amount=int(props["Amount"]), period=props["Period"],
                                        breachAction=props["BreachAction"])
    return created["usageLimit"]["usageLimitId"]
