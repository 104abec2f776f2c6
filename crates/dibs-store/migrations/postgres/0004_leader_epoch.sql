-- The leader's epoch: each replica that takes the lead bumps it, and every append checks
-- it, so a replica that lost the lead without noticing cannot write (fencing). One row.
CREATE TABLE IF NOT EXISTS leader (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch BIGINT NOT NULL
);
