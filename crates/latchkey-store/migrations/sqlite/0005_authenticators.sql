-- Authenticator devices (TOTP, static recovery codes, WebAuthn). Secrets are encrypted at rest
-- by the core; static codes are stored hashed in `data`.
CREATE TABLE authenticator_devices (
    id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    secret TEXT,
    data TEXT NOT NULL,
    confirmed INTEGER NOT NULL CHECK (confirmed IN (0, 1)),
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    last_step BIGINT
);
CREATE INDEX authenticator_devices_user ON authenticator_devices (user_id);
