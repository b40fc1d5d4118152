"""ClickstreamWarehouse: Redshift streaming ingestion set up and refreshed by Step Functions.

By default the stack creates a Redshift Serverless namespace and workgroup (small base capacity,
capped maximum, an RPU-hour usage limit); ``createServerless=false`` uses an existing workgroup or
cluster named ``redshiftName`` instead. The setup and refresh workflows run the statements of
``sql/redshift`` through the Redshift Data API (``statemachines/run-statements.asl.json``, filled
by ``clickstream.workflows``) as ONE IAM role, so one database user owns everything setup creates
and may refresh the materialized view (only its owner can). Setup runs on every deploy whose inputs
changed (a custom resource waits for it and fails the deploy with its error), after the streaming
role's association is in-sync; refresh runs on an EventBridge schedule. docs/deploy.md explains it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_redshiftserverless as rss
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import custom_resources as cr
from constructs import Construct

from clickstream import segment_tables, workflows
from clickstream.config import Settings
from stacks.functions import python_function
from stacks.storage import StorageStack

# The database role whose tag maps the workflows' IAM role to database roles on Serverless.
# https://docs.aws.amazon.com/redshift/latest/mgmt/redshift-iam-access-federated-db-roles.html
DB_ROLES_TAG = "RedshiftDbRoles"
# Stands in for the streaming role's ARN in the setup digest (the real ARN is its own property).
ROLE_STAND_IN = "${StreamingRoleArn}"
# Data API connection fields -> the segment_tables function's environment (functions/segment_tables).


def _service(name: str) -> iam.ServicePrincipal:
    """A service principal that may act for this account only (confused-deputy guard:
    https://docs.aws.amazon.com/IAM/latest/UserGuide/confused-deputy.html)."""
    return iam.ServicePrincipal(name, conditions={"StringEquals": {"aws:SourceAccount": cdk.Aws.ACCOUNT_ID}})


class WarehouseStack(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, storage: StorageStack,
                 alarm_topic: sns.ITopic, **kwargs) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.settings = settings

        # The role Redshift assumes to read the stream (streaming ingestion), least privilege. Provisioned
        # clusters assume it as redshift.amazonaws.com, Serverless as redshift-serverless.amazonaws.com.
        # https://docs.aws.amazon.com/redshift/latest/dg/materialized-view-streaming-ingestion-getting-started.html
        self.streaming_role = iam.Role(
            self, "StreamingIngestionRole", assumed_by=_service("redshift.amazonaws.com"),
            description="Redshift streaming ingestion from the clickstream stream")
        assert self.streaming_role.assume_role_policy is not None  # a Role always has one
        self.streaming_role.assume_role_policy.add_statements(iam.PolicyStatement(
            actions=["sts:AssumeRole"], principals=[_service("redshift-serverless.amazonaws.com")]))
        self.streaming_role.add_to_policy(iam.PolicyStatement(
            actions=["kinesis:DescribeStreamSummary", "kinesis:GetShardIterator", "kinesis:GetRecords",
                     "kinesis:DescribeStream", "kinesis:ListShards"],
            resources=[storage.stream_ref(self).stream_arn]))  # by name: renaming the stream stays one deploy
        self.streaming_role.add_to_policy(iam.PolicyStatement(actions=["kinesis:ListStreams"], resources=["*"]))
        storage.key.grant_decrypt(self.streaming_role)

        # The one identity both workflows run as: it owns what setup creates and refreshes the view.
        self.workflow_role = iam.Role(
            self, "WorkflowRole", assumed_by=_service("states.amazonaws.com"),
            description="Clickstream warehouse setup and refresh: the database identity of both workflows")
        self.secret_arn = settings.redshift_secret_arn
        if settings.redshift_mode == "serverless" and not self.secret_arn:
            # The Data API signs in as IAMR:<role name>, a member of these database roles.
            cdk.Tags.of(self.workflow_role).add(DB_ROLES_TAG, settings.redshift_db_roles)

        self.redshift_hooks = self._redshift_hooks(settings)
        self.workgroup: rss.CfnWorkgroup | None = None
        if settings.creates_serverless:
            self.workgroup = self._create_serverless(settings)
        self.association = self._associate_role(settings)

        self.names = dataclasses.replace(settings.model_names, iam_role=self.streaming_role.role_arn)
        self.connection = workflows.connection_parameters(
            settings.redshift_mode, settings.redshift_name, settings.redshift_database,
            secret_arn=self.secret_arn, db_user=settings.redshift_db_user)
        self._grant_database_access()
        self.segment_tables = self._segment_tables_function()

        self.setup = self._workflow("Setup", workflows.render("setup", self.names, self.connection,
                                                              partition=cdk.Aws.PARTITION))
        self.refresh = self._workflow("Refresh", workflows.render(
            "refresh", self.names, self.connection, partition=cdk.Aws.PARTITION,
            segment_tables_function=self.segment_tables.function_arn))
        self.refresh.node.add_dependency(self.invoke_segment_tables)

        self.schedule = events.Rule(self, "RefreshSchedule", schedule=events.Schedule.expression(
            settings.refresh_schedule), description="Refresh the streaming view and merge new events")
        self.schedule.add_target(targets.SfnStateMachine(self.refresh))

        self._run_setup_on_deploy()
        # No scheduled refresh before the first setup succeeded (it would fail on missing tables).
        self.schedule.node.add_dependency(self.setup_resource)
        # On an upgrade, the refresh's new statements may call what the new setup creates (e.g. a
        # procedure): CloudFormation updates the refresh workflow only after setup has run again.
        self.refresh.node.add_dependency(self.setup_resource)
        for name, machine in (("Setup", self.setup), ("Refresh", self.refresh)):
            alarm = cw.Alarm(self, f"{name}Failed", metric=machine.metric_failed(period=cdk.Duration.minutes(5)),
                             threshold=0, comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                             evaluation_periods=1, treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                             alarm_description=f"Warehouse {name.lower()} workflow failed (see its execution)")
            alarm.add_alarm_action(cw_actions.SnsAction(alarm_topic))

        cdk.CfnOutput(self, "SetupStateMachine", value=self.setup.state_machine_arn,
                      description='start with input {} (optional: {"pollSeconds": 5})')
        cdk.CfnOutput(self, "RefreshStateMachine", value=self.refresh.state_machine_arn)
        cdk.CfnOutput(self, "StreamingRoleArn", value=self.streaming_role.role_arn)
        cdk.CfnOutput(self, "WorkflowRoleArn", value=self.workflow_role.role_arn,
                      description="the IAM role both workflows run as (its database identity)")
        if settings.redshift_mode == "serverless" and not self.secret_arn:
            cdk.CfnOutput(self, "DatabaseUser", value=cdk.Fn.join("", ["IAMR:", self.workflow_role.role_name]),
                          description="the database user the workflows run as; it owns the clickstream schema")
        cdk.CfnOutput(self, "ReaderRole", value=self.names.reader_role,
                      description="database role with read access to the clickstream schema (GRANT it to BI users)")
        self._acknowledge()

    # -- Redshift ---------------------------------------------------------------------------
    def _create_serverless(self, settings: Settings) -> rss.CfnWorkgroup:
        """A namespace and a small workgroup with a spending cap.

        The namespace keeps its data on ``cdk destroy`` as a final snapshot named after this stack's
        id (unique per stack, so a second destroy never collides with the first one's snapshot).
        With no ``redshiftSubnetIds`` the workgroup gets no SubnetIds and Redshift Serverless places
        it in the account's default VPC, as the console's default settings do
        (https://docs.aws.amazon.com/redshift/latest/gsg/new-user-serverless.html); nothing is looked up at synth.
        """
        stack_uuid = cdk.Fn.select(2, cdk.Fn.split("/", cdk.Aws.STACK_ID))
        namespace = rss.CfnNamespace(
            self, "Namespace", namespace_name=settings.redshift_name, db_name=settings.redshift_database,
            # An admin user for people, its password generated and kept by Redshift in Secrets Manager; the
            # workflows never use it (they sign in with their IAM role).
            admin_username="admin", manage_admin_password=True,
            iam_roles=[self.streaming_role.role_arn], default_iam_role_arn=self.streaming_role.role_arn,
            final_snapshot_name=cdk.Fn.join("-", [settings.redshift_name, "final", stack_uuid]))
        namespace.apply_removal_policy(cdk.RemovalPolicy.DESTROY)  # after the final snapshot above
        workgroup = rss.CfnWorkgroup(
            self, "Workgroup", workgroup_name=settings.redshift_name, namespace_name=settings.redshift_name,
            base_capacity=settings.serverless_base_capacity,
            max_capacity=settings.serverless_max_capacity or None,
            subnet_ids=list(settings.redshift_subnet_ids) or None,
            security_group_ids=list(settings.redshift_security_group_ids) or None,
            publicly_accessible=False)
        workgroup.add_dependency(namespace)
        if settings.serverless_usage_limit_rpu_hours:
            # CloudFormation has no usage-limit type: a custom resource calls CreateUsageLimit.
            # https://docs.aws.amazon.com/redshift-serverless/latest/APIReference/API_CreateUsageLimit.html
            limit = cdk.CustomResource(
                self, "UsageLimit", service_token=self.redshift_hooks.service_token,
                resource_type="Custom::ServerlessUsageLimit",
                properties={"ResourceArn": workgroup.attr_workgroup_workgroup_arn,
                            "Amount": settings.serverless_usage_limit_rpu_hours,
                            "Period": settings.serverless_usage_limit_period,
                            "BreachAction": settings.serverless_usage_limit_action})
            limit.node.add_dependency(workgroup)
        cdk.CfnOutput(self, "WorkgroupName", value=settings.redshift_name)
        return workgroup

    def _redshift_hooks(self, settings: Settings) -> cr.Provider:
        """The provider of the Redshift-side custom resources: the role association (which completes
        only once the role is in-sync) and the usage limit."""
        handlers = {kind: python_function(self, f"AssociateRole{suffix}", name="associate_role", handler=kind,
                                          modules=["deploy_hooks"])
                    for kind, suffix in (("on_event", ""), ("is_complete", "IsComplete"))}
        if settings.redshift_mode == "provisioned":
            handlers["on_event"].add_to_role_policy(iam.PolicyStatement(
                actions=["redshift:ModifyClusterIamRoles"], resources=[self._cluster_arn()]))
            handlers["is_complete"].add_to_role_policy(iam.PolicyStatement(
                actions=["redshift:DescribeClusters"], resources=[self._cluster_arn()]))
        else:
            read = ["redshift-serverless:GetWorkgroup", "redshift-serverless:GetNamespace"]
            resources = [self.format_arn(service="redshift-serverless", resource="workgroup", resource_name="*"),
                         self.format_arn(service="redshift-serverless", resource="namespace", resource_name="*")]
            handlers["is_complete"].add_to_role_policy(iam.PolicyStatement(actions=read, resources=resources))
            handlers["on_event"].add_to_role_policy(iam.PolicyStatement(
                actions=[*read, "redshift-serverless:UpdateNamespace"], resources=resources))
        if settings.creates_serverless and settings.serverless_usage_limit_rpu_hours:
            handlers["on_event"].add_to_role_policy(iam.PolicyStatement(
                actions=["redshift-serverless:CreateUsageLimit", "redshift-serverless:UpdateUsageLimit",
                         "redshift-serverless:DeleteUsageLimit"],
                resources=[self.format_arn(service="redshift-serverless", resource="workgroup", resource_name="*"),
                           self.format_arn(service="redshift-serverless", resource="usagelimit",
                                           resource_name="*")]))
        handlers["on_event"].add_to_role_policy(iam.PolicyStatement(actions=["iam:PassRole"],
                                                                    resources=[self.streaming_role.role_arn]))
        provider = cr.Provider(self, "AssociateRoleProvider", on_event_handler=handlers["on_event"],
                               is_complete_handler=handlers["is_complete"], query_interval=cdk.Duration.seconds(10),
                               total_timeout=cdk.Duration.minutes(30),
                               log_group=self._provider_logs("AssociateRoleProviderLogs"))
        self._acknowledge_waiter(provider)
        return provider

    def _associate_role(self, settings: Settings) -> cdk.CustomResource:
        """Associate the streaming role with an existing Redshift (or only wait, for a created one);
        complete when its apply status is in-sync. Setup and the workflows depend on this."""
        association = cdk.CustomResource(
            self, "StreamingRoleAssociation", service_token=self.redshift_hooks.service_token,
            resource_type="Custom::StreamingRoleAssociation",
            properties={"Mode": settings.redshift_mode, "Name": settings.redshift_name,
                        "RoleArn": self.streaming_role.role_arn,
                        "Associate": "false" if settings.creates_serverless else "true"})
        if self.workgroup is not None:
            association.node.add_dependency(self.workgroup)
        return association

    def _cluster_arn(self) -> str:
        return self.format_arn(service="redshift", resource="cluster", resource_name=self.settings.redshift_name,
                               arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME)

    def _provider_logs(self, construct_id: str) -> logs.LogGroup:
        return logs.LogGroup(self, construct_id, retention=logs.RetentionDays.ONE_MONTH,
                             removal_policy=cdk.RemovalPolicy.DESTROY)

    def _grant_database_access(self) -> None:
        """What the one workflow identity may call: the Data API on this target, and sign-in."""
        role, target = self.workflow_role, self._data_api_target_arn()
        role.add_to_policy(iam.PolicyStatement(
            actions=["redshift-data:ExecuteStatement", "redshift-data:BatchExecuteStatement"], resources=[target]))
        # Describe and results are authorised by statement ownership; no resource-level permissions.
        role.add_to_policy(iam.PolicyStatement(
            actions=["redshift-data:DescribeStatement", "redshift-data:GetStatementResult"], resources=["*"]))
        # The overlap guard lists the machines' own executions (their ARNs by name: no self-reference).
        role.add_to_policy(iam.PolicyStatement(actions=["states:ListExecutions"], resources=[
            self.format_arn(service="states", resource="stateMachine", resource_name=self._machine_name(name),
                            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME) for name in ("Setup", "Refresh")]))
        if self.secret_arn:
            role.add_to_policy(iam.PolicyStatement(actions=["secretsmanager:GetSecretValue"],
                                                   resources=[self.secret_arn]))
        elif self.settings.redshift_mode == "serverless":
            role.add_to_policy(iam.PolicyStatement(actions=["redshift-serverless:GetCredentials"],
                                                   resources=[target]))
        else:
            role.add_to_policy(iam.PolicyStatement(actions=["redshift:GetClusterCredentials"], resources=[
                self.format_arn(service="redshift", resource="dbuser",
                                resource_name=f"{self.settings.redshift_name}/{self.settings.redshift_db_user}",
                                arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME),
                self.format_arn(service="redshift", resource="dbname",
                                resource_name=f"{self.settings.redshift_name}/{self.settings.redshift_database}",
                                arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME)]))

    def _segment_tables_function(self) -> lambda_.Function:
        """The refresh's last step: Segment's per-source tables (docs/warehouse-segment.md).

        Its execution role IS the workflow role, so its Data API calls map to the same database user
        as the workflows' (on Serverless ``IAMR:<role name>``: "the database user name is derived from
        the IAM identity", https://docs.aws.amazon.com/redshift/latest/mgmt/data-api.html): it owns
        the tables it creates and reads what setup created. Lambda assumes the role for this account
        only (aws:SourceAccount in the trust policy:
        https://docs.aws.amazon.com/lambda/latest/dg/permissions-managed-policies.html).
        """
        assert self.workflow_role.assume_role_policy is not None  # a Role always has one
        self.workflow_role.assume_role_policy.add_statements(iam.PolicyStatement(
            actions=["sts:AssumeRole"], principals=[_service("lambda.amazonaws.com")]))
        names = self.names
        env = segment_tables.lambda_environment(self.connection, names)
        function = python_function(
            self, "SegmentTables", name="segment_tables", handler="handler",
            modules=["segment_schema", "segment_tables"], environment=env, role=self.workflow_role,
            timeout=cdk.Duration.seconds(workflows.SEGMENT_TABLES_FUNCTION_TIMEOUT_SECONDS),
            memory_size=workflows.SEGMENT_TABLES_MEMORY_MB)
        # Its own policy, not the role's default one: the function depends on that (no cycle).
        self.invoke_segment_tables = iam.Policy(self, "WorkflowInvokesSegmentTables", roles=[self.workflow_role],
                                                statements=[iam.PolicyStatement(actions=["lambda:InvokeFunction"],
                                                                                resources=[function.function_arn])])
        return function

    # -- workflows --------------------------------------------------------------------------
    def _workflow(self, name: str, asl: dict) -> sfn.StateMachine:
        logs_group = logs.LogGroup(self, f"{name}Logs", retention=logs.RetentionDays.THREE_MONTHS,
                                   removal_policy=cdk.RemovalPolicy.DESTROY)
        machine = sfn.StateMachine(
            self, name,
            state_machine_name=self._machine_name(name),
            definition_body=sfn.DefinitionBody.from_string(json.dumps(asl)),
            state_machine_type=sfn.StateMachineType.STANDARD,
            timeout=cdk.Duration.hours(1),
            tracing_enabled=True,
            role=self.workflow_role,
            logs=sfn.LogOptions(destination=logs_group, level=sfn.LogLevel.ALL, include_execution_data=False),
            comment=f"Clickstream warehouse {name.lower()}: sql/redshift/{name.lower()} via the Redshift Data API",
        )
        machine.node.add_dependency(self.association)
        return machine

    def _machine_name(self, name: str) -> str:
        return f"{self.stack_name}-{name}"

    def _data_api_target_arn(self) -> str:
        if self.workgroup is not None:
            return self.workgroup.attr_workgroup_workgroup_arn
        if self.settings.redshift_mode == "serverless":
            return self.format_arn(service="redshift-serverless", resource="workgroup", resource_name="*")
        return self._cluster_arn()

    def setup_inputs(self) -> dict[str, object]:
        """Everything setup's outcome depends on: a change to any of them re-runs setup on deploy.

        The statements are rendered with a stand-in for the streaming role's ARN (a token at synth);
        the ARN itself is a property, so CloudFormation compares the resolved value.
        """
        names = dataclasses.replace(self.names, iam_role=ROLE_STAND_IN)
        rendered = json.dumps(workflows.statements_for("setup", names), sort_keys=True)
        return {"StatementsDigest": hashlib.sha256(rendered.encode()).hexdigest(),
                "Connection": dict(self.connection), "StreamingRoleArn": self.streaming_role.role_arn,
                "WorkflowRoleArn": self.workflow_role.role_arn}

    def _run_setup_on_deploy(self) -> None:
        env = {"SETUP_STATE_MACHINE_ARN": self.setup.state_machine_arn}
        on_event = python_function(self, "RunSetup", name="run_setup", handler="on_event",
                                   modules=["deploy_hooks"], environment=env)
        is_complete = python_function(self, "RunSetupIsComplete", name="run_setup", handler="is_complete",
                                      modules=["deploy_hooks"], environment=env)
        self.setup.grant_start_execution(on_event)
        self.setup.grant_read(is_complete)
        provider = cr.Provider(self, "RunSetupProvider", on_event_handler=on_event, is_complete_handler=is_complete,
                               query_interval=cdk.Duration.seconds(15), total_timeout=cdk.Duration.minutes(30),
                               log_group=self._provider_logs("RunSetupProviderLogs"))
        self._acknowledge_waiter(provider)
        self.setup_resource = cdk.CustomResource(self, "WarehouseSetup", service_token=provider.service_token,
                                                 properties=self.setup_inputs())
        self.setup_resource.node.add_dependency(self.association)

    def _acknowledge_waiter(self, provider: cr.Provider) -> None:
        waiter = provider.node.find_child("waiter-state-machine")
        for rule in ("AwsSolutions-SF1", "AwsSolutions-SF2"):
            cdk.Validations.of(waiter).acknowledge(cdk.Acknowledgment(
                id=rule, reason="the CDK provider framework's internal waiter state machine (it only polls the "
                                "isComplete function) has no logging or tracing options; our workflows have both"))

    def _acknowledge(self) -> None:
        """Each cdk-nag finding acknowledged by its exact id, with the reason it is acceptable."""
        basic = ("AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                 "AWSLambdaBasicExecutionRole]")
        acks = {
            basic: "Lambda functions (ours and the CDK provider framework's) write their logs with the AWS "
                   "managed basic execution policy, which grants only CloudWatch Logs writes",
            "AwsSolutions-IAM5[Resource::*]": "kinesis:ListStreams, redshift-data:DescribeStatement and X-Ray "
                                              "trace/log delivery actions have no resource-level permissions",
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:redshift-serverless:<AWS::Region>:<AWS::AccountId>:"
            "workgroup/*]": "Serverless workgroup ARNs carry a generated id, not the redshiftName we know; the "
                            "Data API call names the workgroup explicitly",
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:redshift-serverless:<AWS::Region>:<AWS::AccountId>:"
            "namespace/*]": "the namespace of the configured workgroup is looked up at run time",
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:redshift-serverless:<AWS::Region>:<AWS::AccountId>:"
            "usagelimit/*]": "usage limit ids are generated when the limit is created; the function manages only "
                             "the one it created (its physical id)",
            "AwsSolutions-L1": "the CDK provider framework picks its own Node.js runtime; ours use Python 3.13, "
                               "the newest the Powertools layer is published for",
        }
        framework = ("the CDK custom-resource provider framework invokes the versions of its handler "
                     "functions (':*') and describes its own waiter executions")
        for function in self.node.find_all():
            if isinstance(function, lambda_.CfnFunction):
                acks[f"AwsSolutions-IAM5[Resource::<{self.get_logical_id(function)}.Arn>:*]"] = framework
        acks["AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:execution:"
             '{"Fn::Select":[6,{"Fn::Split":[":",{"Ref":"Setup1774D09E"}]}]}:*]'] = (
            "the setup-on-deploy check describes executions of the setup state machine only")
        for rule, reason in acks.items():
            cdk.Validations.of(self).acknowledge(cdk.Acknowledgment(id=rule, reason=reason))
