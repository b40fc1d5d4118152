"""Alarms and a dashboard for the ingest path: API, stream, archive delivery."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_kinesisfirehose as firehose
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from constructs import Construct

PERIOD = cdk.Duration.minutes(5)


class PipelineMonitoring(Construct):
    """Exposes ``topic`` (alarm notifications), ``alarms`` and ``dashboard``."""

    def __init__(self, scope: Construct, construct_id: str, *, api: apigw.RestApi, stage_name: str,
                 stream: kinesis.IStream, delivery_stream: firehose.IDeliveryStream, alarm_email: str) -> None:
        super().__init__(scope, construct_id)
        key = kms.Key(self, "TopicKey", enable_key_rotation=True, removal_policy=cdk.RemovalPolicy.DESTROY,
                      description="Encrypts clickstream alarm notifications")
        key.grant_encrypt_decrypt(iam.ServicePrincipal("cloudwatch.amazonaws.com"))
        self.topic = sns.Topic(self, "Alarms", display_name="Clickstream alarms", master_key=key,
                               enforce_ssl=True)
        # enforce_ssl gives the topic a policy of its own, which replaces SNS's default policy: without
        # this statement CloudWatch may not publish and no alarm would ever notify anyone
        # (https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/Notify_Users_Alarm_Changes.html,
        # https://docs.aws.amazon.com/sns/latest/dg/sns-access-policy-use-cases.html). The alarms of the
        # other stacks of this app publish here too; aws:SourceAccount keeps it to this account's alarms.
        self.topic.add_to_resource_policy(iam.PolicyStatement(
            sid="AllowCloudWatchAlarmsOfThisAccount", actions=["sns:Publish"], resources=[self.topic.topic_arn],
            principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
            conditions={"StringEquals": {"aws:SourceAccount": cdk.Stack.of(self).account}}))
        if alarm_email:
            self.topic.add_subscription(subs.EmailSubscription(alarm_email))

        dims = {"ApiName": api.rest_api_name, "Stage": stage_name}
        api_5xx = cw.Metric(namespace="AWS/ApiGateway", metric_name="5XXError", dimensions_map=dims,
                            statistic="Sum", period=PERIOD)
        api_4xx = cw.Metric(namespace="AWS/ApiGateway", metric_name="4XXError", dimensions_map=dims,
                            statistic="Sum", period=PERIOD)
        api_count = cw.Metric(namespace="AWS/ApiGateway", metric_name="Count", dimensions_map=dims,
                              statistic="Sum", period=PERIOD)
        api_latency = cw.Metric(namespace="AWS/ApiGateway", metric_name="Latency", dimensions_map=dims,
                                statistic="p99", period=PERIOD)
        write_throttled = stream.metric_write_provisioned_throughput_exceeded(statistic="Sum", period=PERIOD)
        records_failed = cw.Metric(namespace="AWS/Kinesis", metric_name="PutRecords.FailedRecords",
                                   dimensions_map={"StreamName": stream.stream_name}, statistic="Sum",
                                   period=PERIOD)
        incoming = stream.metric_incoming_records(statistic="Sum", period=PERIOD)
        iterator_age = stream.metric_get_records_iterator_age_milliseconds(statistic="Maximum", period=PERIOD)
        freshness = delivery_stream.metric("DeliveryToS3.DataFreshness", statistic="Maximum", period=PERIOD)
        delivery_ok = delivery_stream.metric("DeliveryToS3.Success", statistic="Minimum", period=PERIOD)

        def alarm(name: str, metric: cw.IMetric, threshold: float, what: str,
                  op=cw.ComparisonOperator.GREATER_THAN_THRESHOLD) -> cw.Alarm:
            a = cw.Alarm(self, name, metric=metric, threshold=threshold, evaluation_periods=1,
                         comparison_operator=op, treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                         alarm_description=what)
            a.add_alarm_action(cw_actions.SnsAction(self.topic))
            return a

        self.alarms = [
            alarm("Api5xx", api_5xx, 10, "Tracking API answered 5XX (SDKs retry; events may be delayed)"),
            alarm("ApiLatency", api_latency, 1000, "Tracking API p99 latency above 1 s"),
            alarm("KinesisWriteThrottled", write_throttled, 0, "Kinesis throttled writes (429s to SDKs)"),
            alarm("KinesisFailedRecords", records_failed, 0, "PutRecords failed records (503s to SDKs)"),
            alarm("ArchiveFreshness", freshness, 900, "Oldest record not yet archived to S3 is over 15 min old"),
            alarm("ArchiveDeliveryFailing", delivery_ok, 1, "Firehose failed to deliver to S3",
                  op=cw.ComparisonOperator.LESS_THAN_THRESHOLD),
        ]

        self.dashboard = cw.Dashboard(self, "Dashboard", dashboard_name="clickstream")
        self.dashboard.add_widgets(
            cw.GraphWidget(title="API requests and errors", left=[api_count], right=[api_4xx, api_5xx]),
            cw.GraphWidget(title="API latency p99 (ms)", left=[api_latency]),
            cw.GraphWidget(title="Kinesis records in / throttled / failed", left=[incoming],
                           right=[write_throttled, records_failed]),
            cw.GraphWidget(title="Archive freshness (s) and iterator age (ms)", left=[freshness],
                           right=[iterator_age]),
            cw.AlarmStatusWidget(title="Alarms", alarms=self.alarms),
        )
