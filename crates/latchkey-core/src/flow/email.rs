//! `email`: mails the flow's user a single-use link that continues the flow, then waits.
//! The recovery flow uses it: whoever opens the link (in any browser) resumes after this
//! stage as that user. The answer never tells whether an account exists.

use async_trait::async_trait;
use chrono::Duration;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::{Challenge, FlowServices, StageCx, StageHandler, Step};
use crate::error::{CoreError, Result};
use crate::events::ClientInfo;
use crate::keys::{hash_secret, random_secret};
use crate::model::{Token, TokenKind, User};

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

    /// Sends the link if there is someone to send it to.
    async fn send(cx: &mut StageCx<'_>) -> Result<()> {
        let s = cx.services;
        let Some(user_id) = cx.state.pending_user else { return Ok(()) };
        let Some(user) = s.store.get_user(user_id).await.map_err(CoreError::from_store)? else { return Ok(()) };
        let config = cx.config;
        let valid_for = match config.get("token_expiry_seconds").and_then(Value::as_i64) {
            Some(secs) => Duration::seconds(secs.max(1)),
            None => Duration::minutes(config.get("token_expiry_minutes").and_then(Value::as_i64).unwrap_or(30).max(1)),
        };
        let link = LinkMail {
            flow_slug: &cx.state.flow_slug,
            origin: &cx.request.origin,
            template: config.get("template").and_then(Value::as_str).unwrap_or("recovery"),
            subject: config.get("subject").and_then(Value::as_str).unwrap_or("Reset your password"),
            valid_for,
            max_per_hour: config.get("max_per_hour").and_then(Value::as_u64).unwrap_or(3),
        };
        mail_flow_link(s, &user, &link, &cx.request.client).await.map(|_| ())
    }
}

/// What a mailed flow link opens, says and how long it lasts.
#[derive(Debug, Clone)]
pub struct LinkMail<'a> {
    pub flow_slug: &'a str,
    /// `scheme://host[:port]` the link points at.
    pub origin: &'a str,
    pub template: &'a str,
    pub subject: &'a str,
    pub valid_for: Duration,
    /// At most this many links per user per hour; further requests send nothing.
    pub max_per_hour: u64,
}

/// Mails `user` a single-use link that resumes `link.flow_slug` after its email stage, as them.
/// Returns whether a mail was queued (no address, a disabled account or the rate limit send
/// nothing — callers answer the same either way).
pub async fn mail_flow_link(s: &FlowServices, user: &User, link: &LinkMail<'_>, client: &ClientInfo) -> Result<bool> {
    let Some(address) = user.email.clone().filter(|_| user.is_active) else { return Ok(false) };
    let now = s.clock.now();
    let recent = s
        .store
        .count_tokens_since(user.id, TokenKind::FlowLink, now - Duration::hours(1))
        .await
        .map_err(CoreError::from_store)?;
    if recent >= link.max_per_hour {
        s.events.record("email_rate_limited", Some(user), client, json!({ "flow": link.flow_slug })).await;
        return Ok(false);
    }
    let secret = random_secret(32);
    let token = Token {
        id: Uuid::now_v7(),
        secret_hash: hash_secret(&secret),
        kind: TokenKind::FlowLink,
        user_id: Some(user.id),
        description: link.flow_slug.to_string(),
        created_at: now,
        expires_at: Some(now + link.valid_for),
        used_at: None,
    };
    let url = format!("{}/if/flow/{}/?{LINK_PARAM}={secret}", link.origin, link.flow_slug);
    let message = s.mailer.render(
        link.template,
        link.subject,
        &json!({
            "url": url,
            "user": { "username": user.username, "name": user.name },
            "expires_minutes": link.valid_for.num_minutes().max(1),
        }),
    )?;
    let mail = s.mailer.compose(&address, message);
    s.mailer.queue_with_token(&token, &mail).await?;
    s.events.record("email_sent", Some(user), client, json!({ "flow": link.flow_slug, "mail": mail.id })).await;
    Ok(true)
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

/// Asks the owner of `new_email` to confirm it: the address changes only when the link mailed
/// there is used (`/if/user/confirm-email/<token>/`).
pub async fn request_email_change(
    s: &FlowServices,
    user: &User,
    new_email: &str,
    origin: &str,
    client: &ClientInfo,
) -> Result<()> {
    crate::directory::validate_email(new_email)?;
    let now = s.clock.now();
    let secret = random_secret(32);
    let token = Token {
        id: Uuid::now_v7(),
        secret_hash: hash_secret(&secret),
        kind: TokenKind::EmailChange,
        user_id: Some(user.id),
        description: new_email.to_string(),
        created_at: now,
        expires_at: Some(now + Duration::hours(24)),
        used_at: None,
    };
    let url = format!("{origin}/if/user/confirm-email/{secret}/");
    let message = s.mailer.render(
        "email_change",
        "Confirm your new email address",
        &json!({ "url": url, "user": { "username": user.username, "name": user.name }, "email": new_email }),
    )?;
    let mail = s.mailer.compose(new_email, message);
    s.mailer.queue_with_token(&token, &mail).await?;
    s.events.record("email_change_requested", Some(user), client, json!({ "new_email": new_email })).await;
    Ok(())
}

/// The pending change a confirmation link stands for: the user and the new address.
pub async fn pending_email_change(s: &FlowServices, secret: &str) -> Result<Option<(Token, User, String)>> {
    let Some(token) = s.tokens.find(TokenKind::EmailChange, secret).await? else { return Ok(None) };
    let new_email = token.description.clone();
    let Some(user_id) = token.user_id else { return Ok(None) };
    let Some(user) = s.store.get_user(user_id).await.map_err(CoreError::from_store)? else { return Ok(None) };
    Ok(Some((token, user, new_email)))
}

/// Applies a confirmed email change; `None` if the link is no good (used, expired, unknown).
pub async fn confirm_email_change(s: &FlowServices, secret: &str, client: &ClientInfo) -> Result<Option<User>> {
    let Some((token, mut user, new_email)) = pending_email_change(s, secret).await? else { return Ok(None) };
    if !s.tokens.consume(&token).await? {
        return Ok(None);
    }
    user.email = Some(new_email);
    if let Value::Object(attrs) = &mut user.attributes {
        attrs.insert("email_verified".into(), json!(true));
    }
    s.directory.update_user(&user, client).await?;
    s.events.record("email_changed", Some(&user), client, json!({})).await;
    Ok(Some(user))
}
