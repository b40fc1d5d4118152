-- Product funnel from the tracks table and a per-event table, per day.
select
    cast(t.received_at as date) as day,
    count(distinct case when t.event = 'product_viewed' then coalesce(t.user_id, t.anonymous_id) end) as viewers,
    count(distinct case when t.event = 'order_completed' then coalesce(t.user_id, t.anonymous_id) end) as buyers,
    (select count(distinct product_id) from {{ source('segment', 'product_viewed') }}) as products_viewed
from {{ source('segment', 'tracks') }} as t
group by 1
