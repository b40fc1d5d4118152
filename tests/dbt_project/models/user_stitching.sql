-- Identity stitching: each anonymous_id to the user_id it was last identified as.
select
    anonymous_id,
    arg_max(user_id, "timestamp") as user_id
from {{ source('segment', 'identifies') }}
where anonymous_id is not null and user_id is not null
group by anonymous_id
