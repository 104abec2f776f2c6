-- The latest snapshot of the service's state (see `Batch::snapshot`): `seq` is the ledger
-- entry of kind `snapshot` that records the SHA-256 of `state` and of `shell`, so a
-- start can trust it without replaying what it covers and `dibs ledger verify` can check
-- it against a replay. Only the latest is kept.
CREATE TABLE IF NOT EXISTS snapshots (
    seq BIGINT PRIMARY KEY,
    state TEXT NOT NULL,
    shell TEXT NOT NULL
);
