-- Persistent mail outbox: a mail survives restarts and SMTP outages until sent or given up.
CREATE TABLE mails (
    id TEXT PRIMARY KEY NOT NULL,
    recipient TEXT NOT NULL,
    subject TEXT NOT NULL,
    text_body TEXT NOT NULL,
    html_body TEXT,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    leased_until BIGINT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    sent_at BIGINT
);
CREATE INDEX mails_due ON mails (status, next_attempt_at);
CREATE INDEX mails_created ON mails (created_at);
CREATE INDEX tokens_user_kind_created ON tokens (user_id, kind, created_at);
