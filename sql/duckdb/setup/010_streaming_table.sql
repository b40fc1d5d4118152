-- Local stand-in for the Redshift streaming view: the loader copies local stream records into it
-- with the same columns and the same rules (payload as JSON only for JSON records of at most 64,000
-- bytes without duplicate keys; every other record as bytes in raw_data).
CREATE TABLE IF NOT EXISTS ${schema}.${mv} (
    approximate_arrival_timestamp TIMESTAMP,
    partition_key VARCHAR,
    shard_id VARCHAR,
    sequence_number VARCHAR,
    refresh_time TIMESTAMP,
    -- zstd: the records are most of what the loader writes (~40% of the default compression's size,
    -- loads ~10% faster; docs/benchmarks.md). New warehouses only: an existing table keeps its own.
    payload JSON USING COMPRESSION zstd,
    raw_data BLOB
);

-- Added with the streaming view's second definition (record size); DuckDB tables can be altered.
ALTER TABLE ${schema}.${mv} ADD COLUMN IF NOT EXISTS record_bytes BIGINT;
