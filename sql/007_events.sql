-- Events for downstream services (SPEC.md "Events for downstream services"): a cursor that
-- never skips, and forwarding with one row per (event, destination).

-- The writing transaction's id. An event id is drawn before its transaction commits, so ids
-- commit out of order; a transaction id below pg_snapshot_xmin(pg_current_snapshot()) belongs
-- to a transaction that has ended, so every event at or below such a position is visible for
-- good. The cursor is (xid, id), read only below that horizon.
ALTER TABLE order_events
    ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX order_events_cursor_idx ON order_events (xid, id);

-- The feed's horizon: pg_snapshot_xmin(pg_current_snapshot()), except that transactions of
-- other databases on the same server (which cannot write these tables) do not hold it back.
-- A running transaction counts as another database's only when pg_locks shows its owner
-- there; one that ended since the snapshot counts as ours, which only delays the reader.
-- STABLE, so it sees the calling statement's snapshot (a VOLATILE one would take its own).
CREATE FUNCTION receiver_event_horizon() RETURNS xid8
LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        (SELECT min(x) FROM pg_snapshot_xip(pg_current_snapshot()) AS x
         WHERE x::xid NOT IN (
             SELECT l.transactionid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted
               AND a.datname IS DISTINCT FROM current_database())),
        pg_snapshot_xmax(pg_current_snapshot()))
$$;

-- Forwarding: one row per event and destination that wants it. `next_at` is when it is due; a
-- process claims a due row by moving `next_at` past the attempt's timeout (a lease), so a
-- process killed mid-attempt leaves it due again, and `attempts` fences a late finisher.
CREATE TABLE deliveries (
    event_id     bigint      NOT NULL REFERENCES order_events (id),
    destination  text        NOT NULL,
    state        text        NOT NULL DEFAULT 'pending'
                             CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts     integer     NOT NULL DEFAULT 0,
    next_at      timestamptz NOT NULL DEFAULT now(),
    last_status  integer,
    last_error   text,
    delivered_at timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    -- Beyond the contract's columns: what ordering and giving up need, and what an operator
    -- reads (the request line and the reply's first bytes, short; never a secret).
    order_id     bigint      NOT NULL,
    xid          xid8        NOT NULL,
    event_at     timestamptz NOT NULL,
    give_up_at   timestamptz NOT NULL,
    last_request text,
    last_reply   text,
    PRIMARY KEY (event_id, destination)
);
CREATE INDEX deliveries_due_idx ON deliveries (destination, next_at) WHERE state = 'pending';
-- "Is an earlier event of this order still pending for this destination?"
CREATE INDEX deliveries_order_idx ON deliveries (destination, order_id, xid, event_id)
    WHERE state = 'pending';
CREATE INDEX deliveries_failed_idx ON deliveries (destination) WHERE state = 'failed';

-- Where the forwarder has read the event feed up to, per destination. Rows are claimed with
-- FOR UPDATE SKIP LOCKED, so one process at a time turns events into deliveries.
CREATE TABLE forward_cursors (
    destination text   PRIMARY KEY,
    xid         xid8   NOT NULL,
    event_id    bigint NOT NULL
);
