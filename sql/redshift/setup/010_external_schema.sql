-- The Kinesis stream as an external schema. The IAM role is associated with the cluster or
-- namespace by the warehouse stack (kinesis:DescribeStreamSummary, GetShardIterator, GetRecords,
-- DescribeStream, ListShards, ListStreams and kms:Decrypt on the stream key).
-- https://docs.aws.amazon.com/redshift/latest/dg/materialized-view-streaming-ingestion-getting-started.html
CREATE EXTERNAL SCHEMA IF NOT EXISTS ${kinesis_schema}
FROM KINESIS
IAM_ROLE '${iam_role}';
