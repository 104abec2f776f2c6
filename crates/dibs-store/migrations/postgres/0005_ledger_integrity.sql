-- Entries from `all_columns_from` on hash every column that is served or replayed (at,
-- kind, request, body), not the body alone, and every idempotency answer is acknowledged in
-- the chain; what was written before keeps the hash it was written with, and the answers
-- there were then (`answers_before`) have no acknowledgement. One row, set once, now.
CREATE TABLE IF NOT EXISTS ledger_format (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    all_columns_from BIGINT NOT NULL,
    answers_before BIGINT NOT NULL
);
INSERT INTO ledger_format (id, all_columns_from, answers_before)
    SELECT 1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM ledger), (SELECT COUNT(*) FROM idempotency);
-- Signed checkpoints of the head: a truncated or rewritten ledger no longer matches them.
CREATE TABLE IF NOT EXISTS heads (
    seq BIGINT PRIMARY KEY,
    hash BYTEA NOT NULL,
    at TEXT NOT NULL,
    public_key BYTEA NOT NULL,
    signature BYTEA NOT NULL
);
