-- clickstream: transaction
-- recent_keys: (source, message_id) of events received within the deduplication window
-- (${dedup_window_days} days) before the oldest staged event; older copies are not looked at.
CALL ${schema}.stage_recent_keys(${dedup_window_days});
