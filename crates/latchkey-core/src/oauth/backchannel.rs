//! OpenID Connect Back-Channel Logout 1.0: when a Latchkey session ends through RP-initiated
//! logout, every client that received tokens from that session and registered a
//! `backchannel_logout_uri` is sent a signed `logout_token` (a JWT naming the session `sid`
//! and the subject). Delivery is the binary's (an HTTP client); it runs in the background so
//! a slow client never delays the user's logout.

use async_trait::async_trait;
use serde_json::{json, Value};
use std::sync::Arc;
use uuid::Uuid;

use super::{Grant, OAuth};
use crate::error::{CoreError, Result};
use crate::model::TokenKind;

/// The event a logout token carries.
pub const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// How long a logout token is valid.
const LOGOUT_TOKEN_TTL: i64 = 120;

/// POSTs `logout_token=<jwt>` to a client; answers the HTTP status.
#[async_trait]
pub trait LogoutDelivery: Send + Sync {
    async fn deliver(&self, uri: &str, logout_token: &str) -> std::result::Result<u16, String>;
}

impl OAuth {
    /// Installs the HTTP delivery (once, by the binary).
    pub fn set_logout_delivery(&self, delivery: Arc<dyn LogoutDelivery>) {
        let _ = self.logout_delivery.set(delivery);
    }

    /// Sends logout tokens for session `sid` of `user_id` to the clients that registered a
    /// back-channel URI and were issued tokens from that session. Returns how many were sent
    /// on their way.
    pub async fn backchannel_logout(&self, user_id: Uuid, sid: &str) -> Result<usize> {
        let Some(delivery) = self.logout_delivery.get().cloned() else { return Ok(0) };
        let tokens = self.store.list_tokens(Some(user_id)).await.map_err(CoreError::from_store)?;
        // Client id → the issuer its tokens were issued under.
        let mut issued: Vec<(String, String)> = Vec::new();
        for t in tokens.iter().filter(|t| matches!(t.kind, TokenKind::OauthCode | TokenKind::OauthRefresh)) {
            let Ok(g) = serde_json::from_str::<Grant>(&t.description) else { continue };
            if g.sid.as_deref() == Some(sid) && !issued.iter().any(|(c, _)| *c == g.client_id) {
                issued.push((g.client_id, g.issuer));
            }
        }
        let mut sent = 0;
        for (client_id, issuer) in issued {
            let Some(client) = self.client_by_id(&client_id).await? else { continue };
            let Some(uri) = client.backchannel_logout_uri.clone() else { continue };
            let user = self.store.get_user(user_id).await.map_err(CoreError::from_store)?;
            let now = self.clock.now().timestamp();
            let mut claims = json!({
                "iss": issuer,
                "aud": client.client_id,
                "iat": now,
                "exp": now + LOGOUT_TOKEN_TTL,
                "jti": Uuid::new_v4().simple().to_string(),
                "sid": sid,
                "events": { LOGOUT_EVENT: {} },
            });
            if let Some(user) = &user {
                claims["sub"] = Value::String(self.subject(&client, user));
            }
            let token = self.signing.sign_typed(client.alg, "logout+jwt", &claims).await?;
            let delivery = Arc::clone(&delivery);
            tokio::spawn(async move {
                match delivery.deliver(&uri, &token).await {
                    Ok(status) if (200..300).contains(&status) => {
                        tracing::info!(client = %client_id, "back-channel logout delivered")
                    }
                    Ok(status) => tracing::warn!(client = %client_id, status, "back-channel logout refused"),
                    Err(e) => tracing::warn!(client = %client_id, "back-channel logout failed: {e}"),
                }
            });
            sent += 1;
        }
        Ok(sent)
    }
}
