-- clickstream: transaction
-- Everything staged is merged: move the watermark to the newest refresh_time staged (in the same
-- transaction as the inserts, so a failed run leaves it where it was and the next run redoes it).
UPDATE ${schema}.load_state
SET watermark = COALESCE((SELECT MAX(refresh_time) FROM new_records), watermark),
    target = COALESCE((SELECT MAX(refresh_time) FROM new_records), target)
WHERE name = 'events';
