-- The ledger's optimistic check for a batch written in one statement: if an order moved or a
-- nonce was claimed by someone else since the batch read them, abort the statement (and so
-- everything it wrote) with a serialization failure; the ledger reads again and retries.
CREATE FUNCTION receiver_check_batch(moved bigint, planned_moves int,
                                     claimed bigint, planned_claims int)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF moved <> planned_moves OR claimed <> planned_claims THEN
        RAISE EXCEPTION 'batch lost a race: moved % of % orders, claimed % of % nonces',
            moved, planned_moves, claimed, planned_claims
            USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN true;
END;
$$;
