-- Streaming ingestion: every Kinesis record as SUPER when it is JSON that SUPER accepts and at most
-- 64,000 bytes; otherwise its bytes (raw_data), so the merge puts it in `rejected` instead of losing
-- it or failing on it. A SUPER string is at most 65,535 bytes and an object with a duplicate key is
-- not valid SUPER (https://docs.aws.amazon.com/redshift/latest/dg/limitations-super.html); records
-- over 64,000 bytes are never parsed, so no JSON function ever sees more than it accepts.
-- Changing this statement: 060 drops the old view on the next setup, and this creates the new one.
-- clickstream: skip-if-exists (Redshift has no CREATE MATERIALIZED VIEW IF NOT EXISTS)
-- AUTO REFRESH NO: the refresh workflow refreshes, then merges, so the merge sees a stable view.
CREATE MATERIALIZED VIEW ${schema}.${mv} AUTO REFRESH NO AS
SELECT
    approximate_arrival_timestamp,
    partition_key,
    shard_id,
    sequence_number,
    refresh_time,
    CASE WHEN OCTET_LENGTH(kinesis_data) <= 64000 AND CAN_JSON_PARSE(kinesis_data)
        THEN JSON_PARSE(kinesis_data) END AS payload,
    CASE WHEN NOT (OCTET_LENGTH(kinesis_data) <= 64000 AND CAN_JSON_PARSE(kinesis_data))
        THEN kinesis_data END AS raw_data,
    OCTET_LENGTH(kinesis_data) AS record_bytes
FROM ${kinesis_schema}."${stream_name}";
