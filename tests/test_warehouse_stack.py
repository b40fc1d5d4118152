"""ClickstreamWarehouse: the synthesized stack, and its custom-resource logic run against moto."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from clickstream import deploy_hooks, workflows
from clickstream.sqlmodel import redshift_statements

pytestmark = pytest.mark.cdk
cdk = pytest.importorskip("aws_cdk")
from tests.test_cdk import synth  # noqa: E402


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    assembly, templates = synth(tmp_path_factory.mktemp("wh"))
    return assembly, templates["ClickstreamWarehouse"]


def machines(template) -> dict[str, dict]:
    out = {}
    for res in template.find_resources("AWS::StepFunctions::StateMachine").values():
        name = res["Properties"].get("StateMachineName")
        if name:
            out[name] = res["Properties"]
    return out


def definition(props: dict) -> dict:
    """The ASL as deployed (Fn::Join of literal parts and the streaming role's ARN)."""
    body = props["DefinitionString"]
    if isinstance(body, dict):
        body = "".join(p if isinstance(p, str) else "arn:aws:iam::123456789012:role/streaming"
                       for p in body["Fn::Join"][1])
    return json.loads(body)


def test_setup_and_refresh_workflows_carry_the_model_in_order(warehouse):
    _, template = warehouse
    found = machines(template)
    assert set(found) == {"ClickstreamWarehouse-Setup", "ClickstreamWarehouse-Refresh"}
    for phase in ("setup", "refresh"):
        asl = definition(found[f"ClickstreamWarehouse-{phase.title()}"])
        sent = [s["sql"] for s in asl["States"]["Statements"]["Result"]]
        assert len(sent) == len(redshift_statements(phase, workflows.ModelNames()))
        assert workflows.dangling_transitions(asl) == []
        params = asl["States"]["RunEachInOrder"]["Iterator"]["States"]["ExecuteStatement"]["Parameters"]
        assert params["WorkgroupName"] == "clickstream" and params["Database"] == "dev"
    setup_sql = "\n".join(s["sql"] for s in definition(found["ClickstreamWarehouse-Setup"])["States"]
                          ["Statements"]["Result"])
    assert "IAM_ROLE 'arn:aws:iam::123456789012:role/streaming'" in setup_sql
    assert 'FROM kinesis."clickstream-events"' in setup_sql


def test_workflows_are_logged_traced_and_alarmed(warehouse):
    _, template = warehouse
    for props in machines(template).values():
        assert props["LoggingConfiguration"]["Level"] == "ALL"
        assert props["TracingConfiguration"] == {"Enabled": True}
    alarms = template.find_resources("AWS::CloudWatch::Alarm")
    assert {a["Properties"]["MetricName"] for a in alarms.values()} == {"ExecutionsFailed"}
    assert len(alarms) == 2


def test_refresh_runs_on_the_configured_schedule(warehouse):
    _, template = warehouse
    rules = template.find_resources("AWS::Events::Rule")
    [rule] = rules.values()
    assert rule["Properties"]["ScheduleExpression"] == "rate(5 minutes)"
    assert "Refresh" in json.dumps(rule["Properties"]["Targets"])


def test_streaming_role_is_least_privilege(warehouse):
    _, template = warehouse
    role = next(r for k, r in template.find_resources("AWS::IAM::Role").items() if k.startswith("StreamingIngestion"))
    assert role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "redshift.amazonaws.com"}
    policy = next(p for k, p in template.find_resources("AWS::IAM::Policy").items()
                  if k.startswith("StreamingIngestionRoleDefaultPolicy"))
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    by_action = {json.dumps(s["Action"]): s["Resource"] for s in statements}
    assert by_action['"kinesis:ListStreams"'] == "*"
    stream_actions = next(s for s in statements if "kinesis:GetRecords" in s["Action"])
    assert "Fn::ImportValue" in json.dumps(stream_actions["Resource"])  # the storage stack's stream, exactly
    assert any("kms:Decrypt" in json.dumps(s["Action"]) for s in statements)


def test_setup_runs_on_deploy_through_a_waiting_custom_resource(warehouse):
    assembly, template = warehouse
    custom = template.find_resources("AWS::CloudFormation::CustomResource").values()
    [setup] = [r for r in custom if "SqlDigest" in r["Properties"]]
    assert len(setup["Properties"]["SqlDigest"]) == 64
    [association] = [r for r in custom if "RoleArn" in r["Properties"]]
    assert association["Properties"]["Mode"] == "serverless" and association["Properties"]["Name"] == "clickstream"
    functions = template.find_resources("AWS::Lambda::Function")
    handlers = {f["Properties"]["Handler"] for f in functions.values()}
    assert {"handler.on_event", "handler.is_complete"} <= handlers
    ours = [f for f in functions.values() if f["Properties"]["Handler"].startswith("handler.")]
    for f in ours:
        assert f["Properties"]["TracingConfig"] == {"Mode": "Active"}
        assert "AWSLambdaPowertoolsPythonV3" in json.dumps(f["Properties"]["Layers"])
    from pathlib import Path
    assets = [p for p in Path(assembly.directory).glob("asset.*")
              if (p / "handler.py").exists() and "deploy_hooks" in (p / "handler.py").read_text()]
    assert len(assets) == 2 and all((p / "clickstream" / "deploy_hooks.py").exists() for p in assets)


def test_create_serverless_makes_namespace_with_the_role(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    assembly, templates = synth(tmp_path, createServerless="true")
    lint = subprocess.run([str(Path(sys.executable).with_name("cfn-lint")), "-i", "W3005", "W7001", "--",
                           str(Path(assembly.directory) / "ClickstreamWarehouse.template.json")],
                          capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout  # e.g. the namespace's admin secret attribute exists
    t = templates["ClickstreamWarehouse"]
    [ns] = t.find_resources("AWS::RedshiftServerless::Namespace").values()
    assert "resolve:secretsmanager" in json.dumps(ns["Properties"]["AdminUserPassword"])
    assert "StreamingIngestionRole" in json.dumps(ns["Properties"]["IamRoles"])
    assert t.find_resources("AWS::RedshiftServerless::Workgroup")
    custom = t.find_resources("AWS::CloudFormation::CustomResource").values()
    assert not [r for r in custom if "RoleArn" in r["Properties"]]  # no association needed: created with it
    # the Data API uses the namespace's managed admin secret
    assert "SecretArn" in json.dumps(machines(t)["ClickstreamWarehouse-Setup"]["DefinitionString"])


def test_provisioned_mode_targets_the_cluster(tmp_path):
    _, templates = synth(tmp_path, redshiftMode="provisioned", redshiftName="analytics-cluster",
                         redshiftDbUser="loader")
    t = templates["ClickstreamWarehouse"]
    asl = definition(machines(t)["ClickstreamWarehouse-Refresh"])
    params = asl["States"]["RunEachInOrder"]["Iterator"]["States"]["ExecuteStatement"]["Parameters"]
    assert params["ClusterIdentifier"] == "analytics-cluster" and params["DbUser"] == "loader"
    assert "redshift:GetClusterCredentials" in json.dumps(t.find_resources("AWS::IAM::Policy"))


# -- the custom resources' logic ------------------------------------------------------------
@mock_aws
def test_setup_on_deploy_reports_success_and_failure():
    sfn = boto3.client("stepfunctions", region_name="us-east-1")
    asl = {"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}
    arn = sfn.create_state_machine(name="setup", definition=json.dumps(asl),
                                   roleArn="arn:aws:iam::123456789012:role/x")["stateMachineArn"]
    execution = deploy_hooks.start_setup(sfn, arn, "req/1")
    again = deploy_hooks.start_setup(sfn, arn, "req/1")  # CloudFormation retries the same request
    assert again == execution and execution.endswith(":execution:setup:deploy-req-1")
    stub = Stubber(sfn)
    stub.add_response("describe_execution", {"executionArn": execution, "stateMachineArn": arn, "status": "RUNNING",
                                             "startDate": "2026-01-01T00:00:00Z"})
    stub.add_response("describe_execution", {"executionArn": execution, "stateMachineArn": arn, "status": "FAILED",
                                             "startDate": "2026-01-01T00:00:00Z", "error": "StatementFailed",
                                             "cause": "setup/040_tables.sql#1 failed: permission denied"})
    with stub:
        assert deploy_hooks.setup_finished(sfn, execution) is False
        with pytest.raises(deploy_hooks.SetupFailed, match=r"StatementFailed: setup/040_tables\.sql#1 failed"):
            deploy_hooks.setup_finished(sfn, execution)


def test_associate_role_with_a_provisioned_cluster_adds_and_removes():
    rs = boto3.client("redshift", region_name="us-east-1")  # moto lacks ModifyClusterIamRoles: stub it
    role = "arn:aws:iam::123456789012:role/streaming"
    existing = {"IamRoleArn": "arn:aws:iam::123456789012:role/existing", "ApplyStatus": "in-sync"}
    stub = Stubber(rs)
    stub.add_response("modify_cluster_iam_roles", {"Cluster": {"IamRoles": [existing, {"IamRoleArn": role}]}},
                      {"ClusterIdentifier": "analytics", "AddIamRoles": [role]})
    stub.add_response("modify_cluster_iam_roles", {"Cluster": {"IamRoles": [existing]}},
                      {"ClusterIdentifier": "analytics", "RemoveIamRoles": [role]})
    with stub:
        assert deploy_hooks.associate_role(rs, "provisioned", "analytics", role) == [existing["IamRoleArn"], role]
        assert deploy_hooks.associate_role(rs, "provisioned", "analytics", role, remove=True) == [
            existing["IamRoleArn"]]


def test_associate_role_with_serverless_keeps_existing_roles():
    client = boto3.client("redshift-serverless", region_name="us-east-1")
    role = "arn:aws:iam::123456789012:role/streaming"
    existing = "arn:aws:iam::123456789012:role/existing"
    stub = Stubber(client)
    stub.add_response("get_workgroup", {"workgroup": {"namespaceName": "ns1", "workgroupName": "wg1"}},
                      {"workgroupName": "wg1"})
    stub.add_response("get_namespace", {"namespace": {"namespaceName": "ns1", "iamRoles": [
        f"IamRole(applyStatus=in-sync, iamRoleArn={existing})"]}}, {"namespaceName": "ns1"})
    stub.add_response("update_namespace", {"namespace": {"namespaceName": "ns1"}},
                      {"namespaceName": "ns1", "iamRoles": [existing, role]})
    with stub:
        assert deploy_hooks.associate_role(client, "serverless", "wg1", role) == [existing, role]
    stub.assert_no_pending_responses()
