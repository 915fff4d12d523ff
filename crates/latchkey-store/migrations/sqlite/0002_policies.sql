-- Latchkey schema, version 2 (SQLite): policies and their bindings, applications, providers,
-- outposts, consent grants, login throttling and reputation.

CREATE TABLE policies (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    config TEXT NOT NULL,
    execution_logging INTEGER NOT NULL CHECK (execution_logging IN (0, 1)),
    created_at BIGINT NOT NULL
);

-- Targets and subjects are polymorphic (no foreign keys): the store deletes the bindings of a
-- deleted policy, user, group, flow, stage binding or application in the same transaction.
CREATE TABLE policy_bindings (
    id TEXT PRIMARY KEY NOT NULL,
    target_kind TEXT NOT NULL,
    target_id TEXT NOT NULL,
    subject_kind TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    "order" BIGINT NOT NULL,
    negate INTEGER NOT NULL CHECK (negate IN (0, 1)),
    enabled INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    timeout_ms BIGINT NOT NULL,
    failure_result INTEGER NOT NULL CHECK (failure_result IN (0, 1)),
    created_at BIGINT NOT NULL,
    UNIQUE (target_kind, target_id, subject_kind, subject_id)
);
CREATE INDEX policy_bindings_target_idx ON policy_bindings (target_kind, target_id);
CREATE INDEX policy_bindings_subject_idx ON policy_bindings (subject_kind, subject_id);

CREATE TABLE providers (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    authorization_flow_id TEXT REFERENCES flows (id) ON DELETE SET NULL,
    config TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX providers_flow_idx ON providers (authorization_flow_id);

CREATE TABLE applications (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    slug TEXT NOT NULL UNIQUE,
    provider_id TEXT REFERENCES providers (id) ON DELETE SET NULL,
    launch_url TEXT,
    icon TEXT,
    description TEXT NOT NULL,
    "group" TEXT,
    policy_engine_mode TEXT NOT NULL,
    open_in_new_tab INTEGER NOT NULL CHECK (open_in_new_tab IN (0, 1)),
    created_at BIGINT NOT NULL
);
CREATE INDEX applications_provider_idx ON applications (provider_id);

-- provider_ids: a JSON array of provider ids.
CREATE TABLE outposts (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    provider_ids TEXT NOT NULL,
    config TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- permissions: a JSON array of strings.
CREATE TABLE consent_grants (
    id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    application_id TEXT NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    permissions TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    UNIQUE (user_id, application_id)
);
CREATE INDEX consent_grants_application_idx ON consent_grants (application_id);

CREATE TABLE throttles (
    key TEXT PRIMARY KEY NOT NULL,
    failures BIGINT NOT NULL,
    window_start BIGINT NOT NULL,
    last_failure BIGINT NOT NULL,
    blocked_until BIGINT
);
CREATE INDEX throttles_blocked_idx ON throttles (blocked_until);

CREATE TABLE reputation (
    key TEXT PRIMARY KEY NOT NULL,
    score BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
