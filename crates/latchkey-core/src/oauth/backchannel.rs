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
/// Attempts per client: a client that is restarting or briefly unreachable still hears of
/// the logout; the pauses between attempts double from one second, well inside the TTL.
const DELIVERY_ATTEMPTS: u32 = 4;

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
        if issued.is_empty() {
            return Ok(0);
        }
        let user = self.users.user(user_id).await?;
        let mut sent = 0;
        for (client_id, issuer) in issued {
            let Some(client) = self.client_by_id(&client_id).await? else { continue };
            let Some(uri) = client.backchannel_logout_uri.clone() else { continue };
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
            tokio::spawn(deliver_with_retries(Arc::clone(&delivery), client_id, uri, token));
            sent += 1;
        }
        Ok(sent)
    }
}

/// Delivers one logout token, retrying on transport errors and 5xx answers (a 4xx is the
/// client's final word: it refused the token).
async fn deliver_with_retries(delivery: Arc<dyn LogoutDelivery>, client_id: String, uri: String, token: String) {
    let mut pause = std::time::Duration::from_secs(1);
    for attempt in 1..=DELIVERY_ATTEMPTS {
        let last = attempt == DELIVERY_ATTEMPTS;
        match delivery.deliver(&uri, &token).await {
            Ok(status) if (200..300).contains(&status) => {
                tracing::info!(client = %client_id, attempt, "back-channel logout delivered");
                return;
            }
            Ok(status) if status < 500 => {
                tracing::warn!(client = %client_id, status, "back-channel logout refused");
                return;
            }
            Ok(status) if last => {
                tracing::warn!(client = %client_id, status, attempt, "back-channel logout refused; giving up")
            }
            Err(e) if last => {
                tracing::warn!(client = %client_id, attempt, "back-channel logout failed: {e}; giving up")
            }
            Ok(status) => tracing::info!(client = %client_id, status, attempt, "back-channel logout refused; retrying"),
            Err(e) => tracing::info!(client = %client_id, attempt, "back-channel logout failed: {e}; retrying"),
        }
        if !last {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Answers the scripted results in order and records when each attempt came.
    struct Scripted {
        answers: Mutex<Vec<std::result::Result<u16, String>>>,
        attempts: Mutex<Vec<tokio::time::Instant>>,
    }

    #[async_trait]
    impl LogoutDelivery for Scripted {
        async fn deliver(&self, _uri: &str, _token: &str) -> std::result::Result<u16, String> {
            self.attempts.lock().unwrap().push(tokio::time::Instant::now());
            self.answers.lock().unwrap().remove(0)
        }
    }

    async fn attempts_for(answers: Vec<std::result::Result<u16, String>>) -> Vec<u64> {
        let scripted = Arc::new(Scripted { answers: Mutex::new(answers), attempts: Mutex::new(Vec::new()) });
        let start = tokio::time::Instant::now();
        deliver_with_retries(scripted.clone(), "c".into(), "http://rp.test/bc".into(), "t".into()).await;
        let attempts = scripted.attempts.lock().unwrap();
        attempts.iter().map(|t| (*t - start).as_secs()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn transport_errors_and_5xx_are_retried_with_growing_pauses() {
        let answers = vec![Err("connection refused".into()), Ok(503), Ok(204)];
        assert_eq!(attempts_for(answers).await, vec![0, 1, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_4xx_answer_is_final() {
        assert_eq!(attempts_for(vec![Ok(400)]).await, vec![0]);
    }

    #[tokio::test(start_paused = true)]
    async fn delivery_gives_up_after_the_last_attempt() {
        let answers = (0..DELIVERY_ATTEMPTS).map(|_| Err("refused".to_string())).collect();
        assert_eq!(attempts_for(answers).await, vec![0, 1, 3, 7]);
    }
}
