-- Tokens can expire and be revoked; `id` is the public handle an admin revokes by (the
-- first 16 hex digits of the hash: it names a token without being one).
ALTER TABLE tokens ADD COLUMN created_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN expires_at BIGINT;
ALTER TABLE tokens ADD COLUMN revoked_at BIGINT;
