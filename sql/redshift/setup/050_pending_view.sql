-- The Segment semantics of the model, in one place: what each pending streaming-view row becomes.
-- Pending = merged by no run yet: refresh_time in (watermark, target] of load_state.
--   * batch-level context is merged under the message's own: per top-level context key, the
--     message's value wins when the message has that key (Segment's shallow merge);
--   * receivedAt from the gateway, originalTimestamp = the client's timestamp,
--     timestamp = receivedAt - (sentAt - originalTimestamp) (device clock-skew correction);
--   * messageId, when the client sent none, is derived from the request id and position, so
--     re-reading the same record (replay, retry of the merge) gives the same id;
--   * context.ip comes from the request for client-side libraries, or when context.direct is true;
--   * reason is non-null when the row cannot be an event: it then goes to `rejected`.
-- Each layer extracts every JSON value exactly once (JSON text is parsed per extraction), and only
-- JSON objects are navigated further, so a string like "{oops" cannot break the merge.
CREATE OR REPLACE VIEW ${schema}.pending AS
WITH w AS (
    SELECT watermark, target FROM ${schema}.load_state WHERE name = 'events'
),
r AS (
    SELECT
        v.sequence_number,
        v.refresh_time,
        CASE WHEN v.payload IS NOT NULL THEN JSON_SERIALIZE(v.payload) END AS raw_json,
        CASE WHEN v.payload IS NULL THEN FROM_VARBYTE(v.raw_data, 'hex') END AS raw_hex
    FROM ${schema}.${mv} AS v
    JOIN w ON v.refresh_time > w.watermark AND v.refresh_time <= w.target
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
        DATEADD(ms, ctx.received_ms, CAST('1970-01-01 00:00:00' AS TIMESTAMP)) AS received_at,
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
            WHEN j.raw_json IS NULL THEN 'invalid_json'
            WHEN j.d IS NULL THEN 'invalid_envelope'
            WHEN j.envelope_version IS NULL OR j.envelope_version <> '1' THEN 'unsupported_envelope_version'
            WHEN j.received_ms IS NULL OR j.source IS NULL THEN 'invalid_envelope'
            WHEN j.m IS NULL THEN 'invalid_message'
            WHEN j.type IS NULL OR j.type NOT IN ('identify', 'track', 'page', 'screen', 'group', 'alias')
                THEN 'invalid_type'
            WHEN j.user_id IS NULL AND j.anonymous_id IS NULL THEN 'missing_user_id_and_anonymous_id'
            WHEN j.type = 'track' AND j.event_text IS NULL THEN 'missing_event'
            WHEN j.type = 'group' AND j.group_id IS NULL THEN 'missing_group_id'
            WHEN j.type = 'alias' AND j.previous_id IS NULL THEN 'missing_previous_id'
            WHEN j.type = 'alias' AND j.user_id IS NULL THEN 'missing_user_id'
            WHEN LEN(j.message_id) > 100 THEN 'message_id_too_long'
        END AS reason
    FROM n AS j
)
SELECT
    n.sequence_number,
    n.refresh_time,
    n.reason,
    -- the raw record is kept only where it is needed: for rows that go to `rejected`
    CASE WHEN n.reason IS NOT NULL THEN CASE WHEN n.raw_json IS NULL THEN 'hex' ELSE 'json' END END AS raw_format,
    CASE WHEN n.reason IS NOT NULL THEN COALESCE(n.raw_json, n.raw_hex) END AS raw,
    n.message_id,
    n.type,
    n.source,
    n.anonymous_id,
    n.user_id,
    TRIM(BOTH '_' FROM REGEXP_REPLACE(LOWER(n.event_text), '[^a-z0-9]+', '_')) AS event,
    n.event_text,
    n.name,
    n.category,
    n.group_id,
    n.previous_id,
    n.received_at,
    n.sent_at,
    n.original_timestamp,
    CASE
        WHEN n.original_timestamp IS NOT NULL AND n.sent_at IS NOT NULL
            THEN DATEADD(ms, -DATEDIFF(ms, n.original_timestamp, n.sent_at), n.received_at)
        WHEN n.original_timestamp IS NOT NULL THEN n.original_timestamp
        ELSE n.received_at
    END AS "timestamp",
    COALESCE(n.ctx_ip, CASE WHEN n.client_side THEN n.request_ip END) AS context_ip,
    COALESCE(n.ctx_user_agent, CASE WHEN n.client_side THEN n.request_user_agent END) AS context_user_agent,
    n.page_url AS context_page_url,
    n.page_path AS context_page_path,
    n.page_title AS context_page_title,
    n.page_referrer AS context_page_referrer,
    n.page_search AS context_page_search,
    n.library_name AS context_library_name,
    n.library_version AS context_library_version,
    n.ctx_locale AS context_locale,
    n.ctx_timezone AS context_timezone,
    n.campaign_name AS context_campaign_name,
    n.campaign_source AS context_campaign_source,
    n.campaign_medium AS context_campaign_medium,
    n.campaign_term AS context_campaign_term,
    n.campaign_content AS context_campaign_content,
    n.properties,
    n.traits,
    n.request_id,
    n.request_ip
FROM judged AS n;
