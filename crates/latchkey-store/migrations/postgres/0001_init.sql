-- Latchkey schema, version 1 (PostgreSQL).
-- Column types readable through sqlx's Any driver: BIGINT (times as unix milliseconds), BOOLEAN,
-- TEXT (UUIDs, JSON documents). Kept column for column in step with migrations/sqlite.

CREATE TABLE users (
    id TEXT PRIMARY KEY NOT NULL,
    username TEXT NOT NULL,
    name TEXT NOT NULL,
    email TEXT,
    is_active BOOLEAN NOT NULL,
    kind TEXT NOT NULL,
    attributes TEXT NOT NULL,
    password_hash TEXT,
    password_changed_at BIGINT,
    uid_number BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    last_login BIGINT
);
CREATE UNIQUE INDEX users_username_key ON users (lower(username));
CREATE UNIQUE INDEX users_uid_number_key ON users (uid_number);
CREATE INDEX users_email_idx ON users (lower(email));

CREATE TABLE groups (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    parent_id TEXT REFERENCES groups (id) ON DELETE SET NULL,
    is_superuser BOOLEAN NOT NULL,
    attributes TEXT NOT NULL,
    gid_number BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX groups_name_key ON groups (lower(name));
CREATE UNIQUE INDEX groups_gid_number_key ON groups (gid_number);
CREATE INDEX groups_parent_idx ON groups (parent_id);

CREATE TABLE group_members (
    group_id TEXT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX group_members_user_idx ON group_members (user_id);

CREATE TABLE sessions (
    key_hash TEXT PRIMARY KEY NOT NULL,
    id TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    client_ip TEXT,
    user_agent TEXT,
    amr TEXT NOT NULL
);
CREATE INDEX sessions_user_idx ON sessions (user_id);
CREATE INDEX sessions_id_idx ON sessions (id);
CREATE INDEX sessions_expires_idx ON sessions (expires_at);

CREATE TABLE flows (
    id TEXT PRIMARY KEY NOT NULL,
    slug TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    title TEXT NOT NULL,
    designation TEXT NOT NULL,
    settings TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE stages (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    config TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE flow_stage_bindings (
    id TEXT PRIMARY KEY NOT NULL,
    flow_id TEXT NOT NULL REFERENCES flows (id) ON DELETE CASCADE,
    stage_id TEXT NOT NULL REFERENCES stages (id) ON DELETE CASCADE,
    "order" BIGINT NOT NULL,
    settings TEXT NOT NULL,
    UNIQUE (flow_id, stage_id, "order")
);
CREATE INDEX flow_stage_bindings_stage_idx ON flow_stage_bindings (stage_id);

CREATE TABLE flow_states (
    key TEXT PRIMARY KEY NOT NULL,
    data TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX flow_states_expires_idx ON flow_states (expires_at);

CREATE TABLE tokens (
    id TEXT PRIMARY KEY NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    user_id TEXT REFERENCES users (id) ON DELETE CASCADE,
    description TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    used_at BIGINT
);
CREATE INDEX tokens_user_idx ON tokens (user_id);

-- No foreign key to users: the audit trail outlives the accounts it mentions.
CREATE TABLE events (
    id TEXT PRIMARY KEY NOT NULL,
    created_at BIGINT NOT NULL,
    action TEXT NOT NULL,
    user_id TEXT,
    username TEXT,
    client_ip TEXT,
    context TEXT NOT NULL
);
CREATE INDEX events_created_idx ON events (created_at);
CREATE INDEX events_action_idx ON events (action);

CREATE TABLE settings (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

-- The change feed other processes follow (cache invalidation).
CREATE TABLE changes (
    seq BIGSERIAL PRIMARY KEY,
    created_at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT
);
CREATE INDEX changes_created_idx ON changes (created_at);

-- Wakes every listening instance when a transaction that recorded a change commits
-- (NOTIFY is delivered at commit, and not at all on rollback).
CREATE FUNCTION latchkey_notify_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('latchkey_changes', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER changes_notify AFTER INSERT ON changes
    FOR EACH STATEMENT EXECUTE FUNCTION latchkey_notify_changes();
