-- The tables of the first release. IF NOT EXISTS: a schema made before schema versions
-- were kept already has them, and this step adopts it.
CREATE TABLE IF NOT EXISTS ledger (
    seq BIGINT PRIMARY KEY,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    request TEXT,
    body TEXT NOT NULL,
    prev_hash BYTEA NOT NULL,
    hash BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    request_digest TEXT NOT NULL,
    status INTEGER NOT NULL,
    response TEXT NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    view TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS timers (
    key TEXT PRIMARY KEY,
    due BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    key TEXT PRIMARY KEY,
    due BIGINT NOT NULL,
    body TEXT NOT NULL,
    claimed_until BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY,
    role TEXT NOT NULL
);
