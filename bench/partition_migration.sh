#!/bin/bash
# Times sql/009_notifications_partitioned.sql over a populated notifications table (not part of
# `python -m bench`): a throwaway database with migrations 001-008, ROWS notifications over
# twelve months and an event for every tenth, then 009 applied with psql, each statement timed.
# Run from the project root. Needs about twice the table's size in free disk space.
set -e
U=${BENCH_ADMIN_URL:-postgresql://postgres@127.0.0.1:5432}
DB=${BENCH_DB:-receiver_partition_bench}
ROWS=${ROWS:-10000000}
psql -q $U/postgres -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
for f in sql/00[1-8]_*.sql; do psql -q -v ON_ERROR_STOP=1 $U/$DB -f $f; done
start=$(date +%s)
psql -q -v ON_ERROR_STOP=1 -v rows=$ROWS $U/$DB <<'SQL'
INSERT INTO orders (provider, merchant_id, out_trade_no, amount_minor, status)
SELECT 'gopay', '100001', 'T' || g, 10000, 'paid' FROM generate_series(1, 1000000) g;
INSERT INTO notifications (provider, received_at, remote_addr, headers, body, merchant_id, out_trade_no, outcome, detail, order_id, source)
SELECT 'gopay', now() - (g % 365) * interval '1 day' - (g % 86400) * interval '1 second', '10.0.0.1',
       '{"content-type": "application/json", "x-gopay-signature": "c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJl", "x-gopay-nonce": "abcdef0123456789", "x-gopay-timestamp": "1765000000"}'::jsonb,
       convert_to('{"result_code":"OK","result_msg":"SUCCESS","mchid":"100001","out_trade_no":"T' || (g % 1000000 + 1) || '","transaction_id":"42000' || g || '","trade_state":"SUCCESS","amount":{"total":10000,"payer_total":10000,"currency":"CNY"},"success_time":"2026-01-01T00:00:00+08:00","attach":"' || repeat('x', 200) || '"}', 'UTF8'),
       '100001', 'T' || (g % 1000000 + 1), CASE WHEN g % 10 = 0 THEN 'applied' ELSE 'duplicate' END, '', g % 1000000 + 1, 'notify'
FROM generate_series(1, :rows) g;
INSERT INTO order_events (order_id, from_status, to_status, notification_id)
SELECT g % 1000000 + 1, 'pending', 'paid', g FROM generate_series(10, :rows, 10) g;
VACUUM ANALYZE notifications;
SQL
echo "load_s $(( $(date +%s) - start ))"
psql -At $U/$DB -c "select count(*), pg_size_pretty(pg_total_relation_size('notifications')) from notifications"
start=$(date +%s.%N)
psql -q -v ON_ERROR_STOP=1 $U/$DB -c '\timing on' -f sql/009_notifications_partitioned.sql
echo "migrate_s $(echo "$(date +%s.%N) - $start" | bc)"
psql -At $U/$DB -c "select count(*), count(distinct id), min(id), max(id) from notifications"
psql -At $U/$DB -c "select count(*) from pg_inherits where inhparent='notifications'::regclass"
psql -q $U/postgres -c "DROP DATABASE $DB WITH (FORCE)"
