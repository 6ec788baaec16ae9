-- The pgbench anchor: the plainest form of the work the ledger does for one notification, one
-- transaction per notification: the conditional update of the order found by its key
-- (provider, merchant_id, out_trade_no), then the inbox row (the body and the three signature
-- headers as jsonb). Like the service's workload, 30% of deliveries repeat an order this client
-- already paid (the update then touches no row). Orders B-<n> for
-- n = client_id * stride + 1 .. (client_id + 1) * stride.
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
SET status = 'paid', paid_amount_minor = 10000, paid_at = now(),
    provider_trade_no = 'GP-B-' || :id, updated_at = now()
WHERE provider = 'gopay' AND merchant_id = '100001' AND out_trade_no = 'B-' || :id
  AND status = 'pending';
INSERT INTO notifications
    (provider, remote_addr, headers, body, merchant_id, out_trade_no, outcome, order_id)
VALUES ('gopay', '127.0.0.1', :headers::jsonb, :body::bytea, '100001', 'B-' || :id,
        'applied', :id);
END;
