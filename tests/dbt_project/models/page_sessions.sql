-- Sessionization over pages, as the common Segment web packages do: a new session after 30 minutes
-- without a page view, per anonymous_id; landing page, referrer and UTM source of each session.
with pages as (
    select
        id,
        anonymous_id,
        "timestamp" as tstamp,
        url,
        path,
        title,
        referrer,
        search,
        context_campaign_source as utm_source
    from {{ source('segment', 'pages') }}
    where anonymous_id is not null
),

gaps as (
    select
        *,
        case
            when lag(tstamp) over (partition by anonymous_id order by tstamp, id) is null then 1
            when tstamp > lag(tstamp) over (partition by anonymous_id order by tstamp, id) + interval '30 minutes'
                then 1
            else 0
        end as new_session
    from pages
),

numbered as (
    select
        *,
        sum(new_session) over (partition by anonymous_id order by tstamp, id rows unbounded preceding)
            as session_number
    from gaps
)

select
    anonymous_id || '-' || cast(session_number as varchar) as session_id,
    anonymous_id,
    session_number,
    min(tstamp) as started_at,
    max(tstamp) as ended_at,
    count(*) as page_views,
    arg_min(url, tstamp) as landing_url,
    arg_min(path, tstamp) as landing_path,
    arg_min(referrer, tstamp) as referrer,
    arg_min(utm_source, tstamp) as utm_source
from numbered
group by anonymous_id, session_number
