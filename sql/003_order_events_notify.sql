-- Announce every order_events row, however it was written: NOTIFY order_events, '<id>'.
-- Delivered on commit, so listeners never hear of a change that was rolled back.
CREATE FUNCTION order_events_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('order_events', NEW.id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER order_events_notify
AFTER INSERT ON order_events
FOR EACH ROW EXECUTE FUNCTION order_events_notify();
