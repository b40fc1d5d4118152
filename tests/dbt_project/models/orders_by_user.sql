-- Revenue per user from the per-event table (properties as columns), with the user's traits.
select
    o.user_id,
    u.email,
    count(*) as orders,
    sum(o.price) as revenue,
    min(o.currency) as currency
from {{ source('segment', 'order_completed') }} as o
left join {{ source('segment', 'users') }} as u on u.id = o.user_id
where o.user_id is not null
group by o.user_id, u.email
