-- clickstream: migration
-- The tables as the first version created them (before versioned migrations). On a warehouse that
-- has them, each statement changes nothing (IF NOT EXISTS) and is recorded as applied; later
-- migrations change them. `raw` is a reserved word: quoted here, renamed by m002.
-- One row per message. Segment's column names.
CREATE TABLE IF NOT EXISTS ${schema}.events (
    message_id VARCHAR(100) NOT NULL,
    type VARCHAR(16) NOT NULL,
    source VARCHAR(64) NOT NULL,
    anonymous_id VARCHAR(1024),
    user_id VARCHAR(1024),
    event VARCHAR(1024),
    event_text VARCHAR(1024),
    name VARCHAR(1024),
    category VARCHAR(1024),
    group_id VARCHAR(1024),
    previous_id VARCHAR(1024),
    received_at TIMESTAMPTZ NOT NULL,
    sent_at TIMESTAMPTZ,
    original_timestamp TIMESTAMPTZ,
    "timestamp" TIMESTAMPTZ NOT NULL,
    context_ip VARCHAR(64),
    context_user_agent VARCHAR(4096),
    context_page_url VARCHAR(4096),
    context_page_path VARCHAR(4096),
    context_page_title VARCHAR(4096),
    context_page_referrer VARCHAR(4096),
    context_page_search VARCHAR(4096),
    context_library_name VARCHAR(256),
    context_library_version VARCHAR(256),
    context_locale VARCHAR(64),
    context_timezone VARCHAR(64),
    context_campaign_name VARCHAR(1024),
    context_campaign_source VARCHAR(1024),
    context_campaign_medium VARCHAR(1024),
    context_campaign_term VARCHAR(1024),
    context_campaign_content VARCHAR(1024),
    properties VARCHAR(65535),
    traits VARCHAR(65535),
    request_id VARCHAR(128),
    request_ip VARCHAR(64),
    sequence_number VARCHAR(128),
    loaded_at TIMESTAMPTZ NOT NULL
)
DISTKEY (message_id)
SORTKEY ("timestamp");

-- Records that could not become events, with the reason. Never silently dropped.
CREATE TABLE IF NOT EXISTS ${schema}.rejected (
    reason VARCHAR(64) NOT NULL,
    source VARCHAR(64),
    message_id VARCHAR(1024),
    received_at TIMESTAMPTZ,
    sequence_number VARCHAR(128),
    raw_format VARCHAR(8) NOT NULL,
    "raw" VARCHAR(65535),
    raw_hash VARCHAR(32) NOT NULL,
    loaded_at TIMESTAMPTZ NOT NULL
);

-- Merge progress: rows of the streaming view with refresh_time in (watermark, target] are pending.
-- A run sets target, merges, then moves watermark to target; a run that dies in between is redone
-- by the next one, and the merge's deduplication makes the redo harmless.
CREATE TABLE IF NOT EXISTS ${schema}.load_state (
    name VARCHAR(64) NOT NULL,
    watermark TIMESTAMP NOT NULL,
    target TIMESTAMP NOT NULL
);

INSERT INTO ${schema}.load_state (name, watermark, target)
SELECT 'events', CAST('1970-01-01 00:00:00' AS TIMESTAMP), CAST('1970-01-01 00:00:00' AS TIMESTAMP)
WHERE NOT EXISTS (SELECT 1 FROM ${schema}.load_state WHERE name = 'events');
