-- `notifications` partitioned by month of `received_at`, so that old months are dropped whole
-- (`[retention]`, `receiver prune`). This rewrites an existing table: every row keeps its id.
--
-- A partitioned table's primary key must include the partition key, so it becomes
-- (id, received_at); ids stay unique in practice because one sequence draws them all. Foreign
-- keys that point at notifications(id) cannot point at a partitioned table's part of a key and
-- would forbid dropping a month, so they go: an event whose notification was pruned keeps its
-- notification_id. Whatever references it (order_events, replay_of, any later table) is found
-- in the catalog rather than named here.
DO $$
DECLARE
    fk record;
BEGIN
    FOR fk IN
        SELECT c.conrelid::regclass AS tbl, c.conname
        FROM pg_constraint c
        WHERE c.contype = 'f' AND c.confrelid = 'notifications'::regclass
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', fk.tbl, fk.conname);
    END LOOP;
END;
$$;

ALTER TABLE notifications RENAME TO notifications_unpartitioned;
ALTER TABLE notifications_unpartitioned ALTER COLUMN id DROP IDENTITY IF EXISTS;
DROP INDEX IF EXISTS notifications_order_id_idx, notifications_lookup_idx,
    notifications_replay_of_idx, notifications_outcome_idx;

-- The same columns, defaults and checks, whatever earlier migrations added.
CREATE TABLE notifications (
    LIKE notifications_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS
) PARTITION BY RANGE (received_at);

CREATE SEQUENCE notifications_id_seq AS bigint OWNED BY notifications.id;
ALTER TABLE notifications ALTER COLUMN id SET DEFAULT nextval('notifications_id_seq');
SELECT setval('notifications_id_seq',
              coalesce((SELECT max(id) FROM notifications_unpartitioned), 0) + 1, false);

-- Rows whose month has no partition of its own land here, so an insert never fails.
CREATE TABLE notifications_default PARTITION OF notifications DEFAULT;

-- The partition of the month starting at `month` (a first of the month, UTC), created when
-- missing. Rows of that month that went to the default partition meanwhile move into it first:
-- attaching checks that the default holds none of them.
CREATE FUNCTION receiver_notifications_month(month date) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    name   text := 'notifications_' || to_char(month, 'YYYY_MM');
    since  timestamptz := month::timestamp AT TIME ZONE 'UTC';
    before timestamptz := (month + interval '1 month')::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN name;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE notifications INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                   name);
    -- No row of that month may reach the default between the move and the attach.
    LOCK TABLE notifications_default IN SHARE ROW EXCLUSIVE MODE;
    EXECUTE format('WITH moved AS (DELETE FROM notifications_default
                                   WHERE received_at >= $1 AND received_at < $2 RETURNING *)
                    INSERT INTO %I SELECT * FROM moved', name) USING since, before;
    EXECUTE format('ALTER TABLE notifications ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   name, since, before);
    RETURN name;
END;
$$;

-- Every month from `first` to `ahead` months after the current one has its partition.
CREATE FUNCTION receiver_notifications_months(first date, ahead integer) RETURNS void
LANGUAGE sql AS $$
    SELECT receiver_notifications_month(m::date)
    FROM generate_series(date_trunc('month', first::timestamp),
                         date_trunc('month', (now() AT TIME ZONE 'UTC'))
                             + make_interval(months => ahead),
                         interval '1 month') AS m;
$$;

-- `receiver prune`: hold a month still while it is archived (rows cannot be added to or taken
-- from it; other months are written as usual), then drop it whole.
CREATE FUNCTION receiver_notifications_hold(month date) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('LOCK TABLE %I IN SHARE MODE', 'notifications_' || to_char(month, 'YYYY_MM'));
END;
$$;

CREATE FUNCTION receiver_notifications_drop(month date) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DROP TABLE %I', 'notifications_' || to_char(month, 'YYYY_MM'));
END;
$$;

SELECT receiver_notifications_months(
    coalesce((SELECT min(received_at) AT TIME ZONE 'UTC' FROM notifications_unpartitioned),
             now() AT TIME ZONE 'UTC')::date,
    2);

INSERT INTO notifications SELECT * FROM notifications_unpartitioned;
DROP TABLE notifications_unpartitioned;

-- Indexes after the copy: built once per partition rather than row by row.
ALTER TABLE notifications ADD PRIMARY KEY (id, received_at);
CREATE INDEX notifications_order_id_idx ON notifications (order_id);
CREATE INDEX notifications_lookup_idx ON notifications (provider, merchant_id, out_trade_no);
CREATE INDEX notifications_replay_of_idx ON notifications (replay_of) WHERE replay_of IS NOT NULL;
CREATE INDEX notifications_outcome_idx ON notifications (outcome, received_at);
