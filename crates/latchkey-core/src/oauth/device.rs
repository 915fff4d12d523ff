//! Device authorization (RFC 8628): a device without a browser shows a short user code; the
//! user types it at `/if/device/` while logged in; the device polls the token endpoint.
//!
//! Three hashed one-time records in the token table (kind `oauth_code`), none holding a secret
//! in clear: the pending request (found by the device code), the user code (found by what the
//! user types, pointing at the pending request's hash) and, once the user decided, the approval
//! (found by a hash derived from the pending request's hash, so the device finds it by polling).

use chrono::Duration;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use uuid::Uuid;

use super::{Client, Grant, GrantResult, OAuth, OAuthError, TokenResponse};
use crate::error::{CoreError, Result};
use crate::keys::{hash_secret, random_secret};
use crate::model::{Token, TokenKind, User};

/// How long a device code and its user code stay valid.
pub const DEVICE_TTL_SECS: i64 = 600;
/// Seconds a device waits between polls.
pub const INTERVAL_SECS: i64 = 5;
/// Letters that cannot be confused with each other or spell words (RFC 8628 §6.1).
const ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";

/// What the device authorization endpoint answers.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceAuthorization {
    pub device_code: String,
    pub user_code: String,
    pub expires_in: i64,
    pub interval: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    client_id: String,
    scopes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct UserCode {
    /// Hash of the pending request's record.
    device: String,
    client_id: String,
    scopes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Decision {
    approved: bool,
    grant: Option<Grant>,
}

fn device_hash(device_code: &str) -> String {
    hash_secret(&format!("device.{device_code}"))
}

fn decision_hash(device: &str) -> String {
    hash_secret(&format!("decision.{device}"))
}

/// The user code as typed: letters only, upper case (`bcdf-ghjk` and `BCDFGHJK` are the same).
pub fn normalize_user_code(typed: &str) -> String {
    typed.chars().filter(|c| c.is_ascii_alphabetic()).map(|c| c.to_ascii_uppercase()).collect()
}

fn user_code_hash(normalized: &str) -> String {
    hash_secret(&format!("user_code.{normalized}"))
}

fn new_user_code() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let letters: String = (0..8).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect();
    format!("{}-{}", &letters[..4], &letters[4..])
}

impl OAuth {
    async fn put_record(&self, hash: String, user_id: Option<Uuid>, description: String) -> Result<()> {
        let now = self.clock.now();
        let token = Token {
            id: Uuid::now_v7(),
            secret_hash: hash,
            kind: TokenKind::OauthCode,
            user_id,
            description,
            created_at: now,
            expires_at: Some(now + Duration::seconds(DEVICE_TTL_SECS)),
            used_at: None,
        };
        self.store.create_token(&token).await.map_err(CoreError::from_store)
    }

    async fn record(&self, hash: &str) -> Result<Option<Token>> {
        self.store.find_token(TokenKind::OauthCode, hash, self.clock.now()).await.map_err(CoreError::from_store)
    }

    /// Starts a device authorization for `client`.
    pub async fn device_authorize(&self, client: &Client, scope: Option<&str>) -> Result<DeviceAuthorization> {
        let scopes = client.grantable(scope.unwrap_or("openid"));
        let device_code = random_secret(32);
        let user_code = new_user_code();
        let device = device_hash(&device_code);
        let json = |v: serde_json::Result<String>| v.map_err(|e| CoreError::Internal(e.to_string()));
        let pending =
            json(serde_json::to_string(&Pending { client_id: client.client_id.clone(), scopes: scopes.clone() }))?;
        self.put_record(device.clone(), None, pending).await?;
        let uc = json(serde_json::to_string(&UserCode { device, client_id: client.client_id.clone(), scopes }))?;
        self.put_record(user_code_hash(&normalize_user_code(&user_code)), None, uc).await?;
        Ok(DeviceAuthorization { device_code, user_code, expires_in: DEVICE_TTL_SECS, interval: INTERVAL_SECS })
    }

    /// The client a typed user code belongs to, if it is valid (shown before the user decides).
    pub async fn device_client(&self, typed: &str) -> Result<Option<Arc<Client>>> {
        let n = normalize_user_code(typed);
        if n.len() != 8 {
            return Ok(None);
        }
        let Some(t) = self.record(&user_code_hash(&n)).await? else { return Ok(None) };
        let Ok(uc) = serde_json::from_str::<UserCode>(&t.description) else { return Ok(None) };
        self.client_by_id(&uc.client_id).await
    }

    /// The user's decision on a typed user code; `false` when the code is unknown or used.
    /// `template` carries the session facts (sid, auth_time, amr, issuer) of the approval.
    pub async fn device_decide(&self, typed: &str, user: &User, approved: bool, template: Grant) -> Result<bool> {
        let n = normalize_user_code(typed);
        let Some(t) = self.record(&user_code_hash(&n)).await? else { return Ok(false) };
        let Ok(uc) = serde_json::from_str::<UserCode>(&t.description) else { return Ok(false) };
        if !self.store.consume_token(t.id, self.clock.now()).await.map_err(CoreError::from_store)? {
            return Ok(false);
        }
        let grant = Grant { client_id: uc.client_id, scopes: uc.scopes, ..template };
        let decision = Decision { approved, grant: approved.then_some(grant) };
        let d = serde_json::to_string(&decision).map_err(|e| CoreError::Internal(e.to_string()))?;
        self.put_record(decision_hash(&uc.device), Some(user.id), d).await?;
        Ok(true)
    }

    /// The `urn:ietf:params:oauth:grant-type:device_code` grant: pending, denied or tokens.
    pub async fn device_token(&self, client: &Client, device_code: &str) -> GrantResult<TokenResponse> {
        if device_code.is_empty() || device_code.len() > 200 {
            return Err(OAuthError::invalid_grant("The device code is invalid.").into());
        }
        let device = device_hash(device_code);
        let Some(pending) = self.record(&device).await? else {
            return Err(OAuthError::new("expired_token", "The device code expired or was already used.").into());
        };
        let p: Pending = serde_json::from_str(&pending.description)
            .map_err(|_| OAuthError::invalid_grant("The device code is invalid."))?;
        if p.client_id != client.client_id {
            return Err(OAuthError::invalid_grant("The device code was issued to another client.").into());
        }
        let Some(decided) = self.record(&decision_hash(&device)).await? else {
            return Err(OAuthError::new("authorization_pending", "The user has not decided yet.").into());
        };
        let now = self.clock.now();
        // Both records are used up: a device code yields tokens once.
        let a = self.store.consume_token(decided.id, now).await.map_err(CoreError::from_store)?;
        let b = self.store.consume_token(pending.id, now).await.map_err(CoreError::from_store)?;
        if !(a && b) {
            return Err(OAuthError::new("expired_token", "The device code was already used.").into());
        }
        let d: Decision = serde_json::from_str(&decided.description)
            .map_err(|_| OAuthError::invalid_grant("The device code is invalid."))?;
        let (Some(grant), true, Some(user_id)) = (d.grant, d.approved, decided.user_id) else {
            return Err(OAuthError::new("access_denied", "The user denied the request.").into());
        };
        let user = self.active_user(user_id).await?;
        let mut grant = grant;
        grant.family = Some(decided.id);
        let with_id = grant.scopes.iter().any(|s| s == "openid");
        self.tokens_for(client, &user, &grant, with_id).await
    }
}
