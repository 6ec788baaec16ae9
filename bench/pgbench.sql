-- The pgbench anchor: one notification as the ledger writes it, in one transaction per
-- notification: the conditional (optimistic-lock) update of the order, then the inbox row.
-- Like the service's workload, 30% of deliveries repeat an order this client already paid (the
-- update then touches no row). Orders id = client_id * stride + 1 .. (client_id + 1) * stride.
-- Variables given with -D: stride, seq=0 (per-client counter), body (\x hex), headers (JSON).
\set r random(1, 100)
\if :r <= 30 and :seq > 0
\set id :client_id * :stride + random(1, :seq)
\else
\set seq least(:seq + 1, :stride)
\set id :client_id * :stride + :seq
\endif
BEGIN;
UPDATE orders
SET status = 'paid',
    needs_review = needs_review OR false,
    paid_amount_minor = 10000,
    paid_at = coalesce(NULL, now()),
    provider_trade_no = coalesce('GP-B-' || :id::text, provider_trade_no),
    updated_at = now()
WHERE id = :id AND status = 'pending'
RETURNING id;
INSERT INTO notifications
    (provider, remote_addr, headers, body, merchant_id, out_trade_no, outcome, detail, order_id)
VALUES ('gopay', '127.0.0.1', :headers::jsonb, :body::bytea, '100001', 'B-' || :id::text,
        'applied', '', :id)
RETURNING id;
END;
