-- clickstream: transaction
-- The merge, from here to 070, is one transaction (one BatchExecuteStatement, one session), so its
-- TEMP tables live until it ends and a failure leaves nothing half done.
-- new_records: the streaming view's rows past the watermark (literal bound, see the procedure).
CALL ${schema}.stage_new_records();
