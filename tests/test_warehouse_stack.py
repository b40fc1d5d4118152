"""ClickstreamWarehouse: the synthesized stack, and its custom-resource logic run against moto."""

from __future__ import annotations

import json
import re

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
    template = templates["ClickstreamWarehouse"]
    functions = template.find_resources("AWS::Lambda::Function")
    _SEGMENT_ID[:] = [k for k, f in functions.items()
                      if f["Properties"]["Handler"] == "handler.handler" and k.startswith("SegmentTables")]
    return assembly, template


def machines(template) -> dict[str, dict]:
    out = {}
    for res in template.find_resources("AWS::StepFunctions::StateMachine").values():
        name = res["Properties"].get("StateMachineName")
        if name:
            out[name] = res["Properties"]
    return out


SEGMENT_FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:segment-tables"


def _resolve(part, partition: str) -> str:
    if isinstance(part, str):
        return part
    if part == {"Ref": "AWS::Partition"}:
        return partition
    get_att = part.get("Fn::GetAtt", ["", ""])
    if get_att[0].startswith("SegmentTables") and get_att[1] == "Arn":  # any synth, not only the fixture's
        return SEGMENT_FUNCTION_ARN
    assert part["Fn::GetAtt"][0].startswith("StreamingIngestionRole"), part
    return "arn:aws:iam::123456789012:role/streaming"


def definition(props: dict, partition: str = "aws") -> dict:
    """The ASL as deployed (Fn::Join of literal parts, the partition, the streaming role's and the
    segment_tables function's ARNs)."""
    body = props["DefinitionString"]
    if isinstance(body, dict):
        body = "".join(_resolve(p, partition) for p in body["Fn::Join"][1])
    return json.loads(body)


def segment_function_id() -> str:
    return _SEGMENT_ID[0]


_SEGMENT_ID: list[str] = []


def custom_resources(template, kind: str) -> list[dict]:
    return list(template.find_resources(kind).values())


def test_setup_and_refresh_workflows_carry_the_model_in_order(warehouse):
    _, template = warehouse
    found = machines(template)
    assert set(found) == {"ClickstreamWarehouse-Setup", "ClickstreamWarehouse-Refresh"}
    for phase in ("setup", "refresh"):
        asl = definition(found[f"ClickstreamWarehouse-{phase.title()}"])
        sent = [sql for item in asl["States"]["Statements"]["Result"] for sql in item["sqls"]]
        assert len(sent) == len(redshift_statements(phase, workflows.ModelNames()))
        assert workflows.dangling_transitions(asl) == []
        iterator = asl["States"]["RunEachInOrder"]["Iterator"]["States"]
        for task in ("ExecuteStatement", "BatchExecuteStatement"):
            params = iterator[task]["Parameters"]
            assert params["WorkgroupName"] == "clickstream" and params["Database"] == "dev"
    setup_sql = "\n".join(sql for item in definition(found["ClickstreamWarehouse-Setup"])["States"]
                          ["Statements"]["Result"] for sql in item["sqls"])
    assert "IAM_ROLE 'arn:aws:iam::123456789012:role/streaming'" in setup_sql
    assert 'FROM kinesis."clickstream-events"' in setup_sql


def test_workflow_arns_use_the_deployment_partition(warehouse):
    """aws-cn / aws-us-gov: every service-integration ARN in the ASL takes AWS::Partition."""
    _, template = warehouse
    for props in machines(template).values():
        parts = props["DefinitionString"]["Fn::Join"][1]
        literal = "".join(p for p in parts if isinstance(p, str))
        assert "arn:aws:" not in literal
        asl = definition(props, partition="aws-us-gov")
        resources = re.findall(r'"Resource": "([^"]+)"', json.dumps(asl))
        sdk = [r for r in resources if r.startswith("arn:aws-us-gov:states:::aws-sdk:")]
        assert len(sdk) == 5 and set(resources) - set(sdk) <= {"arn:aws-us-gov:states:::lambda:invoke"}
    refresh = definition(machines(template)["ClickstreamWarehouse-Refresh"], partition="aws-us-gov")
    assert refresh["States"]["SpreadIntoSegmentTables"]["Resource"] == "arn:aws-us-gov:states:::lambda:invoke"


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
    assert "redshift.amazonaws.com" in role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0][
        "Principal"]["Service"]
    policy = next(p for k, p in template.find_resources("AWS::IAM::Policy").items()
                  if k.startswith("StreamingIngestionRoleDefaultPolicy"))
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    by_action = {json.dumps(s["Action"]): s["Resource"] for s in statements}
    assert by_action['"kinesis:ListStreams"'] == "*"
    stream_actions = next(s for s in statements if "kinesis:GetRecords" in s["Action"])
    # The storage stack's stream, exactly, built from its name (an import would block renames).
    assert stream_actions["Resource"] == {"Fn::Join": ["", [
        "arn:", {"Ref": "AWS::Partition"}, ":kinesis:", {"Ref": "AWS::Region"}, ":", {"Ref": "AWS::AccountId"},
        ":stream/clickstream-events"]]}
    assert any("kms:Decrypt" in json.dumps(s["Action"]) for s in statements)


def test_setup_runs_on_deploy_through_a_waiting_custom_resource(warehouse):
    assembly, template = warehouse
    [setup] = custom_resources(template, "AWS::CloudFormation::CustomResource")
    assert len(setup["Properties"]["StatementsDigest"]) == 64
    [association] = custom_resources(template, "Custom::StreamingRoleAssociation")
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


def test_default_deploy_creates_a_small_capped_serverless_warehouse(warehouse):
    """A fresh account has no workgroup to look up: by default the stack creates one, small and capped,
    in the default VPC (no SubnetIds), and keeps the data as a final snapshot on delete."""
    _, t = warehouse
    [ns] = t.find_resources("AWS::RedshiftServerless::Namespace").values()
    props = ns["Properties"]
    assert props["NamespaceName"] == "clickstream" and props["DbName"] == "dev"
    assert props["ManageAdminPassword"] is True and "AdminUserPassword" not in props
    assert "StreamingIngestionRole" in json.dumps(props["IamRoles"])
    # a final snapshot named after the stack's unique id: a second destroy never collides with the first
    assert props["FinalSnapshotName"] == {"Fn::Join": ["-", ["clickstream-final", {"Fn::Select": [
        2, {"Fn::Split": ["/", {"Ref": "AWS::StackId"}]}]}]]}
    [wg] = t.find_resources("AWS::RedshiftServerless::Workgroup").values()
    assert wg["Properties"] == {"WorkgroupName": "clickstream", "NamespaceName": "clickstream", "BaseCapacity": 8,
                                "MaxCapacity": 32, "PubliclyAccessible": False}
    [limit] = custom_resources(t, "Custom::ServerlessUsageLimit")
    assert {k: limit["Properties"][k] for k in ("Amount", "Period", "BreachAction")} == {
        "Amount": 1500, "Period": "monthly", "BreachAction": "emit-metric"}
    assert limit["Properties"]["ResourceArn"] == {"Fn::GetAtt": ["Workgroup", "Workgroup.WorkgroupArn"]}
    # the role association only waits for in-sync here (the namespace was created with the role)
    [association] = custom_resources(t, "Custom::StreamingRoleAssociation")
    assert association["Properties"]["Associate"] == "false" and association["DependsOn"] == ["Workgroup"]


def test_capacity_network_and_limit_are_configurable(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    assembly, templates = synth(tmp_path, serverlessBaseCapacity="32", serverlessMaxCapacity="64",
                                serverlessUsageLimitRpuHours="100", serverlessUsageLimitPeriod="daily",
                                serverlessUsageLimitAction="deactivate",
                                redshiftSubnetIds='["subnet-0a1b2c3d", "subnet-0c2d3e4f", "subnet-0e3f4a5b"]',
                                redshiftSecurityGroupIds='["sg-0123abcd"]')
    t = templates["ClickstreamWarehouse"]
    [wg] = t.find_resources("AWS::RedshiftServerless::Workgroup").values()
    assert wg["Properties"]["BaseCapacity"] == 32 and wg["Properties"]["MaxCapacity"] == 64
    assert wg["Properties"]["SubnetIds"] == ["subnet-0a1b2c3d", "subnet-0c2d3e4f", "subnet-0e3f4a5b"]
    assert wg["Properties"]["SecurityGroupIds"] == ["sg-0123abcd"]
    [limit] = custom_resources(t, "Custom::ServerlessUsageLimit")
    assert (limit["Properties"]["Amount"], limit["Properties"]["Period"], limit["Properties"]["BreachAction"]) == (
        100, "daily", "deactivate")
    lint = subprocess.run([str(Path(sys.executable).with_name("cfn-lint")), "-i", "W3005", "W7001", "--",
                           str(Path(assembly.directory) / "ClickstreamWarehouse.template.json")],
                          capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout


def test_reader_role_and_dedup_window_reach_the_deployed_sql(tmp_path):
    _, templates = synth(tmp_path, readerRole="bi_read", dedupWindowDays="7")
    t = templates["ClickstreamWarehouse"]
    setup = json.dumps(definition(machines(t)["ClickstreamWarehouse-Setup"]))
    refresh = json.dumps(definition(machines(t)["ClickstreamWarehouse-Refresh"]))
    assert "GRANT USAGE ON SCHEMA clickstream TO ROLE bi_read;" in setup and "clickstream_reader" not in setup
    assert "CALL clickstream.stage_recent_keys(7);" in refresh
    assert t.find_outputs("ReaderRole")["ReaderRole"]["Value"] == "bi_read"


def test_an_existing_workgroup_is_used_when_configured(tmp_path):
    _, templates = synth(tmp_path, createServerless="false", redshiftName="analytics")
    t = templates["ClickstreamWarehouse"]
    assert not t.find_resources("AWS::RedshiftServerless::Namespace")
    assert not t.find_resources("AWS::RedshiftServerless::Workgroup")
    assert not custom_resources(t, "Custom::ServerlessUsageLimit")
    [association] = custom_resources(t, "Custom::StreamingRoleAssociation")
    assert association["Properties"]["Associate"] == "true" and association["Properties"]["Name"] == "analytics"
    policies = json.dumps(t.find_resources("AWS::IAM::Policy"))
    assert "redshift-serverless:UpdateNamespace" in policies and "iam:PassRole" in policies
    params = definition(machines(t)["ClickstreamWarehouse-Setup"])["States"]["RunEachInOrder"]["Iterator"][
        "States"]["ExecuteStatement"]["Parameters"]
    assert params == {"WorkgroupName": "analytics", "Database": "dev", "Sql.$": "$.sqls[0]",
                      "StatementName.$": "$.name"}


def test_placeholder_write_keys_fail_synth_with_the_exact_message(tmp_path):
    import app as app_module
    from clickstream.config import PLACEHOLDER_KEYS_MESSAGE, ConfigError, load_settings
    from tests.test_cdk import CONTEXT

    assert PLACEHOLDER_KEYS_MESSAGE == (
        "writeKeys: cdk.json still holds the example keys (REPLACE-...): set `writeKeys` to your own keys, in "
        "cdk.json or with -c 'writeKeys={\"<your key>\": \"web\"}'")
    assert all(key.startswith("REPLACE-") for key in CONTEXT["writeKeys"])  # what cdk.json ships
    with pytest.raises(SystemExit) as info:
        app_module.build_app(cdk.App(context=dict(CONTEXT), outdir=str(tmp_path)))
    assert str(info.value) == f"clickstream: invalid configuration:\n  - {PLACEHOLDER_KEYS_MESSAGE}"
    with pytest.raises(ConfigError, match="set `writeKeys`"):
        load_settings({"writeKeys": {"REPLACE-with-your-web-write-key": "web", "real-key-123": "server"}})


@pytest.mark.parametrize(("key", "value", "message"), [
    ("serverlessBaseCapacity", "12", "serverlessBaseCapacity: 4, or 8 to 512 in steps of 8 RPUs, got 12"),
    ("serverlessMaxCapacity", "4", "serverlessMaxCapacity: a multiple of 8"),
    ("serverlessUsageLimitAction", "stop", "serverlessUsageLimitAction: log, emit-metric or deactivate"),
    ("redshiftSubnetIds", '["vpc-0123abcd"]', "redshiftSubnetIds: a list of ids like subnet-0123abcd"),
    ("redshiftSubnetIds", '["subnet-0123abcd"]', "redshiftSubnetIds: Redshift Serverless needs at least three"),
    ("dedupWindowDays", "0", "dedupWindowDays: 0 must be a whole number of days, 1 to 365"),
    ("readerRole", "BI-Reader", "readerRole: 'BI-Reader' must be a lower-case SQL identifier"),
    ("streamName", "Clickstream-Events", "streamName: 'Clickstream-Events' must be lower case"),
])
def test_bad_warehouse_settings_are_named(key, value, message):
    from clickstream.config import ConfigError, load_settings

    given = {"writeKeys": {"web-write-key-1": "web"}, key: value}
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(given)


def test_both_workflows_run_as_one_identity_mapped_to_database_roles(warehouse):
    _, t = warehouse
    found = machines(t)
    roles = {json.dumps(props["RoleArn"]) for props in found.values()}
    assert roles == {json.dumps({"Fn::GetAtt": ["WorkflowRole21EC4257", "Arn"]})}
    role = t.find_resources("AWS::IAM::Role")["WorkflowRole21EC4257"]["Properties"]
    assert {"Key": "RedshiftDbRoles", "Value": "sys:dba"} in role["Tags"]
    trusts = role["AssumeRolePolicyDocument"]["Statement"]
    # Step Functions (both workflows) and Lambda (the segment_tables function), for this account only.
    services = {svc for trust in trusts for svc in (lambda v: v if isinstance(v, list) else [v])(
        trust["Principal"]["Service"])}
    assert services == {"states.amazonaws.com", "lambda.amazonaws.com"}
    assert all(trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
               for trust in trusts)
    policy = next(p for k, p in t.find_resources("AWS::IAM::Policy").items() if k.startswith("WorkflowRoleDefault"))
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    data_api = next(s for s in statements if "redshift-data:ExecuteStatement" in s["Action"])
    assert {"redshift-data:BatchExecuteStatement", "redshift-serverless:GetCredentials"} <= set(data_api["Action"])
    assert data_api["Resource"] == {"Fn::GetAtt": ["Workgroup", "Workgroup.WorkgroupArn"]}  # this workgroup only
    assert not any("secretsmanager" in json.dumps(s["Action"]) for s in statements)  # no shared admin secret
    outputs = t.find_outputs("*")
    assert outputs["DatabaseUser"]["Value"] == {"Fn::Join": ["", ["IAMR:", {"Ref": "WorkflowRole21EC4257"}]]}
    assert outputs["ReaderRole"]["Value"] == "clickstream_reader"
    setup_sql = "\n".join(s for item in definition(found["ClickstreamWarehouse-Setup"])["States"]["Statements"]
                          ["Result"] for s in item["sqls"])
    assert "GRANT SELECT ON ALL TABLES IN SCHEMA clickstream TO ROLE clickstream_reader;" in setup_sql


def test_streaming_role_trusts_both_redshift_services_for_this_account(warehouse):
    _, t = warehouse
    role = next(r for k, r in t.find_resources("AWS::IAM::Role").items() if k.startswith("StreamingIngestion"))
    [trust] = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert sorted(trust["Principal"]["Service"]) == ["redshift-serverless.amazonaws.com", "redshift.amazonaws.com"]
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}


def test_setup_waits_for_the_role_to_be_in_sync(warehouse):
    assembly, t = warehouse
    [setup] = custom_resources(t, "AWS::CloudFormation::CustomResource")
    assert setup["DependsOn"] == ["StreamingRoleAssociation"]
    ours = [r for r in t.find_resources("AWS::StepFunctions::StateMachine").values()
            if r["Properties"].get("StateMachineName")]
    assert len(ours) == 2 and all("StreamingRoleAssociation" in r["DependsOn"] for r in ours)  # nor refresh
    [schedule] = t.find_resources("AWS::Events::Rule").values()
    assert "WarehouseSetup" in schedule["DependsOn"]  # the schedule starts once setup has succeeded
    functions = t.find_resources("AWS::Lambda::Function")
    framework = json.dumps([f for k, f in functions.items()
                            if k.startswith("AssociateRoleProviderframeworkisComplete")])
    assert "AssociateRoleIsComplete" in framework  # the provider polls our isComplete handler
    from pathlib import Path
    assets = [p for p in Path(assembly.directory).glob("asset.*")
              if (p / "handler.py").exists() and "role_apply_status" in (p / "handler.py").read_text()]
    assert assets and all("def role_apply_status" in (p / "clickstream" / "deploy_hooks.py").read_text()
                          for p in assets)


def test_setup_reruns_when_any_of_its_inputs_changes(tmp_path):
    def setup_props(**overrides) -> dict:
        _, templates = synth(tmp_path / str(len(list(tmp_path.iterdir()))), **overrides)
        [setup] = custom_resources(templates["ClickstreamWarehouse"], "AWS::CloudFormation::CustomResource")
        return {k: v for k, v in setup["Properties"].items() if k != "ServiceToken"}

    base = setup_props()
    assert base["StreamingRoleArn"] == {"Fn::GetAtt": ["StreamingIngestionRole9DCCBC57", "Arn"]}
    assert base["WorkflowRoleArn"] == {"Fn::GetAtt": ["WorkflowRole21EC4257", "Arn"]}
    assert base["Connection"] == {"WorkgroupName": "clickstream", "Database": "dev"}
    secret = "arn:aws:secretsmanager:us-east-1:123456789012:secret:rs-AbCdEf"
    for overrides in ({"redshiftDatabase": "analytics"}, {"redshiftName": "other-wg"},
                      {"redshiftSecretArn": secret}, {"clickstreamSchema": "events_v2"}):
        changed = setup_props(**overrides)
        assert changed != base, overrides
    assert setup_props(clickstreamSchema="events_v2")["StatementsDigest"] != base["StatementsDigest"]
    assert setup_props(redshiftSecretArn=secret)["Connection"]["SecretArn"] == secret


def test_provisioned_mode_targets_the_cluster(tmp_path):
    """createServerless (default true) is about Serverless only: a provisioned cluster needs no
    other flag, and nothing Serverless is created for it."""
    _, templates = synth(tmp_path, redshiftMode="provisioned", redshiftName="analytics-cluster",
                         redshiftDbUser="loader")
    t = templates["ClickstreamWarehouse"]
    assert not t.find_resources("AWS::RedshiftServerless::Namespace")
    assert not t.find_resources("AWS::RedshiftServerless::Workgroup")
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


def test_role_apply_status_is_polled_until_in_sync():
    client = boto3.client("redshift-serverless", region_name="us-east-1")
    role = "arn:aws-cn:iam::123456789012:role/streaming"
    stub = Stubber(client)
    for status in ("adding", "in-sync"):
        stub.add_response("get_workgroup", {"workgroup": {"namespaceName": "ns1", "workgroupName": "wg1"}},
                          {"workgroupName": "wg1"})
        stub.add_response("get_namespace", {"namespace": {"namespaceName": "ns1", "iamRoles": [
            "IamRole(applyStatus=in-sync, iamRoleArn=arn:aws-cn:iam::123456789012:role/other)",
            f"IamRole(applyStatus={status}, iamRoleArn={role})"]}}, {"namespaceName": "ns1"})
    with stub:
        assert deploy_hooks.role_in_sync(client, "serverless", "wg1", role) is False
        assert deploy_hooks.role_in_sync(client, "serverless", "wg1", role) is True
    rs = boto3.client("redshift", region_name="us-east-1")
    stub = Stubber(rs)
    adding = {"IamRoleArn": role, "ApplyStatus": "adding"}
    stub.add_response("describe_clusters", {"Clusters": [{"IamRoles": [adding]}]}, {"ClusterIdentifier": "analytics"})
    stub.add_response("describe_clusters", {"Clusters": [{"IamRoles": []}]}, {"ClusterIdentifier": "analytics"})
    with stub:
        assert deploy_hooks.role_apply_status(rs, "provisioned", "analytics", role) == "adding"
        assert deploy_hooks.role_apply_status(rs, "provisioned", "analytics", role) is None


def test_usage_limit_is_created_updated_replaced_and_deleted():
    client = boto3.client("redshift-serverless", region_name="us-east-1")
    wg = "arn:aws:redshift-serverless:us-east-1:123456789012:workgroup/0a1b2c3d-0000-0000-0000-000000000000"
    props = {"ResourceArn": wg, "Amount": "1500", "Period": "monthly", "BreachAction": "emit-metric"}
    limit = {"usageLimitId": "ul-1"}
    stub = Stubber(client)
    stub.add_response("create_usage_limit", {"usageLimit": limit},
                      {"resourceArn": wg, "usageType": "serverless-compute", "amount": 1500, "period": "monthly",
                       "breachAction": "emit-metric"})
    stub.add_response("update_usage_limit", {"usageLimit": limit},
                      {"usageLimitId": "ul-1", "amount": 100, "breachAction": "deactivate"})
    stub.add_response("create_usage_limit", {"usageLimit": {"usageLimitId": "ul-2"}},
                      {"resourceArn": wg, "usageType": "serverless-compute", "amount": 100, "period": "daily",
                       "breachAction": "deactivate"})
    stub.add_response("delete_usage_limit", {"usageLimit": limit}, {"usageLimitId": "ul-1"})
    stub.add_client_error("delete_usage_limit", "ResourceNotFoundException", expected_params={"usageLimitId": "ul-2"})
    with stub:
        assert deploy_hooks.apply_usage_limit(client, "Create", props, None) == "ul-1"
        smaller = {**props, "Amount": "100", "BreachAction": "deactivate", "_Old": props}
        assert deploy_hooks.apply_usage_limit(client, "Update", smaller, "ul-1") == "ul-1"
        # a new period cannot be updated: a new limit (CloudFormation then deletes the old id)
        daily = {**smaller, "Period": "daily", "_Old": smaller}
        assert deploy_hooks.apply_usage_limit(client, "Update", daily, "ul-1") == "ul-2"
        assert deploy_hooks.apply_usage_limit(client, "Delete", props, "ul-1") == "ul-1"
        assert deploy_hooks.apply_usage_limit(client, "Delete", props, "ul-2") == "ul-2"  # already gone: fine
    stub.assert_no_pending_responses()


def test_deploy_docs_are_true_to_the_configuration():
    """README's deploy section stays two commands and points to docs/deploy.md, which names every
    warehouse setting with its default, the placeholder-key error and the identity outputs."""
    from pathlib import Path

    from clickstream.config import DEFAULTS, PLACEHOLDER_KEYS_MESSAGE

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    section = readme[readme.index("## Deploy to AWS"):readme.index("### Configuration")]
    [commands] = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert [line.split("#")[0].split()[:2] for line in commands.strip().splitlines()] == [
        ["make", "bootstrap"], ["make", "deploy"]]
    assert "npx cdk deploy --all" in section
    assert "docs/deploy.md" in section
    deploy = (root / "docs" / "deploy.md").read_text()
    for key in ("createServerless", "serverlessBaseCapacity", "serverlessMaxCapacity", "serverlessUsageLimitRpuHours",
                "serverlessUsageLimitPeriod", "serverlessUsageLimitAction", "redshiftSubnetIds",
                "redshiftSecurityGroupIds", "redshiftDbRoles"):
        default = DEFAULTS[key]
        shown = json.dumps(default) if isinstance(default, list | bool) else str(default)
        row = next(line for line in deploy.splitlines() if line.startswith("|") and f"`{key}`" in line)
        assert f"`{shown}`" in row, (key, row)
    assert PLACEHOLDER_KEYS_MESSAGE.split(": set")[0] in deploy
    for output in ("DatabaseUser", "WorkflowRoleArn", "ReaderRole", "StreamingRoleArn"):
        assert f"`{output}`" in deploy


ASSET_SCRIPT = r'''
import json, sys, types
sys.path.insert(0, sys.argv[1])
import boto3
from botocore.stub import Stubber
import handler
import clickstream.deploy_hooks as hooks
assert handler.__file__.startswith(sys.argv[1]) and hooks.__file__.startswith(sys.argv[1])
role = "arn:aws:iam::123456789012:role/streaming"
client = boto3.client("redshift-serverless", region_name="us-east-1")
stub = Stubber(client)
for status in ("adding", "in-sync"):
    stub.add_response("get_workgroup", {"workgroup": {"namespaceName": "ns1", "workgroupName": "clickstream"}})
    stub.add_response("get_namespace", {"namespace": {"namespaceName": "ns1", "iamRoles": [
        f"IamRole(applyStatus={status}, iamRoleArn={role})"]}})
stub.add_response("create_usage_limit", {"usageLimit": {"usageLimitId": "ul-9"}},
                  {"resourceArn": "arn:wg", "usageType": "serverless-compute", "amount": 1500, "period": "monthly",
                   "breachAction": "emit-metric"})
stub.activate()
handler._client = lambda mode: client
ctx = types.SimpleNamespace(function_name="f", memory_limit_in_mb=128, aws_request_id="r",
                            invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:f")
association = {"RequestType": "Create", "RequestId": "r1", "ResourceType": "Custom::StreamingRoleAssociation",
               "ResourceProperties": {"Mode": "serverless", "Name": "clickstream", "RoleArn": role,
                                      "Associate": "false"}}
limit = {"RequestType": "Create", "RequestId": "r2", "ResourceType": "Custom::ServerlessUsageLimit",
         "ResourceProperties": {"ResourceArn": "arn:wg", "Amount": "1500", "Period": "monthly",
                                "BreachAction": "emit-metric"}}
out = [handler.on_event(association, ctx), handler.is_complete(association, ctx), handler.is_complete(association, ctx),
       handler.on_event(limit, ctx), handler.is_complete(limit, ctx)]
stub.assert_no_pending_responses()
print(json.dumps(out))
'''


def test_built_redshift_hooks_asset_waits_for_in_sync_and_sets_the_usage_limit(warehouse, tmp_path):
    """The asset CloudFormation runs, imported on its own: the association completes only once the role
    is in-sync (Associate=false: nothing is modified), and the usage limit is created."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    assembly, _ = warehouse
    [asset] = [p for p in Path(assembly.directory).glob("asset.*")
               if (p / "handler.py").exists() and "role_apply_status" in (p / "handler.py").read_text()]
    script = tmp_path / "run_asset.py"
    script.write_text(ASSET_SCRIPT)
    env = {**os.environ, "POWERTOOLS_TRACE_DISABLED": "1", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    out = subprocess.run([sys.executable, str(script), str(asset)], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert results == [{"PhysicalResourceId": "serverless:clickstream:arn:aws:iam::123456789012:role/streaming"},
                       {"IsComplete": False}, {"IsComplete": True}, {"PhysicalResourceId": "ul-9"},
                       {"IsComplete": True}]


@pytest.mark.parametrize("phase", ["setup", "refresh"])
def test_the_deployed_definitions_run_in_moto(warehouse, monkeypatch, phase):
    """The ASL exactly as synthesized (partition resolved to aws) runs every statement of the model,
    the setup's grants last, transaction statements batched; the refresh then invokes the
    segment_tables function (setup never does)."""
    from tests.test_workflows import FakeRedshift, FakeSegmentTables, executing_stepfunctions, expected_calls, run

    _, t = warehouse
    with executing_stepfunctions(monkeypatch) as sfn:
        redshift = FakeRedshift(monkeypatch)
        segment = FakeSegmentTables(monkeypatch, redshift)
        result = run(sfn, definition(machines(t)[f"ClickstreamWarehouse-{phase.title()}"]))
    assert result["status"] == "SUCCEEDED", result
    names = workflows.ModelNames(iam_role="arn:aws:iam::123456789012:role/streaming")
    assert redshift.calls == expected_calls(redshift_statements(phase, names))
    if phase == "setup":
        assert redshift.executed[-1].endswith("GRANT SELECT ON TABLES TO ROLE clickstream_reader;")
        assert segment.invocations == []  # setup never spreads rows
    else:  # the refresh's last step, after every statement: the deployed function, once
        assert segment.invocations == [{"FunctionName": SEGMENT_FUNCTION_ARN,
                                        "Payload": {"execution": result["executionArn"]},
                                        "afterCalls": len(redshift.calls)}]
        assert set(json.loads(result["output"])["segmentTables"]) == {"rows", "tablesCreated", "columnsAdded",
                                                                       "deferred"}


def test_deploy_docs_idle_cost_is_what_the_cost_model_says():
    from pathlib import Path

    from clickstream import cost

    deploy = (Path(__file__).resolve().parents[1] / "docs" / "deploy.md").read_text()
    rows = ((5, "| every 5 minutes (default) |"), (60, "| hourly (`refreshSchedule=rate(1 hour)`) |"))
    for minutes, row_start in rows:
        u = cost.Usage(events_per_day=1, refresh_minutes=minutes)
        e = cost.estimate(u)
        row = next(line for line in deploy.splitlines() if line.startswith(row_start))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == f"${e.redshift_serverless:,.2f} ({round(cost.rpu_hours(u)):,} RPU-hours)"
        assert cells[2:5] == [f"${e.step_functions:,.2f}", f"${e.segment_tables_lambda:,.2f}", f"${e.kinesis:,.2f}"]
        assert cells[5] == f"~${round(e.total):,}/month"


def test_segment_tables_function_runs_as_the_workflow_identity_with_its_target(warehouse):
    """The function's execution role is the workflow role (one database user), it has the Data API
    target and the model's names in its environment, 15 minutes, and only the refresh invokes it."""
    _, t = warehouse
    fid = segment_function_id()
    props = t.find_resources("AWS::Lambda::Function")[fid]["Properties"]
    assert props["Role"] == {"Fn::GetAtt": ["WorkflowRole21EC4257", "Arn"]}
    assert props["Timeout"] == 900 and props["Runtime"] == "python3.13"
    assert props["MemorySize"] == workflows.SEGMENT_TABLES_MEMORY_MB  # what the cost model counts
    assert props["Environment"]["Variables"] == {
        "POWERTOOLS_SERVICE_NAME": "clickstream-segment_tables", "DATABASE": "dev", "WORKGROUP_NAME": "clickstream",
        "SCHEMA": "clickstream", "KINESIS_SCHEMA": "kinesis", "READER_ROLE": "clickstream_reader"}
    policies = t.find_resources("AWS::IAM::Policy")
    default = next(p for k, p in policies.items() if k.startswith("WorkflowRoleDefault"))
    statements = default["Properties"]["PolicyDocument"]["Statement"]
    describe = next(s for s in statements if "redshift-data:DescribeStatement" in s["Action"])
    assert "redshift-data:GetStatementResult" in describe["Action"]  # the function reads query results
    logs = [s for s in statements if "logs:PutLogEvents" in s["Action"]]
    assert logs and all("SegmentTablesLogs" in json.dumps(s["Resource"]) for s in logs)  # its own log group only
    invoke = next(p for k, p in policies.items() if k.startswith("WorkflowInvokesSegmentTables"))["Properties"]
    assert invoke["PolicyDocument"]["Statement"] == [{"Action": "lambda:InvokeFunction", "Effect": "Allow",
                                                      "Resource": {"Fn::GetAtt": [fid, "Arn"]}}]
    assert invoke["Roles"] == [{"Ref": "WorkflowRole21EC4257"}]
    found = machines(t)
    assert workflows.SEGMENT_TABLES_STATE not in definition(found["ClickstreamWarehouse-Setup"])["States"]
    task = definition(found["ClickstreamWarehouse-Refresh"])["States"][workflows.SEGMENT_TABLES_STATE]
    assert task["Parameters"]["FunctionName"] == SEGMENT_FUNCTION_ARN
    refresh_id = next(k for k, r in t.find_resources("AWS::StepFunctions::StateMachine").items()
                      if r["Properties"].get("StateMachineName") == "ClickstreamWarehouse-Refresh")
    depends = t.find_resources("AWS::StepFunctions::StateMachine")[refresh_id].get("DependsOn", [])
    assert any(d.startswith("WorkflowInvokesSegmentTables") for d in depends)  # may invoke from its first run
    # an upgrade changes the refresh only after setup ran again (it may call what setup creates,
    # like assert_case_sensitive_paths)
    assert "WarehouseSetup" in depends


def test_built_segment_tables_asset_imports_and_runs_in_lambda_conditions(warehouse, tmp_path):
    """The asset CDK built, in an isolated interpreter with only the standard library, boto3 and
    Powertools (no sqlglot, no duckdb): it imports, and finds its Data API target in the environment
    the template gives it."""
    from pathlib import Path

    from tests.test_replay import lambda_site, run_in_lambda_like_python

    assembly, t = warehouse
    [asset] = [p for p in Path(assembly.directory).glob("asset.*")
               if (p / "handler.py").exists() and "RedshiftRun" in (p / "handler.py").read_text()]
    assert sorted(p.name for p in (asset / "clickstream").glob("*.py")) == [
        "__init__.py", "segment_schema.py", "segment_tables.py"]
    site = lambda_site(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "AWS_DEFAULT_REGION": "us-east-1", "POWERTOOLS_TRACE_DISABLED": "1"}
    assert run_in_lambda_like_python(asset, site, "", {}, env) == "imported"
    probe = tmp_path / "probe.py"
    probe.write_text("import importlib.util, sys\nsys.path[:0] = sys.argv[1:3]\n"
                     "for blocked in ('sqlglot', 'duckdb'):\n"
                     "    assert importlib.util.find_spec(blocked) is None, blocked\n"
                     "import handler\nprint(handler.target_from_env())\n")
    variables = t.find_resources("AWS::Lambda::Function")[segment_function_id()]["Properties"]["Environment"][
        "Variables"]
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-I", "-S", str(probe), str(asset), str(site)], capture_output=True,
                         text=True, env={**env, **variables}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "{'Database': 'dev', 'WorkgroupName': 'clickstream'}"
