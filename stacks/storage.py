"""ClickstreamStorage: the Kinesis stream, the S3 archive and the Firehose that fills it."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_kinesisfirehose as firehose
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from clickstream import archive
from clickstream.config import Settings


def delivery_stream_name(stream_name: str) -> str:
    """Firehose names are 1-64 characters of [a-zA-Z0-9_.-]; stream names may be up to 128."""
    return f"{stream_name[:56]}-archive"


class StorageStack(cdk.Stack):
    """Exposes ``stream``, ``key``, ``bucket`` and ``delivery_stream``; other stacks use
    :meth:`stream_ref` and :meth:`delivery_stream_ref` so that renaming the stream is one deploy."""

    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, **kwargs) -> None:
        super().__init__(scope, construct_id, **kwargs)

        self.key = kms.Key(self, "StreamKey", enable_key_rotation=True,
                           description="Encrypts the clickstream Kinesis stream",
                           removal_policy=cdk.RemovalPolicy.RETAIN)
        on_demand = settings.stream_mode == "ON_DEMAND"
        self.stream_name = settings.stream_name
        # The stream has a fixed name (the Redshift streaming view and the mapping template name it),
        # so a retained stream would make the next deploy after `cdk destroy` fail with "already
        # exists". It is deleted with the stack: it holds at most `retentionHours` of records, all of
        # which Firehose has delivered to the archive bucket (retained) within its buffer interval.
        self.stream = kinesis.Stream(
            self, "Events",
            stream_name=settings.stream_name,
            removal_policy=cdk.RemovalPolicy.DESTROY,
            stream_mode=kinesis.StreamMode.ON_DEMAND if on_demand else kinesis.StreamMode.PROVISIONED,
            shard_count=None if on_demand else settings.shard_count,
            retention_period=cdk.Duration.hours(settings.retention_hours),
            encryption=kinesis.StreamEncryption.KMS,
            encryption_key=self.key,
        )
        # A rename replaces the stream: keep the old one (UpdateReplacePolicy) with the records of
        # its last minutes that the replaced delivery stream may not have archived yet.
        stream_resource = self.stream.node.default_child
        assert isinstance(stream_resource, cdk.CfnResource)
        stream_resource.cfn_options.update_replace_policy = cdk.CfnDeletionPolicy.RETAIN

        self.access_logs = s3.Bucket(
            self, "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            lifecycle_rules=[s3.LifecycleRule(expiration=cdk.Duration.days(365))],
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        transitions = []
        if settings.archive_infrequent_access_days:
            transitions.append(s3.Transition(storage_class=s3.StorageClass.INFREQUENT_ACCESS,
                                             transition_after=cdk.Duration.days(settings.archive_infrequent_access_days)))
        if settings.archive_glacier_days:
            transitions.append(s3.Transition(storage_class=s3.StorageClass.GLACIER_INSTANT_RETRIEVAL,
                                             transition_after=cdk.Duration.days(settings.archive_glacier_days)))
        self.bucket = s3.Bucket(
            self, "Archive",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix="archive/",
            lifecycle_rules=[s3.LifecycleRule(
                transitions=transitions,
                expiration=(cdk.Duration.days(settings.archive_expiration_days)
                            if settings.archive_expiration_days else None),
                noncurrent_version_expiration=cdk.Duration.days(30),
                abort_incomplete_multipart_upload_after=cdk.Duration.days(7),
            )],
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )

        # Firehose's role, trusted only for this account's delivery streams (confused deputy:
        # https://docs.aws.amazon.com/firehose/latest/dev/controlling-access.html#using-iam-s3,
        # https://docs.aws.amazon.com/IAM/latest/UserGuide/confused-deputy.html). CDK grants it the
        # stream read, key decrypt and bucket write it needs.
        self.firehose_role = iam.Role(
            self, "ArchiveDeliveryRole", description="Firehose: read the clickstream stream, write the archive",
            assumed_by=iam.ServicePrincipal("firehose.amazonaws.com",
                                            conditions={"StringEquals": {"aws:SourceAccount": self.account}}))
        self.firehose_logs = logs.LogGroup(self, "ArchiveDeliveryLogs", retention=logs.RetentionDays.ONE_MONTH,
                                           removal_policy=cdk.RemovalPolicy.DESTROY)
        # Named after the stream: a new source replaces the delivery stream, and a generated name
        # would then change an export other stacks import (see stream_ref).
        self.delivery_stream_name = delivery_stream_name(settings.stream_name)
        self.delivery_stream = firehose.DeliveryStream(
            self, "ArchiveDelivery",
            delivery_stream_name=self.delivery_stream_name,
            source=firehose.KinesisStreamSource(self.stream),
            role=self.firehose_role,
            destination=firehose.S3Bucket(
                self.bucket,
                role=self.firehose_role,
                compression=firehose.Compression.GZIP,
                # Same keys as the local archiver: events/YYYY/MM/dd/HH/<name>-1-<time>-<uuid>.gz
                data_output_prefix=archive.FIREHOSE_PREFIX,
                error_output_prefix=archive.ERROR_PREFIX_FIREHOSE,
                buffering_interval=cdk.Duration.seconds(settings.archive_buffer_seconds),
                buffering_size=cdk.Size.mebibytes(settings.archive_buffer_mib),
                logging_config=firehose.EnableLogging(self.firehose_logs),
            ),
        )

        # Stacks deployed before stream_ref imported these; keep exporting them so an upgrade is one
        # deploy (CloudFormation refuses to delete an export still imported)
        # (https://docs.aws.amazon.com/cdk/api/v2/python/aws_cdk/Stack.html#aws_cdk.Stack.export_value).
        for value in (self.stream.stream_arn, self.stream.stream_name, self.delivery_stream.delivery_stream_name):
            self.export_value(value)

        cdk.CfnOutput(self, "StreamName", value=self.stream.stream_name)
        cdk.CfnOutput(self, "ArchiveBucket", value=self.bucket.bucket_name,
                      description="s3://<this>/events/ is what `clickstream replay --source` reads")

        self._acknowledge()

    def stream_ref(self, scope: Construct) -> kinesis.IStream:
        """The stream for another stack, by its configured name rather than an imported token.

        Renaming the stream replaces it; an ARN imported from this stack would then be an export in
        use whose value changes, which CloudFormation refuses (a two-step deploy). Built from the
        name, the other stacks simply update in the same `cdk deploy --all`. The key is imported:
        it does not change with the name.
        """
        stack = cdk.Stack.of(scope)
        arn = stack.format_arn(service="kinesis", resource="stream", resource_name=self.stream_name)
        return kinesis.Stream.from_stream_attributes(scope, "ClickstreamStream", stream_arn=arn,
                                                     encryption_key=self.key)

    def delivery_stream_ref(self, scope: Construct) -> firehose.IDeliveryStream:
        """The archive delivery stream for another stack, by name (see :meth:`stream_ref`)."""
        return firehose.DeliveryStream.from_delivery_stream_name(scope, "ClickstreamArchiveDelivery",
                                                                 self.delivery_stream_name)

    def _acknowledge(self) -> None:
        firehose_s3 = ("Firehose's role (granted by the CDK S3 destination) writes objects under time-based keys "
                       "in the archive bucket only, and needs the S3 action families AWS documents for it")
        acks = {
            "AwsSolutions-S1": "this bucket receives the archive bucket's server access logs; logging it "
                               "into itself would loop",
            "AwsSolutions-KDF1": "the source is a KMS-encrypted Kinesis stream; Firehose server-side "
                                 "encryption applies only to Direct PUT sources and the bucket is SSE-S3",
            "AwsSolutions-KDS3": "the stream uses a customer managed key on purpose: its policy is ours and "
                                 "Firehose and Redshift's streaming role are granted decrypt on it explicitly",
            "CloudFormation-Validate::W7001": "the Firehose construct ships a region CIDR mapping used only by "
                                              "VPC destinations; this stack has none",
            "AwsSolutions-IAM5[Resource::<ArchiveDA4CB258.Arn>/*]": firehose_s3,
        }
        for action in ("s3:Abort*", "s3:DeleteObject*", "s3:GetBucket*", "s3:GetObject*", "s3:List*"):
            acks[f"AwsSolutions-IAM5[Action::{action}]"] = firehose_s3
        for rule, reason in acks.items():
            cdk.Validations.of(self).acknowledge(cdk.Acknowledgment(id=rule, reason=reason))
