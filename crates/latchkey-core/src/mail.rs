//! Mail: messages are queued in the store's outbox (in the same transaction as the token they
//! carry, where there is one) and sent by the binary's background worker, so an SMTP outage or
//! a restart loses nothing.

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use std::sync::{Arc, OnceLock};
use uuid::Uuid;

use crate::clock::Clock;
use crate::error::{CoreError, Result};
use crate::model::{Mail, MailStatus, Token};
use crate::store::Store;

/// A rendered message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
}

/// Renders mail templates (`email/<name>.txt` and `.html`); the web layer provides it so that
/// mails use the same overridable templates as pages.
pub trait MailTemplates: Send + Sync {
    fn render_mail(&self, name: &str, subject: &str, ctx: &Value) -> Result<Message>;
}

/// When to try a failed mail again: quickly (capped at a minute) during its first hour, then
/// hourly; after a day, give up.
pub fn next_retry(created_at: DateTime<Utc>, attempts: i64, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let age = now - created_at;
    if age >= Duration::hours(24) {
        return None;
    }
    if age < Duration::hours(1) {
        let secs = 1i64 << attempts.clamp(0, 6);
        return Some(now + Duration::seconds(secs.min(60)));
    }
    Some(now + Duration::hours(1))
}

#[derive(Clone)]
pub struct Mailer {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    templates: Arc<OnceLock<Arc<dyn MailTemplates>>>,
}

impl Mailer {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Mailer { store, clock, templates: Arc::new(OnceLock::new()) }
    }

    /// Installs the template renderer (once, at start-up).
    pub fn set_templates(&self, templates: Arc<dyn MailTemplates>) {
        let _ = self.templates.set(templates);
    }

    pub fn render(&self, name: &str, subject: &str, ctx: &Value) -> Result<Message> {
        match self.templates.get() {
            Some(t) => t.render_mail(name, subject, ctx),
            // Without templates (CLI tools), a plain message that still carries the link.
            None => Ok(Message {
                subject: subject.to_string(),
                text: ctx.get("url").and_then(Value::as_str).map(|u| format!("{subject}\n\n{u}\n")).unwrap_or_default(),
                html: None,
            }),
        }
    }

    pub fn compose(&self, to: &str, message: Message) -> Mail {
        let now = self.clock.now();
        Mail {
            id: Uuid::now_v7(),
            to: to.to_string(),
            subject: message.subject,
            text_body: message.text,
            html_body: message.html,
            status: MailStatus::Queued,
            attempts: 0,
            next_attempt_at: now,
            last_error: None,
            created_at: now,
            sent_at: None,
        }
    }

    pub async fn queue(&self, mail: &Mail) -> Result<()> {
        self.store.queue_mail(mail).await.map_err(CoreError::from_store)
    }

    /// Stores a token and queues the mail carrying its link, atomically.
    pub async fn queue_with_token(&self, token: &Token, mail: &Mail) -> Result<()> {
        self.store.create_token_with_mail(token, mail).await.map_err(CoreError::from_store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_then_go_hourly_then_stop() {
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        assert_eq!(next_retry(t0, 1, t0), Some(t0 + Duration::seconds(2)));
        assert_eq!(
            next_retry(t0, 10, t0 + Duration::minutes(5)),
            Some(t0 + Duration::minutes(5) + Duration::seconds(60))
        );
        let later = t0 + Duration::hours(2);
        assert_eq!(next_retry(t0, 40, later), Some(later + Duration::hours(1)));
        assert_eq!(next_retry(t0, 41, t0 + Duration::hours(24)), None);
    }
}
