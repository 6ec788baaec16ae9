-- The reconciler's state per order (SPEC "Tables": `order_queries`), kept so that a pass costs
-- the same per order whatever the backlog: due orders are read in (next_at, order_id) order from
-- one index, each pass continuing after the last key it saw instead of excluding the ids it saw.
--
-- Every pending order has a row from its insert on (a trigger: orders are inserted by the
-- merchant's checkout, which knows nothing of the reconciler), due at first at its created_at:
-- the first pass that meets it puts it back to its first query time, which depends on
-- `reconcile.first_after_s` and so only the configuration knows. A row whose order is no longer
-- pending or past the query window is retired with next_at = 'infinity' when a pass meets it.
ALTER TABLE order_queries
    ADD COLUMN provider             text,
    ADD COLUMN last_outcome         text,
    ADD COLUMN last_notification_id bigint,
    ADD COLUMN unstored             integer NOT NULL DEFAULT 0;

COMMENT ON COLUMN order_queries.attempts IS 'queries made';
COMMENT ON COLUMN order_queries.last_at IS 'when the last query was made';
COMMENT ON COLUMN order_queries.last_result IS 'what the gateway answered, classified';
COMMENT ON COLUMN order_queries.last_outcome IS 'what the last reply came to (an outcome)';
COMMENT ON COLUMN order_queries.last_notification_id IS 'the row stored for the last reply, if any';
COMMENT ON COLUMN order_queries.unstored IS 'replies that changed nothing: counted, not stored';

UPDATE order_queries q SET provider = o.provider FROM orders o WHERE o.id = q.order_id;
INSERT INTO order_queries (order_id, provider, next_at)
SELECT id, provider, created_at FROM orders WHERE status = 'pending'
ON CONFLICT (order_id) DO NOTHING;
ALTER TABLE order_queries ALTER COLUMN provider SET NOT NULL;

DROP INDEX order_queries_next_at_idx;
CREATE INDEX order_queries_due_idx ON order_queries (provider, next_at, order_id);

CREATE FUNCTION order_queries_track() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO order_queries (order_id, provider, next_at)
    SELECT id, provider, created_at FROM new_orders WHERE status = 'pending'
    ON CONFLICT (order_id) DO NOTHING;
    RETURN NULL;
END;
$$;
CREATE TRIGGER order_queries_track
AFTER INSERT ON orders
REFERENCING NEW TABLE AS new_orders
FOR EACH STATEMENT EXECUTE FUNCTION order_queries_track();

-- An order whose created_at is corrected before its first query is scheduled from the new one.
CREATE FUNCTION order_queries_reschedule() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE order_queries SET next_at = NEW.created_at WHERE order_id = NEW.id AND attempts = 0;
    RETURN NULL;
END;
$$;
CREATE TRIGGER order_queries_reschedule
AFTER UPDATE OF created_at ON orders
FOR EACH ROW WHEN (OLD.created_at IS DISTINCT FROM NEW.created_at)
EXECUTE FUNCTION order_queries_reschedule();
