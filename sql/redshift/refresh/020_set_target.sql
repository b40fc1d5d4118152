-- Everything refreshed so far is what this run merges.
UPDATE ${schema}.load_state
SET target = COALESCE((SELECT MAX(refresh_time) FROM ${schema}.${mv}), target)
WHERE name = 'events';
