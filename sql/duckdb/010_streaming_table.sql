-- Local stand-in for the Redshift streaming view: the loader copies local stream records into it
-- with the same columns (payload as JSON, non-JSON records as bytes in raw_data).
CREATE TABLE IF NOT EXISTS ${schema}.${mv} (
    approximate_arrival_timestamp TIMESTAMP,
    partition_key VARCHAR,
    shard_id VARCHAR,
    sequence_number VARCHAR,
    refresh_time TIMESTAMP,
    payload JSON,
    raw_data BLOB
);
