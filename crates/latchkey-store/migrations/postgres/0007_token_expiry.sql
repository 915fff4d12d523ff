-- Expired tokens (authorization codes, rotated refresh tokens, links) are purged by the
-- housekeeping job; this index keeps that a range delete.
CREATE INDEX tokens_expires_idx ON tokens (expires_at);
