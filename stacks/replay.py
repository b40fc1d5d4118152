"""ClickstreamReplay: a state machine that replays archived events from S3 onto the stream."""

from __future__ import annotations

import json

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from clickstream import replay, workflows
from clickstream.config import Settings
from stacks.functions import python_function
from stacks.storage import StorageStack

# What the replay functions import: the standard library, boto3 (runtime) and Powertools (layer)
# only; tests/test_replay.py imports the built asset where nothing else can be imported.
REPLAY_MODULES = ["replay", "archive", "contract"]
REPLAY_MEMORY_MB = 1769


class ReplayStack(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, storage: StorageStack,
                 **kwargs) -> None:
        super().__init__(scope, construct_id, **kwargs)
        stream = storage.stream_ref(self)  # by name: renaming the stream stays one deploy
        env = {"ARCHIVE_BUCKET": storage.bucket.bucket_name, "STREAM_NAME": settings.stream_name,
               "POWERTOOLS_METRICS_NAMESPACE": "Clickstream"}
        self.plan = python_function(self, "PlanReplay", name="replay", handler="plan", modules=REPLAY_MODULES,
                                    environment=env)
        # One hour of archive per invocation. Lambda gives one full vCPU at 1,769 MB and replay is
        # single-threaded (gunzip, one JSON parse per record, PutRecords of 500); docs/ingest.md
        # "Replay capacity" gives the measured rate and the largest hour 15 minutes can replay.
        self.replay = python_function(self, "ReplayHour", name="replay", handler="replay_hour",
                                      modules=REPLAY_MODULES, environment=env, timeout=cdk.Duration.minutes(15),
                                      memory_size=REPLAY_MEMORY_MB)
        storage.bucket.grant_read(self.replay, "events/*")
        stream.grant_write(self.replay)

        name = f"{self.stack_name}-Replay"
        asl = workflows.render_replay(self.plan.function_arn, self.replay.function_arn,
                                      settings.replay_max_concurrency, settings.replay_tolerated_failure_percentage,
                                      storage.bucket.bucket_name)
        log_group = logs.LogGroup(self, "ReplayLogs", retention=logs.RetentionDays.THREE_MONTHS,
                                  removal_policy=cdk.RemovalPolicy.DESTROY)
        self.machine = sfn.StateMachine(
            self, "Replay", state_machine_name=name,
            definition_body=sfn.DefinitionBody.from_string(json.dumps(asl)),
            definition_substitutions={"Partition": self.partition},
            tracing_enabled=True, timeout=cdk.Duration.hours(24),
            logs=sfn.LogOptions(destination=log_group, level=sfn.LogLevel.ALL),
            comment='Replay archived events: input {"from": "<ISO time>", "to": "<ISO time>"}')
        self.plan.grant_invoke(self.machine)
        self.replay.grant_invoke(self.machine)
        # A Distributed Map runs child executions of this same state machine.
        own = self.format_arn(service="states", resource="stateMachine", resource_name=name,
                              arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME)
        children = self.format_arn(service="states", resource="execution", resource_name=f"{name}/*",
                                   arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME)
        self.machine.add_to_role_policy(iam.PolicyStatement(actions=["states:StartExecution"], resources=[own]))
        self.machine.add_to_role_policy(iam.PolicyStatement(
            actions=["states:DescribeExecution", "states:StopExecution"], resources=[children]))
        # The Map's ResultWriter puts the children's summaries under replay-results/ (multipart)
        # (https://docs.aws.amazon.com/step-functions/latest/dg/input-output-resultwriter.html#resultwriter-iam-policies).
        self.machine.add_to_role_policy(iam.PolicyStatement(
            actions=["s3:PutObject", "s3:GetObject", "s3:ListMultipartUploadParts", "s3:AbortMultipartUpload"],
            resources=[storage.bucket.arn_for_objects(f"{replay.RESULT_PREFIX}/*")]))

        cdk.CfnOutput(self, "ReplayStateMachine", value=self.machine.state_machine_arn,
                      description='start with input {"from": "2026-11-28T00:00:00Z", "to": "2026-11-28T06:00:00Z"}')
        self._acknowledge()

    def _acknowledge(self) -> None:
        basic = ("AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                 "AWSLambdaBasicExecutionRole]")
        kms_write = "writing to the KMS-encrypted stream: CDK's write grant, on the stream key only"
        acks = {
            basic: "the replay functions write their logs with the AWS managed basic execution policy",
            "AwsSolutions-IAM5[Resource::*]": "X-Ray trace and Step Functions log delivery actions have no "
                                              "resource-level permissions",
            "AwsSolutions-IAM5[Action::s3:GetObject*]": "the replay function reads archive objects (CDK's read "
                                                        "grant action families), only under events/",
            "AwsSolutions-IAM5[Action::s3:GetBucket*]": "listing the archive bucket by hour prefix",
            "AwsSolutions-IAM5[Action::s3:List*]": "listing the archive bucket by hour prefix",
            "AwsSolutions-IAM5[Resource::<ReplayHour1CFDB53E.Arn>:*]": "the state machine invokes versions of the "
                                                                      "replay function",
            "AwsSolutions-IAM5[Resource::<PlanReplay6CB0CE78.Arn>:*]": "the state machine invokes versions of the "
                                                                      "plan function",
            "AwsSolutions-IAM5[Resource::ClickstreamStorage:ExportsOutputFnGetAttArchiveDA4CB258ArnBE8F3792/"
            "events/*]": "the replay function reads archived objects, only under events/",
            "AwsSolutions-IAM5[Action::kms:GenerateDataKey*]": kms_write,
            "AwsSolutions-IAM5[Action::kms:ReEncrypt*]": kms_write,
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:execution:"
            "ClickstreamReplay-Replay/*]": "the Distributed Map describes and stops its own child executions",
            "AwsSolutions-IAM5[Resource::ClickstreamStorage:ExportsOutputFnGetAttArchiveDA4CB258ArnBE8F3792/"
            f"{replay.RESULT_PREFIX}/*]": "the Distributed Map writes its results under replay-results/ only",
            "AwsSolutions-L1": "Python 3.13 is the newest runtime the Powertools layer is published for",
        }
        for rule, reason in acks.items():
            cdk.Validations.of(self).acknowledge(cdk.Acknowledgment(id=rule, reason=reason))
