-- Invitations to enroll: a link usable a number of times until it expires.
CREATE TABLE invitations (
    id TEXT PRIMARY KEY NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    created_by TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    max_uses BIGINT NOT NULL,
    uses BIGINT NOT NULL,
    fixed_email TEXT,
    groups TEXT NOT NULL,
    flow_slug TEXT NOT NULL
);
