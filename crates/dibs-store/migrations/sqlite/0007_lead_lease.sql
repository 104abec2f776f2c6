-- The lead's lease (PostgreSQL: a standby takes over from a leader that stops renewing
-- it). SQLite has one process per ledger and no standby; the column keeps the two
-- schemas alike and is never read here.
ALTER TABLE leader ADD COLUMN renewed_at INTEGER NOT NULL DEFAULT 0;
