"""ClickstreamWarehouse: Redshift streaming ingestion set up and refreshed by Step Functions.

The setup and refresh workflows run the statements of ``sql/redshift`` through the Redshift Data
API (``statemachines/run-statements.asl.json``, filled by ``clickstream.workflows``). Setup runs on
every deploy (a custom resource waits for it and fails the deploy with its error); refresh runs on
an EventBridge schedule.
"""

from __future__ import annotations

import hashlib
import json

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_redshiftserverless as rss
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import custom_resources as cr
from constructs import Construct

from clickstream import workflows
from clickstream.config import Settings
from clickstream.sqlmodel import ModelNames
from stacks.functions import python_function
from stacks.storage import StorageStack


class WarehouseStack(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, storage: StorageStack,
                 alarm_topic: sns.ITopic, **kwargs) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.settings = settings

        # The role Redshift assumes to read the stream (streaming ingestion), least privilege.
        self.streaming_role = iam.Role(self, "StreamingIngestionRole",
                                       assumed_by=iam.ServicePrincipal("redshift.amazonaws.com"),
                                       description="Redshift streaming ingestion from the clickstream stream")
        self.streaming_role.add_to_policy(iam.PolicyStatement(
            actions=["kinesis:DescribeStreamSummary", "kinesis:GetShardIterator", "kinesis:GetRecords",
                     "kinesis:DescribeStream", "kinesis:ListShards"],
            resources=[storage.stream.stream_arn]))
        self.streaming_role.add_to_policy(iam.PolicyStatement(actions=["kinesis:ListStreams"], resources=["*"]))
        storage.key.grant_decrypt(self.streaming_role)

        self.target = self._redshift(settings)
        names = ModelNames(schema=settings.clickstream_schema, mv=settings.clickstream_materialized_view,
                           kinesis_schema=settings.kinesis_schema, stream_name=settings.stream_name,
                           iam_role=self.streaming_role.role_arn)
        connection = workflows.connection_parameters(
            settings.redshift_mode, settings.redshift_name, settings.redshift_database,
            secret_arn=self.secret_arn, db_user=settings.redshift_db_user)

        self.setup = self._workflow("Setup", workflows.render("setup", names, connection))
        self.refresh = self._workflow("Refresh", workflows.render("refresh", names, connection))

        self.schedule = events.Rule(self, "RefreshSchedule", schedule=events.Schedule.expression(
            settings.refresh_schedule), description="Refresh the streaming view and merge new events")
        self.schedule.add_target(targets.SfnStateMachine(self.refresh))

        self._run_setup_on_deploy()
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
        self._acknowledge()

    # -- Redshift ---------------------------------------------------------------------------
    def _redshift(self, settings: Settings) -> Construct | None:
        """Create a Serverless namespace + workgroup, or associate the role with an existing one."""
        self.secret_arn = settings.redshift_secret_arn
        if settings.create_serverless:
            # Admin credentials in Secrets Manager: the Data API signs in with this secret.
            admin = secretsmanager.Secret(
                self, "AdminSecret", description="Clickstream Redshift Serverless admin (Data API sign-in)",
                generate_secret_string=secretsmanager.SecretStringGenerator(
                    secret_string_template=json.dumps({"username": "admin"}), generate_string_key="password",
                    exclude_punctuation=True, password_length=32))
            namespace = rss.CfnNamespace(
                self, "Namespace", namespace_name=settings.redshift_name, db_name=settings.redshift_database,
                admin_username="admin",
                admin_user_password=admin.secret_value_from_json("password").unsafe_unwrap(),
                iam_roles=[self.streaming_role.role_arn], default_iam_role_arn=self.streaming_role.role_arn)
            cdk.Validations.of(admin).acknowledge(cdk.Acknowledgment(
                id="AwsSolutions-SMG4", reason="rotating the namespace admin password needs a rotation function "
                                               "for Redshift Serverless; rotate it with the console's managed "
                                               "rotation if your policy requires it"))
            workgroup = rss.CfnWorkgroup(self, "Workgroup", workgroup_name=settings.redshift_name,
                                         namespace_name=settings.redshift_name, base_capacity=8,
                                         publicly_accessible=False)
            workgroup.add_dependency(namespace)
            self.secret_arn = self.secret_arn or admin.secret_arn
            return workgroup
        handler = python_function(self, "AssociateRole", name="associate_role", handler="on_event",
                                  modules=["deploy_hooks"])
        if settings.redshift_mode == "provisioned":
            handler.add_to_role_policy(iam.PolicyStatement(
                actions=["redshift:ModifyClusterIamRoles"],
                resources=[self.format_arn(service="redshift", resource="cluster", resource_name=settings.redshift_name,
                                           arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME)]))
        else:
            handler.add_to_role_policy(iam.PolicyStatement(
                actions=["redshift-serverless:GetWorkgroup", "redshift-serverless:GetNamespace",
                         "redshift-serverless:UpdateNamespace"],
                resources=[self.format_arn(service="redshift-serverless", resource="workgroup", resource_name="*"),
                           self.format_arn(service="redshift-serverless", resource="namespace", resource_name="*")]))
        handler.add_to_role_policy(iam.PolicyStatement(actions=["iam:PassRole"],
                                                       resources=[self.streaming_role.role_arn]))
        provider = cr.Provider(self, "AssociateRoleProvider", on_event_handler=handler,
                               log_group=self._provider_logs("AssociateRoleProviderLogs"))
        return cdk.CustomResource(self, "StreamingRoleAssociation", service_token=provider.service_token,
                                  properties={"Mode": settings.redshift_mode, "Name": settings.redshift_name,
                                              "RoleArn": self.streaming_role.role_arn})

    def _provider_logs(self, construct_id: str) -> logs.LogGroup:
        return logs.LogGroup(self, construct_id, retention=logs.RetentionDays.ONE_MONTH,
                             removal_policy=cdk.RemovalPolicy.DESTROY)

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
            logs=sfn.LogOptions(destination=logs_group, level=sfn.LogLevel.ALL, include_execution_data=False),
            comment=f"Clickstream warehouse {name.lower()}: sql/redshift/{name.lower()} via the Redshift Data API",
        )
        machine.add_to_role_policy(iam.PolicyStatement(
            actions=["redshift-data:ExecuteStatement"], resources=[self._data_api_target_arn()]))
        # Describe is authorised by statement ownership; it has no resource-level permissions.
        machine.add_to_role_policy(iam.PolicyStatement(actions=["redshift-data:DescribeStatement"],
                                                       resources=["*"]))
        # The overlap guard lists this machine's own executions (its ARN by name: no self-reference).
        machine.add_to_role_policy(iam.PolicyStatement(actions=["states:ListExecutions"], resources=[
            self.format_arn(service="states", resource="stateMachine", resource_name=self._machine_name(name),
                            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME)]))
        if self.secret_arn:
            machine.add_to_role_policy(iam.PolicyStatement(actions=["secretsmanager:GetSecretValue"],
                                                           resources=[self.secret_arn]))
        elif self.settings.redshift_mode == "serverless":
            machine.add_to_role_policy(iam.PolicyStatement(actions=["redshift-serverless:GetCredentials"],
                                                           resources=[self._data_api_target_arn()]))
        else:
            machine.add_to_role_policy(iam.PolicyStatement(actions=["redshift:GetClusterCredentials"], resources=[
                self.format_arn(service="redshift", resource="dbuser",
                                resource_name=f"{self.settings.redshift_name}/{self.settings.redshift_db_user}",
                                arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME),
                self.format_arn(service="redshift", resource="dbname",
                                resource_name=f"{self.settings.redshift_name}/{self.settings.redshift_database}",
                                arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME)]))
        if self.target is not None:
            machine.node.add_dependency(self.target)
        return machine

    def _machine_name(self, name: str) -> str:
        return f"{self.stack_name}-{name}"

    def _data_api_target_arn(self) -> str:
        if self.settings.redshift_mode == "serverless":
            return self.format_arn(service="redshift-serverless", resource="workgroup", resource_name="*")
        return self.format_arn(service="redshift", resource="cluster", resource_name=self.settings.redshift_name,
                               arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME)

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
        waiter = provider.node.find_child("waiter-state-machine")
        for rule in ("AwsSolutions-SF1", "AwsSolutions-SF2"):
            cdk.Validations.of(waiter).acknowledge(cdk.Acknowledgment(
                id=rule, reason="the CDK provider framework's internal waiter state machine (it only polls the "
                                "isComplete function) has no logging or tracing options; our workflows have both"))
        # The SQL's digest as a property: CloudFormation re-runs setup whenever the model changes.
        digest = hashlib.sha256(json.dumps(workflows.statements_for("setup", self.settings.model_names)).encode())
        cdk.CustomResource(self, "WarehouseSetup", service_token=provider.service_token,
                           properties={"SqlDigest": digest.hexdigest()})

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
            "AwsSolutions-L1": "the CDK provider framework picks its own Node.js runtime; ours use Python 3.13, "
                               "the newest the Powertools layer is published for",
        }
        framework = ("the CDK custom-resource provider framework invokes the versions of its handler "
                     "functions (':*') and describes its own waiter executions")
        for handler in ("AssociateRoleA8A0B11E", "RunSetup6CCE5AD9", "RunSetupIsComplete932C4B7E",
                        "RunSetupProviderframeworkisCompleteC82C7D1F", "RunSetupProviderframeworkonTimeout1EBB340C"):
            acks[f"AwsSolutions-IAM5[Resource::<{handler}.Arn>:*]"] = framework
        acks["AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:execution:"
             '{"Fn::Select":[6,{"Fn::Split":[":",{"Ref":"Setup1774D09E"}]}]}:*]'] = (
            "the setup-on-deploy check describes executions of the setup state machine only")
        for rule, reason in acks.items():
            cdk.Validations.of(self).acknowledge(cdk.Acknowledgment(id=rule, reason=reason))
