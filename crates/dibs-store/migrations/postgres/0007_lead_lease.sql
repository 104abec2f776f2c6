-- The lead's lease: the leader renews it about once a second from its lock session; a
-- standby that finds it stale past --lease-seconds (a frozen leader still holds its lock)
-- ends the old leader's sessions and takes over, and the epoch fences what the old one
-- still tries to write.
ALTER TABLE leader ADD COLUMN IF NOT EXISTS renewed_at TIMESTAMPTZ NOT NULL DEFAULT now();
