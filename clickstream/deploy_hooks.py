"""What the warehouse stack's custom resources do, as plain functions the tests call directly.

- Run the setup workflow on ``cdk deploy`` and fail the deploy with its error.
- Associate the streaming-ingestion role with an existing cluster or Serverless namespace without
  dropping the roles already there (UpdateNamespace replaces the whole list).
"""

from __future__ import annotations

import json
import re
from typing import Any

TERMINAL_FAILURES = ("FAILED", "TIMED_OUT", "ABORTED")
_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+")


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
