//! Secrets handed out once and kept hashed: API tokens, setup links, recovery links.

use chrono::Duration;
use serde_json::json;
use std::sync::Arc;
use uuid::Uuid;

use crate::clock::Clock;
use crate::error::{CoreError, Result};
use crate::events::{ClientInfo, Events};
use crate::keys::{hash_secret, random_secret};
use crate::model::{Invitation, Token, TokenKind, User};
use crate::store::Store;

/// How long a printed setup link stays valid.
pub const SETUP_LINK_VALIDITY: Duration = Duration::hours(24);

/// What an invitation allows.
#[derive(Debug, Clone)]
pub struct InvitationRequest {
    pub valid_for: Option<Duration>,
    /// How many accounts it may create (at least 1).
    pub max_uses: i64,
    /// The invitee must enroll with this address.
    pub fixed_email: Option<String>,
    /// Groups the new user joins.
    pub groups: Vec<String>,
    /// The enrollment flow the link opens.
    pub flow_slug: String,
}

#[derive(Clone)]
pub struct Tokens {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    events: Events,
}

impl Tokens {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, events: Events) -> Self {
        Tokens { store, clock, events }
    }

    async fn issue(
        &self,
        kind: TokenKind,
        user: Option<&User>,
        valid_for: Option<Duration>,
        description: &str,
    ) -> Result<(String, Token)> {
        // A prefix tells a leaked secret's kind at a glance (and to secret scanners).
        let prefix = match kind {
            TokenKind::Api => "lk_api_",
            TokenKind::Setup => "",
            TokenKind::Recovery
            | TokenKind::FlowLink
            | TokenKind::EmailChange
            | TokenKind::OauthCode
            | TokenKind::OauthRefresh => "",
        };
        let secret = format!("{prefix}{}", random_secret(32));
        let now = self.clock.now();
        let token = Token {
            id: Uuid::now_v7(),
            secret_hash: hash_secret(&secret),
            kind,
            user_id: user.map(|u| u.id),
            description: description.to_string(),
            created_at: now,
            expires_at: valid_for.map(|d| now + d),
            used_at: None,
        };
        self.store.create_token(&token).await.map_err(CoreError::from_store)?;
        Ok((secret, token))
    }

    /// A bearer token for the REST API; the secret is returned once.
    pub async fn create_api_token(
        &self,
        user: &User,
        valid_for: Option<Duration>,
        description: &str,
        client: &ClientInfo,
    ) -> Result<(String, Token)> {
        let issued = self.issue(TokenKind::Api, Some(user), valid_for, description).await?;
        self.events
            .record(
                "token_created",
                Some(user),
                client,
                json!({ "token_id": issued.1.id, "expires_at": issued.1.expires_at }),
            )
            .await;
        Ok(issued)
    }

    /// The user an API token belongs to, if the token is valid.
    pub async fn authenticate_api_token(&self, secret: &str) -> Result<Option<User>> {
        let Some(token) = self.find(TokenKind::Api, secret).await? else {
            return Ok(None);
        };
        let Some(user_id) = token.user_id else {
            return Ok(None);
        };
        let user = self.store.get_user(user_id).await.map_err(CoreError::from_store)?;
        Ok(user.filter(|u| u.is_active))
    }

    pub async fn create_setup_token(&self) -> Result<String> {
        Ok(self.issue(TokenKind::Setup, None, Some(SETUP_LINK_VALIDITY), "initial setup").await?.0)
    }

    pub async fn create_recovery_token(&self, user: &User, valid_for: Duration, client: &ClientInfo) -> Result<String> {
        let (secret, token) = self.issue(TokenKind::Recovery, Some(user), Some(valid_for), "recovery link").await?;
        self.events
            .record(
                "recovery_link_created",
                Some(user),
                client,
                json!({ "token_id": token.id, "expires_at": token.expires_at }),
            )
            .await;
        Ok(secret)
    }

    /// An invitation link's secret and the stored invitation.
    pub async fn create_invitation(
        &self,
        created_by: Option<&User>,
        request: InvitationRequest,
        client: &ClientInfo,
    ) -> Result<(String, Invitation)> {
        let InvitationRequest { valid_for, max_uses, fixed_email, groups, flow_slug } = request;
        if max_uses < 1 {
            return Err(CoreError::invalid_field("uses", "An invitation needs at least one use."));
        }
        if let Some(e) = &fixed_email {
            crate::directory::validate_email(e)?;
        }
        let secret = random_secret(32);
        let now = self.clock.now();
        let invitation = Invitation {
            id: Uuid::now_v7(),
            secret_hash: hash_secret(&secret),
            created_by: created_by.map(|u| u.id),
            created_at: now,
            expires_at: valid_for.map(|d| now + d),
            max_uses,
            uses: 0,
            fixed_email,
            groups,
            flow_slug,
        };
        self.store.create_invitation(&invitation).await.map_err(CoreError::from_store)?;
        self.events
            .record(
                "invitation_created",
                created_by,
                client,
                json!({ "invitation": invitation.id, "max_uses": max_uses, "groups": invitation.groups, "expires_at": invitation.expires_at }),
            )
            .await;
        Ok((secret, invitation))
    }

    /// A valid, unused token of that kind. Does not consume it.
    pub async fn find(&self, kind: TokenKind, secret: &str) -> Result<Option<Token>> {
        if secret.is_empty() || secret.len() > 200 {
            return Ok(None);
        }
        self.store
            .find_token(kind, &hash_secret(secret), self.clock.now())
            .await
            .map_err(CoreError::from_store)
            .map(|t| t.filter(|t| t.kind == kind && t.used_at.is_none()))
    }

    /// Uses up a one-time token; `false` if someone else already did.
    pub async fn consume(&self, token: &Token) -> Result<bool> {
        self.store.consume_token(token.id, self.clock.now()).await.map_err(CoreError::from_store)
    }

    /// Revokes an API token (it stops working at once: tokens are checked on every request).
    pub async fn delete_api_token(&self, id: Uuid, client: &ClientInfo) -> Result<Token> {
        let token = self
            .list(None)
            .await?
            .into_iter()
            .find(|t| t.id == id && t.kind == TokenKind::Api)
            .ok_or_else(|| CoreError::NotFound(format!("token {id}")))?;
        self.store.delete_token(id).await.map_err(CoreError::from_store)?;
        let user = match token.user_id {
            Some(u) => self.store.get_user(u).await.map_err(CoreError::from_store)?,
            None => None,
        };
        self.events.record("token_deleted", user.as_ref(), client, json!({ "token_id": id })).await;
        Ok(token)
    }

    pub async fn list(&self, user_id: Option<Uuid>) -> Result<Vec<Token>> {
        self.store.list_tokens(user_id).await.map_err(CoreError::from_store)
    }
}
