-- Pull new records from Kinesis into the streaming view.
REFRESH MATERIALIZED VIEW ${schema}.${mv};
