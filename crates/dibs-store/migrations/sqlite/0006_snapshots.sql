-- Snapshots of the service's state (see `Store::snapshot`). A snapshot is announced by a
-- `snapshot_taken` ledger entry (`taken`, its sequence number), written in parts of about a
-- megabyte each (`snapshot_chunks`, `part` 0 the state, 1 the shell's), and recorded by a
-- later `snapshot` entry (`seq`) that holds the SHA-256 of both parts. `snapshots` names the
-- latest recorded one; chunks of any other are left over and deleted.
CREATE TABLE IF NOT EXISTS snapshots (
    taken BIGINT PRIMARY KEY,
    seq BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshot_chunks (
    taken BIGINT NOT NULL,
    part INTEGER NOT NULL,
    n INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (taken, part, n)
);
