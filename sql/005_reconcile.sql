-- Reconciliation, replay and operators' review (SPEC.md "Tables", "Reconciliation").

-- Where a stored notification came from: pushed by the gateway, an order-query reply, or an
-- operator's replay of an earlier row (`replay_of`).
ALTER TABLE notifications
    ADD COLUMN source    text   NOT NULL DEFAULT 'notify'
                                CHECK (source IN ('notify', 'query', 'replay')),
    ADD COLUMN replay_of bigint REFERENCES notifications (id);
CREATE INDEX notifications_replay_of_idx ON notifications (replay_of) WHERE replay_of IS NOT NULL;
-- `replay --outcome O --since D` and `notifications list --outcome O`.
CREATE INDEX notifications_outcome_idx ON notifications (outcome, received_at);

-- `orders resolve`: what the person who dealt with a flagged order wrote, and when.
ALTER TABLE orders
    ADD COLUMN review_note text,
    ADD COLUMN reviewed_at timestamptz;
CREATE INDEX orders_needs_review_idx ON orders (id) WHERE needs_review;
-- The reconciler's scan and `orders list --overdue`: pending orders by age.
CREATE INDEX orders_pending_created_at_idx ON orders (provider, created_at) WHERE status = 'pending';

-- The reconciler's schedule, shared by every process on the database: an order is claimed by
-- the one statement that moves its `next_at` past now(), so each due order is queried once per
-- interval however many workers or replicas look. A row appears with the order's first query.
CREATE TABLE order_queries (
    order_id    bigint      PRIMARY KEY REFERENCES orders (id) ON DELETE CASCADE,
    attempts    integer     NOT NULL DEFAULT 0,
    next_at     timestamptz NOT NULL,
    last_at     timestamptz,
    last_result text
);
CREATE INDEX order_queries_next_at_idx ON order_queries (next_at);
