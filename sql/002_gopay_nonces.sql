-- GoPay nonces seen within the freshness window: a nonce used twice is a replay.
-- Shared by every service process on the database; old rows are pruned by the ledger.
CREATE TABLE gopay_nonces (
    nonce   text        PRIMARY KEY,
    seen_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX gopay_nonces_seen_at_idx ON gopay_nonces (seen_at);
