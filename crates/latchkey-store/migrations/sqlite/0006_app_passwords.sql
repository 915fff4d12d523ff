-- App passwords: per-user secrets for clients that cannot log in through a browser (Basic
-- auth through forward auth). Only the SHA-256 of the random secret is kept.
CREATE TABLE app_passwords (
    id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    -- JSON array of application ids, or NULL for every application.
    applications TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    last_used_at BIGINT,
    UNIQUE (user_id, name)
);
CREATE INDEX app_passwords_user ON app_passwords (user_id);
