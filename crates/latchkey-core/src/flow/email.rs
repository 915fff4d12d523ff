//! `email`: mails the flow's user a single-use link that continues the flow, then waits.
//! The recovery flow uses it: whoever opens the link (in any browser) resumes after this
//! stage as that user. The answer never tells whether an account exists.

use async_trait::async_trait;
use chrono::Duration;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::{Challenge, StageCx, StageHandler, Step};
use crate::error::{CoreError, Result};
use crate::keys::{hash_secret, random_secret};
use crate::model::{Token, TokenKind};

/// Flow-state keys: the mail went out (do not send again on reload); the flow was resumed
/// from the link; the token to use up when the flow completes.
pub const SENT: &str = "email_sent";
pub const LINK_USED: &str = "email_link_used";
pub const CONSUME_TOKEN: &str = "consume_token";
/// The query parameter carrying the mailed secret.
pub const LINK_PARAM: &str = "flow_token";

pub struct Email;

impl Email {
    fn challenge() -> Challenge {
        Challenge::new("email").with(
            "message",
            "If an account matches what you entered, we have sent it an email with a link. \
             Open it to continue; it works once and expires soon.",
        )
    }

    /// Sends the link if there is someone to send it to and the rate limit allows.
    async fn send(cx: &mut StageCx<'_>) -> Result<()> {
        let s = cx.services;
        let Some(user_id) = cx.state.pending_user else { return Ok(()) };
        let Some(user) = s.store.get_user(user_id).await.map_err(CoreError::from_store)? else { return Ok(()) };
        let Some(address) = user.email.clone().filter(|_| user.is_active) else { return Ok(()) };
        let now = s.clock.now();
        let per_hour = cx.config.get("max_per_hour").and_then(Value::as_u64).unwrap_or(3);
        let recent = s
            .store
            .count_tokens_since(user.id, TokenKind::FlowLink, now - Duration::hours(1))
            .await
            .map_err(CoreError::from_store)?;
        if recent >= per_hour {
            s.events
                .record("email_rate_limited", Some(&user), &cx.request.client, json!({ "flow": cx.state.flow_slug }))
                .await;
            return Ok(());
        }
        let minutes = cx.config.get("token_expiry_minutes").and_then(Value::as_i64).unwrap_or(30).max(1);
        let secret = random_secret(32);
        let token = Token {
            id: Uuid::now_v7(),
            secret_hash: hash_secret(&secret),
            kind: TokenKind::FlowLink,
            user_id: Some(user.id),
            description: cx.state.flow_slug.clone(),
            created_at: now,
            expires_at: Some(now + Duration::minutes(minutes)),
            used_at: None,
        };
        let url = format!("{}/if/flow/{}/?{LINK_PARAM}={secret}", cx.request.origin, cx.state.flow_slug);
        let template = cx.config.get("template").and_then(Value::as_str).unwrap_or("recovery");
        let subject = cx.config.get("subject").and_then(Value::as_str).unwrap_or("Reset your password");
        let message = s.mailer.render(
            template,
            subject,
            &json!({ "url": url, "user": { "username": user.username, "name": user.name }, "expires_minutes": minutes }),
        )?;
        let mail = s.mailer.compose(&address, message);
        s.mailer.queue_with_token(&token, &mail).await?;
        s.events
            .record(
                "email_sent",
                Some(&user),
                &cx.request.client,
                json!({ "flow": cx.state.flow_slug, "mail": mail.id }),
            )
            .await;
        Ok(())
    }
}

#[async_trait]
impl StageHandler for Email {
    fn kind(&self) -> &'static str {
        "email"
    }

    async fn challenge(&self, cx: &mut StageCx<'_>) -> Result<Step> {
        // A stage that runs only when an earlier one asked for it (e.g. email verification
        // at enrollment when the invitation stage enables it).
        if let Some(flag) = cx.config.get("only_when").and_then(Value::as_str) {
            if !cx.state.data.get(flag).and_then(Value::as_bool).unwrap_or(false) {
                return Ok(Step::Next);
            }
        }
        if cx.state.data.get(LINK_USED).and_then(Value::as_bool).unwrap_or(false) {
            if cx.config.get("mark_verified").and_then(Value::as_bool).unwrap_or(false) {
                mark_email_verified(cx).await?;
            }
            return Ok(Step::Next);
        }
        if !cx.state.data.get(SENT).and_then(Value::as_bool).unwrap_or(false) {
            Self::send(cx).await?;
            cx.state.data.insert(SENT.into(), json!(true));
        }
        Ok(Step::Show(Self::challenge()))
    }

    async fn submit(&self, cx: &mut StageCx<'_>, _answer: &Map<String, Value>) -> Result<Step> {
        self.challenge(cx).await
    }
}

/// The user proved they read mail at their address.
async fn mark_email_verified(cx: &mut StageCx<'_>) -> Result<()> {
    let Some(id) = cx.state.pending_user else { return Ok(()) };
    let mut user = cx.services.directory.get_user(id).await?;
    if let Value::Object(attrs) = &mut user.attributes {
        attrs.insert("email_verified".into(), json!(true));
    }
    cx.services.directory.update_user(&user, &cx.request.client).await
}
