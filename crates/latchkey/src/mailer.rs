//! The outbox worker: sends queued mails over SMTP with retries, so an outage or a restart
//! loses nothing. With no `email.host`, mails are logged instead of sent.

use anyhow::{anyhow, Context};
use chrono::Duration as ChronoDuration;
use latchkey_core::mail::next_retry;
use latchkey_core::model::Mail;
use latchkey_core::Core;
use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::sync::Arc;
use std::time::Duration;

use crate::config::EmailConfig;

/// How often the worker looks for due mail.
const POLL: Duration = Duration::from_secs(1);
/// A claimed mail is hidden from other workers this long (longer than any SMTP timeout).
const LEASE: ChronoDuration = ChronoDuration::minutes(2);

pub struct Sender {
    transport: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Mailbox,
}

impl Sender {
    pub fn new(config: &EmailConfig) -> anyhow::Result<Sender> {
        let from: Mailbox =
            config.from.parse().map_err(|e| anyhow!("invalid value for email.from: '{}' ({e})", config.from))?;
        let Some(host) = config.host.as_deref() else { return Ok(Sender { transport: None, from }) };
        let builder = if config.use_ssl {
            AsyncSmtpTransport::<Tokio1Executor>::relay(host)
        } else if config.use_tls {
            AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
        } else {
            Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host))
        }
        .with_context(|| format!("invalid SMTP host '{host}'"))?;
        let mut builder = builder.port(config.port).timeout(Some(config.timeout));
        if let (Some(user), Some(pass)) = (&config.username, &config.password) {
            builder = builder.credentials(Credentials::new(user.clone(), pass.clone()));
        }
        Ok(Sender { transport: Some(builder.build()), from })
    }

    fn message(&self, mail: &Mail) -> anyhow::Result<Message> {
        let to: Mailbox = mail.to.parse().map_err(|e| anyhow!("invalid recipient '{}' ({e})", mail.to))?;
        let builder = Message::builder().from(self.from.clone()).to(to).subject(mail.subject.clone());
        let message = match &mail.html_body {
            Some(html) => builder.multipart(
                MultiPart::alternative()
                    .singlepart(SinglePart::builder().header(ContentType::TEXT_PLAIN).body(mail.text_body.clone()))
                    .singlepart(SinglePart::builder().header(ContentType::TEXT_HTML).body(html.clone())),
            ),
            None => builder.header(ContentType::TEXT_PLAIN).body(mail.text_body.clone()),
        };
        message.map_err(|e| anyhow!("cannot build the message: {e}"))
    }

    /// Sends one mail now; the error is one sentence.
    pub async fn send(&self, mail: &Mail) -> anyhow::Result<()> {
        let message = self.message(mail)?;
        match &self.transport {
            Some(t) => t.send(message).await.map(|_| ()).map_err(|e| anyhow!("SMTP delivery failed: {e}")),
            None => {
                tracing::info!(to = %mail.to, subject = %mail.subject, body = %mail.text_body, "no email.host configured: mail logged, not sent");
                Ok(())
            }
        }
    }
}

/// Drains the outbox until the process ends.
pub fn spawn(core: Arc<Core>, sender: Sender) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Err(e) = drain(&core, &sender).await {
                tracing::warn!(error = %e, "mail outbox unavailable");
            }
            tokio::time::sleep(POLL).await;
        }
    })
}

async fn drain(core: &Core, sender: &Sender) -> anyhow::Result<()> {
    loop {
        let now = core.clock.now();
        let mails = core.store.claim_mails(now, now + LEASE, 10).await?;
        if mails.is_empty() {
            return Ok(());
        }
        for mail in mails {
            match sender.send(&mail).await {
                Ok(()) => {
                    core.store.mail_sent(mail.id, core.clock.now()).await?;
                    tracing::info!(mail = %mail.id, to = %mail.to, "mail sent");
                }
                Err(e) => {
                    let now = core.clock.now();
                    let retry = next_retry(mail.created_at, mail.attempts + 1, now);
                    core.store.mail_failed(mail.id, &e.to_string(), retry).await?;
                    match retry {
                        Some(at) => {
                            tracing::warn!(mail = %mail.id, error = %e, retry_at = %at, "mail not sent; will retry")
                        }
                        None => tracing::error!(mail = %mail.id, error = %e, "mail not sent for a day; giving up"),
                    }
                }
            }
        }
    }
}
