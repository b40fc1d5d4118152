-- clickstream: transaction
-- The Segment semantics of the model, in one place: what each new streaming-view row becomes.
--   * batch-level context is merged under the message's own: per top-level context key, the
--     message's value wins when the message has that key (Segment's shallow merge);
--   * receivedAt from the gateway, originalTimestamp = the client's timestamp,
--     timestamp = receivedAt - (sentAt - originalTimestamp) (device clock-skew correction);
--   * messageId, when the client sent none, is derived from the request id and position, so
--     re-reading the same record (replay, retry of the merge) gives the same id;
--   * context.ip comes from the request for client-side libraries, or when context.direct is true;
--   * values longer than their column are truncated byte-safely (f_clickstream_truncate), as
--     Segment truncates; a message id is never truncated (it is the deduplication key);
--   * reason is non-null when the row cannot be an event: it then goes to `rejected`.
-- No input can make it fail: records over 64,000 bytes are never parsed (the streaming view keeps
-- their bytes), JSON functions only see text under 64 KB, and times are computed in BIGINT
-- milliseconds, never through a 32-bit DATEADD interval.
-- Each layer extracts every JSON value exactly once (JSON text is parsed per extraction), and only
-- JSON objects are navigated further, so a string like "{oops" cannot break the merge.
CREATE TEMP TABLE staging AS
WITH r AS (
    SELECT
        v.shard_id,
        v.sequence_number,
        v.refresh_time,
        v.record_bytes,
        -- JSON_SIZE has no size limit; JSON_SERIALIZE fails beyond 65,535 bytes, and a record's
        -- serialised form may be longer than the record (e.g. numbers written with exponents)
        JSON_SIZE(v.payload) AS payload_bytes,
        CASE WHEN JSON_SIZE(v.payload) <= 65535 THEN JSON_SERIALIZE(v.payload) END AS raw_json,
        -- bytes that are not JSON: the first 32,000 bytes as hex (at most 64,000 characters)
        CASE WHEN v.payload IS NULL THEN FROM_VARBYTE(SUBSTRING(v.raw_data, 1, 32000), 'hex') END AS raw_hex
    FROM new_records AS v
),
e AS (
    SELECT r.*, CASE WHEN r.raw_json LIKE '{%' THEN r.raw_json END AS d FROM r
),
env AS (
    SELECT
        e.*,
        NULLIF(JSON_EXTRACT_PATH_TEXT(e.d, 'v'), '') AS envelope_version,
        NULLIF(JSON_EXTRACT_PATH_TEXT(e.d, 'source'), '') AS source,
        TRY_CAST(NULLIF(JSON_EXTRACT_PATH_TEXT(e.d, 'receivedAt'), '') AS BIGINT) AS received_ms,
        NULLIF(JSON_EXTRACT_PATH_TEXT(e.d, 'requestId'), '') AS request_id,
        NULLIF(JSON_EXTRACT_PATH_TEXT(e.d, 'index'), '') AS request_index,
        NULLIF(JSON_EXTRACT_PATH_TEXT(e.d, 'ip'), '') AS request_ip,
        NULLIF(JSON_EXTRACT_PATH_TEXT(e.d, 'userAgent'), '') AS request_user_agent,
        NULLIF(JSON_EXTRACT_PATH_TEXT(e.d, 'route'), '') AS route,
        NULLIF(JSON_EXTRACT_PATH_TEXT(e.d, 'routeType'), '') AS route_type,
        JSON_EXTRACT_PATH_TEXT(e.d, 'message') AS message_text,
        JSON_EXTRACT_PATH_TEXT(e.d, 'batch') AS batch_text
    FROM e
),
env_obj AS (
    SELECT
        env.*,
        CASE WHEN env.message_text LIKE '{%' AND CAN_JSON_PARSE(env.message_text) THEN env.message_text END AS m,
        CASE WHEN env.batch_text LIKE '{%' AND CAN_JSON_PARSE(env.batch_text) THEN env.batch_text END AS b
    FROM env
),
msg AS (
    SELECT
        o.*,
        NULLIF(JSON_EXTRACT_PATH_TEXT(o.m, 'type'), '') AS message_type,
        NULLIF(JSON_EXTRACT_PATH_TEXT(o.m, 'messageId'), '') AS client_message_id,
        NULLIF(JSON_EXTRACT_PATH_TEXT(o.m, 'anonymousId'), '') AS anonymous_id,
        NULLIF(JSON_EXTRACT_PATH_TEXT(o.m, 'userId'), '') AS user_id,
        NULLIF(JSON_EXTRACT_PATH_TEXT(o.m, 'event'), '') AS event_text,
        NULLIF(JSON_EXTRACT_PATH_TEXT(o.m, 'name'), '') AS name,
        NULLIF(JSON_EXTRACT_PATH_TEXT(o.m, 'category'), '') AS category,
        NULLIF(JSON_EXTRACT_PATH_TEXT(o.m, 'groupId'), '') AS group_id,
        NULLIF(JSON_EXTRACT_PATH_TEXT(o.m, 'previousId'), '') AS previous_id,
        JSON_EXTRACT_PATH_TEXT(o.m, 'properties') AS properties_text,
        JSON_EXTRACT_PATH_TEXT(o.m, 'traits') AS traits_text,
        NULLIF(JSON_EXTRACT_PATH_TEXT(o.m, 'sentAt'), '') AS message_sent_at,
        NULLIF(JSON_EXTRACT_PATH_TEXT(o.m, 'timestamp'), '') AS timestamp_text,
        JSON_EXTRACT_PATH_TEXT(o.m, 'context') AS context_text,
        JSON_EXTRACT_PATH_TEXT(o.b, 'context') AS batch_context_text,
        NULLIF(JSON_EXTRACT_PATH_TEXT(o.b, 'sentAt'), '') AS batch_sent_at
    FROM env_obj AS o
),
msg_obj AS (
    SELECT
        msg.*,
        CASE WHEN msg.context_text LIKE '{%' AND CAN_JSON_PARSE(msg.context_text) THEN msg.context_text END AS mc,
        CASE WHEN msg.batch_context_text LIKE '{%' AND CAN_JSON_PARSE(msg.batch_context_text)
            THEN msg.batch_context_text END AS bc
    FROM msg
),
ctx_parts AS (
    SELECT
        x.*,
        JSON_EXTRACT_PATH_TEXT(x.mc, 'ip') AS m_ip, JSON_EXTRACT_PATH_TEXT(x.bc, 'ip') AS b_ip,
        JSON_EXTRACT_PATH_TEXT(x.mc, 'direct') AS m_direct, JSON_EXTRACT_PATH_TEXT(x.bc, 'direct') AS b_direct,
        JSON_EXTRACT_PATH_TEXT(x.mc, 'userAgent') AS m_user_agent,
        JSON_EXTRACT_PATH_TEXT(x.bc, 'userAgent') AS b_user_agent,
        JSON_EXTRACT_PATH_TEXT(x.mc, 'locale') AS m_locale, JSON_EXTRACT_PATH_TEXT(x.bc, 'locale') AS b_locale,
        JSON_EXTRACT_PATH_TEXT(x.mc, 'timezone') AS m_timezone,
        JSON_EXTRACT_PATH_TEXT(x.bc, 'timezone') AS b_timezone,
        JSON_EXTRACT_PATH_TEXT(x.mc, 'page') AS m_page, JSON_EXTRACT_PATH_TEXT(x.bc, 'page') AS b_page,
        JSON_EXTRACT_PATH_TEXT(x.mc, 'library') AS m_library, JSON_EXTRACT_PATH_TEXT(x.bc, 'library') AS b_library,
        JSON_EXTRACT_PATH_TEXT(x.mc, 'campaign') AS m_campaign,
        JSON_EXTRACT_PATH_TEXT(x.bc, 'campaign') AS b_campaign,
        JSON_EXTRACT_PATH_TEXT(x.mc, 'traits') AS m_traits, JSON_EXTRACT_PATH_TEXT(x.bc, 'traits') AS b_traits
    FROM msg_obj AS x
),
ctx AS (
    -- Shallow merge: a top-level context key present in the message hides the batch's.
    SELECT
        c.*,
        COALESCE(c.message_type, c.route_type) AS type,
        COALESCE(c.client_message_id, c.request_id || '-' || c.request_index) AS message_id,
        COALESCE(c.message_sent_at, c.batch_sent_at) AS sent_at_text,
        CASE WHEN c.m_ip IS NOT NULL THEN c.m_ip ELSE c.b_ip END AS ctx_ip,
        CASE WHEN c.m_direct IS NOT NULL THEN c.m_direct ELSE c.b_direct END AS ctx_direct,
        CASE WHEN c.m_user_agent IS NOT NULL THEN c.m_user_agent ELSE c.b_user_agent END AS ctx_user_agent,
        CASE WHEN c.m_locale IS NOT NULL THEN c.m_locale ELSE c.b_locale END AS ctx_locale,
        CASE WHEN c.m_timezone IS NOT NULL THEN c.m_timezone ELSE c.b_timezone END AS ctx_timezone,
        CASE WHEN c.m_page IS NOT NULL THEN c.m_page ELSE c.b_page END AS ctx_page,
        CASE WHEN c.m_library IS NOT NULL THEN c.m_library ELSE c.b_library END AS ctx_library,
        CASE WHEN c.m_campaign IS NOT NULL THEN c.m_campaign ELSE c.b_campaign END AS ctx_campaign,
        CASE WHEN c.m_traits IS NOT NULL THEN c.m_traits ELSE c.b_traits END AS ctx_traits
    FROM ctx_parts AS c
),
ctx_obj AS (
    SELECT
        ctx.*,
        CASE WHEN ctx.ctx_page LIKE '{%' AND CAN_JSON_PARSE(ctx.ctx_page) THEN ctx.ctx_page END AS page,
        CASE WHEN ctx.ctx_library LIKE '{%' AND CAN_JSON_PARSE(ctx.ctx_library) THEN ctx.ctx_library END AS library,
        CASE WHEN ctx.ctx_campaign LIKE '{%' AND CAN_JSON_PARSE(ctx.ctx_campaign)
            THEN ctx.ctx_campaign END AS campaign,
        CASE WHEN ctx.properties_text LIKE '{%' AND CAN_JSON_PARSE(ctx.properties_text)
            THEN ctx.properties_text END AS properties,
        CASE
            WHEN ctx.traits_text LIKE '{%' AND CAN_JSON_PARSE(ctx.traits_text) THEN ctx.traits_text
            WHEN ctx.ctx_traits LIKE '{%' AND CAN_JSON_PARSE(ctx.ctx_traits) THEN ctx.ctx_traits
        END AS traits,
        -- BIGINT milliseconds times an interval: DATEADD takes a 32-bit interval. Year 1 to 9999 only.
        CASE WHEN ctx.received_ms BETWEEN -62135596800000 AND 253402300799999
            THEN CAST('1970-01-01 00:00:00' AS TIMESTAMP) + ctx.received_ms * INTERVAL '1 millisecond'
        END AS received_at,
        CASE WHEN ctx.timestamp_text ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}'
            THEN TRY_CAST(ctx.timestamp_text AS TIMESTAMPTZ) END AS original_timestamp,
        CASE WHEN ctx.sent_at_text ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}'
            THEN TRY_CAST(ctx.sent_at_text AS TIMESTAMPTZ) END AS sent_at
    FROM ctx
),
n AS (
    SELECT
        o.*,
        JSON_EXTRACT_PATH_TEXT(o.page, 'url') AS page_url,
        JSON_EXTRACT_PATH_TEXT(o.page, 'path') AS page_path,
        JSON_EXTRACT_PATH_TEXT(o.page, 'title') AS page_title,
        JSON_EXTRACT_PATH_TEXT(o.page, 'referrer') AS page_referrer,
        JSON_EXTRACT_PATH_TEXT(o.page, 'search') AS page_search,
        JSON_EXTRACT_PATH_TEXT(o.library, 'name') AS library_name,
        JSON_EXTRACT_PATH_TEXT(o.library, 'version') AS library_version,
        JSON_EXTRACT_PATH_TEXT(o.campaign, 'name') AS campaign_name,
        JSON_EXTRACT_PATH_TEXT(o.campaign, 'source') AS campaign_source,
        JSON_EXTRACT_PATH_TEXT(o.campaign, 'medium') AS campaign_medium,
        JSON_EXTRACT_PATH_TEXT(o.campaign, 'term') AS campaign_term,
        JSON_EXTRACT_PATH_TEXT(o.campaign, 'content') AS campaign_content,
        -- the event's slug, = segment_schema.snakecase (go-snakecase; docs/warehouse.md). Regexes:
        -- https://docs.aws.amazon.com/redshift/latest/dg/pattern-matching-conditions-posix.html
        LOWER(TRIM(BOTH '_' FROM REGEXP_REPLACE(
            SUBSTRING(REGEXP_REPLACE(o.event_text, '[^[:alnum:]]+', '_'), 1, 2048),
            '([[:lower:]][[:digit:]]*)([[:upper:]])', '\\1_\\2'))) AS event_name,
        -- Segment's client-side libraries: their events get the request's IP and user agent.
        o.route IN ('t', 'i', 'p', 's', 'g', 'a', 'b') OR o.ctx_direct = 'true'
            OR JSON_EXTRACT_PATH_TEXT(o.library, 'name') IN (
                'analytics.js', 'analytics-next', 'analytics-ios', 'analytics-android', 'analytics-swift',
                'analytics-kotlin', 'analytics-react-native', 'analytics-flutter') AS client_side
    FROM ctx_obj AS o
),
judged AS (
    SELECT
        j.*,
        CASE
            WHEN j.record_bytes > 64000 OR j.payload_bytes > 65535 THEN 'record_too_large'
            WHEN j.raw_json IS NULL THEN 'invalid_json'
            WHEN j.d IS NULL THEN 'invalid_envelope'
            WHEN j.envelope_version IS NULL OR j.envelope_version <> '1' THEN 'unsupported_envelope_version'
            WHEN j.received_at IS NULL OR j.source IS NULL OR OCTET_LENGTH(j.source) > 64 THEN 'invalid_envelope'
            WHEN j.m IS NULL THEN 'invalid_message'
            WHEN j.type IS NULL OR j.type NOT IN ('identify', 'track', 'page', 'screen', 'group', 'alias')
                THEN 'invalid_type'
            WHEN j.user_id IS NULL AND j.anonymous_id IS NULL THEN 'missing_user_id_and_anonymous_id'
            WHEN j.type = 'track' AND j.event_text IS NULL THEN 'missing_event'
            WHEN j.type = 'group' AND j.group_id IS NULL THEN 'missing_group_id'
            WHEN j.type = 'alias' AND j.previous_id IS NULL THEN 'missing_previous_id'
            WHEN j.type = 'alias' AND j.user_id IS NULL THEN 'missing_user_id'
            -- no messageId and no request id to derive one from (a record not written by the gateway)
            WHEN j.message_id IS NULL THEN 'missing_message_id'
            -- bytes, not characters: VARCHAR(100) holds 100 bytes
            WHEN OCTET_LENGTH(j.message_id) > 100 THEN 'message_id_too_long'
        END AS reason
    FROM n AS j
)
SELECT
    n.shard_id,
    n.sequence_number,
    n.refresh_time,
    n.reason,
    n.record_bytes,
    -- the record is kept only where it is needed: for rows that go to `rejected`
    -- (none: JSON too large to serialise; the archive has it)
    CASE WHEN n.reason IS NOT NULL THEN
        CASE WHEN n.raw_json IS NOT NULL THEN 'json' WHEN n.raw_hex IS NOT NULL THEN 'hex' ELSE 'none' END
    END AS raw_format,
    CASE WHEN n.reason IS NOT NULL THEN COALESCE(n.raw_json, n.raw_hex) END AS raw_record,
    -- the key `rejected` deduplicates on: the record, or for a truncated one its start and size
    CASE WHEN n.reason IS NOT NULL THEN MD5(COALESCE(n.raw_json, n.raw_hex || ':' || CAST(n.record_bytes AS VARCHAR),
                                                  n.shard_id || ':' || n.sequence_number))
    END AS raw_hash,
    n.message_id,
    n.type,
    n.source,
    f_clickstream_truncate(n.anonymous_id, 1024) AS anonymous_id,
    f_clickstream_truncate(n.user_id, 1024) AS user_id,
    f_clickstream_truncate(n.event_name, 1024) AS event,
    f_clickstream_truncate(n.event_text, 1024) AS event_text,
    f_clickstream_truncate(n.name, 1024) AS name,
    f_clickstream_truncate(n.category, 1024) AS category,
    f_clickstream_truncate(n.group_id, 1024) AS group_id,
    f_clickstream_truncate(n.previous_id, 1024) AS previous_id,
    n.received_at,
    n.sent_at,
    n.original_timestamp,
    CASE
        -- skew correction in BIGINT milliseconds; a result outside year 1..9999 falls back to received_at
        WHEN n.received_at IS NULL THEN NULL  -- a rejected row; received_ms may be anything
        WHEN n.original_timestamp IS NOT NULL AND n.sent_at IS NOT NULL
            AND n.received_ms - DATEDIFF(ms, n.original_timestamp, n.sent_at)
                BETWEEN -62135596800000 AND 253402300799999
            THEN CAST('1970-01-01 00:00:00' AS TIMESTAMP)
                + (n.received_ms - DATEDIFF(ms, n.original_timestamp, n.sent_at)) * INTERVAL '1 millisecond'
        WHEN n.original_timestamp IS NOT NULL AND n.sent_at IS NOT NULL THEN n.received_at
        WHEN n.original_timestamp IS NOT NULL THEN n.original_timestamp
        ELSE n.received_at
    END AS "timestamp",
    f_clickstream_truncate(COALESCE(n.ctx_ip, CASE WHEN n.client_side THEN n.request_ip END), 64) AS context_ip,
    f_clickstream_truncate(COALESCE(n.ctx_user_agent, CASE WHEN n.client_side THEN n.request_user_agent END), 4096)
        AS context_user_agent,
    f_clickstream_truncate(n.page_url, 4096) AS context_page_url,
    f_clickstream_truncate(n.page_path, 4096) AS context_page_path,
    f_clickstream_truncate(n.page_title, 4096) AS context_page_title,
    f_clickstream_truncate(n.page_referrer, 4096) AS context_page_referrer,
    f_clickstream_truncate(n.page_search, 4096) AS context_page_search,
    f_clickstream_truncate(n.library_name, 256) AS context_library_name,
    f_clickstream_truncate(n.library_version, 256) AS context_library_version,
    f_clickstream_truncate(n.ctx_locale, 64) AS context_locale,
    f_clickstream_truncate(n.ctx_timezone, 64) AS context_timezone,
    f_clickstream_truncate(n.campaign_name, 1024) AS context_campaign_name,
    f_clickstream_truncate(n.campaign_source, 1024) AS context_campaign_source,
    f_clickstream_truncate(n.campaign_medium, 1024) AS context_campaign_medium,
    f_clickstream_truncate(n.campaign_term, 1024) AS context_campaign_term,
    f_clickstream_truncate(n.campaign_content, 1024) AS context_campaign_content,
    n.properties,
    n.traits,
    n.mc AS context,
    n.bc AS batch_context,
    f_clickstream_truncate(n.request_id, 128) AS request_id,
    f_clickstream_truncate(n.request_ip, 64) AS request_ip
FROM judged AS n;
