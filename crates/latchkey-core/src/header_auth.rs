//! Credentials sent in the `Authorization` header to forward auth by clients that cannot follow
//! a browser login: `Basic` with an app password, `Bearer` with an OAuth access token issued by
//! Latchkey's OpenID provider.
//!
//! A credential verified once is answered from memory afterwards (keyed by a hash of what was
//! sent), so a busy client costs no store query per request. The cache drops a user's entries
//! on `Change::User` (revocation of an app password, disabling, password change) and
//! everything on group or configuration changes. Failures are throttled like logins: per
//! account and per client address, in the shared throttle table.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use uuid::Uuid;

use crate::app_passwords::AppPasswords;
use crate::clock::Clock;
use crate::error::{CoreError, Result};
use crate::events::{ClientInfo, Events};
use crate::groups::GroupIndex;
use crate::keys::hash_secret;
use crate::model::{Change, User};
use crate::oauth::OAuth;
use crate::sessions::SessionUser;
use crate::store::Store;
use crate::throttle::{retry_after_secs, Throttle};

/// A last-used time is written at most this often per app password.
const TOUCH_INTERVAL_MS: i64 = 60_000;

/// How a credential proved who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialKind {
    /// An app password, limited to these applications when `Some`.
    AppPassword { id: Uuid, name: String, applications: Option<Vec<Uuid>> },
    /// An OAuth access token of this client (`client_id`) and its provider's name.
    AccessToken { client_id: String, provider: String },
}

/// A verified credential: the user as sessions describe them, and what the credential allows.
#[derive(Debug)]
pub struct CredentialIdentity {
    pub user: SessionUser,
    pub kind: CredentialKind,
    /// Stable per credential: keys caches of what is derived from it (JWTs).
    pub key: String,
    pub expires_at: Option<DateTime<Utc>>,
    last_touch: AtomicI64,
}

/// What the `Authorization` header carried.
#[derive(Debug, Clone, Copy)]
pub enum Presented<'a> {
    Basic { username: &'a str, secret: &'a str },
    Bearer(&'a str),
}

#[derive(Debug, Clone)]
pub enum HeaderAuthResult {
    Valid(Arc<CredentialIdentity>),
    Invalid,
    /// Too many failures: retry after this many seconds.
    Throttled(u64),
}

#[derive(Clone)]
pub struct HeaderAuth {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    app_passwords: AppPasswords,
    oauth: OAuth,
    throttle: Throttle,
    events: Events,
    groups: GroupIndex,
}

impl HeaderAuth {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        app_passwords: AppPasswords,
        oauth: OAuth,
        throttle: Throttle,
        events: Events,
        groups: GroupIndex,
    ) -> Self {
        HeaderAuth { store, clock, app_passwords, oauth, throttle, events, groups }
    }

    pub fn apply_change(&self, change: &Change) {
        match change {
            Change::User(id) => self.app_passwords.forget_user(*id),
            Change::Groups | Change::Config => self.invalidate(),
            Change::Session(_) => {}
        }
    }

    pub fn invalidate(&self) {
        self.app_passwords.forget_all();
    }

    /// Checks what the client presented; `client.ip` is the throttled address.
    pub async fn verify(&self, presented: Presented<'_>, client: &ClientInfo) -> Result<HeaderAuthResult> {
        let cache_key = match presented {
            Presented::Basic { username, secret } => {
                hash_secret(&format!("basic\0{}\0{secret}", username.to_lowercase()))
            }
            Presented::Bearer(token) => hash_secret(&format!("bearer\0{token}")),
        };
        let now = self.clock.now();
        if let Some(hit) = self.app_passwords.verified.get(&cache_key) {
            if hit.expires_at.is_none_or(|e| e > now) {
                self.touch(&hit, now);
                return Ok(HeaderAuthResult::Valid(hit));
            }
            self.app_passwords.verified.invalidate(&cache_key);
        }
        // Throttled per account (the Basic username; for tokens, the address) and per address.
        let login = match presented {
            Presented::Basic { username, .. } => format!("app-password:{}", username.trim()),
            Presented::Bearer(_) => format!("bearer:{}", client.ip.as_deref().unwrap_or("unknown")),
        };
        if let Some(wait) = self.throttle.check(&login, client.ip.as_deref()).await? {
            return Ok(HeaderAuthResult::Throttled(retry_after_secs(wait)));
        }
        let generation = self.app_passwords.generation.load(Ordering::Acquire);
        let found = match presented {
            Presented::Basic { username, secret } => self.app_password(username, secret, &cache_key).await?,
            Presented::Bearer(token) => self.access_token(token, &cache_key).await?,
        };
        let Some(identity) = found else {
            let (kind, username) = match presented {
                Presented::Basic { username, .. } => ("app_password", Some(username.chars().take(150).collect())),
                Presented::Bearer(_) => ("access_token", None),
            };
            self.events
                .record_raw(
                    "login_failed",
                    None,
                    username,
                    client,
                    json!({ "reason": format!("invalid_{kind}"), "via": "forward_auth" }),
                )
                .await;
            if let Some(wait) = self.throttle.failure(&login, client.ip.as_deref()).await? {
                self.events
                    .record_raw(
                        "login_throttled",
                        None,
                        Some(login.clone()),
                        client,
                        json!({ "retry_after_seconds": retry_after_secs(wait), "via": "forward_auth" }),
                    )
                    .await;
            }
            return Ok(HeaderAuthResult::Invalid);
        };
        if matches!(presented, Presented::Basic { .. }) {
            self.throttle.success(&login).await?;
            self.touch(&identity, now);
        }
        // A change seen while verifying may have made it stale: use it once, do not keep it.
        if self.app_passwords.generation.load(Ordering::Acquire) == generation {
            self.app_passwords.verified.insert(cache_key, Arc::clone(&identity));
        }
        Ok(HeaderAuthResult::Valid(identity))
    }

    async fn session_user(&self, user: &User) -> Result<SessionUser> {
        let groups = self.groups.effective_groups(user.id).await.map_err(CoreError::from_store)?;
        Ok(SessionUser {
            id: user.id,
            username: user.username.clone(),
            name: user.name.clone(),
            email: user.email.clone(),
            is_superuser: groups.iter().any(|g| g.is_superuser),
            groups: groups.into_iter().map(|g| g.name).collect(),
        })
    }

    async fn app_password(&self, username: &str, secret: &str, key: &str) -> Result<Option<Arc<CredentialIdentity>>> {
        let Some(found) = self.app_passwords.find(secret).await? else { return Ok(None) };
        let Some(user) = self.store.get_user(found.user_id).await.map_err(CoreError::from_store)? else {
            return Ok(None);
        };
        let login = username.trim();
        let named = user.username.eq_ignore_ascii_case(login)
            || user.email.as_deref().is_some_and(|e| e.eq_ignore_ascii_case(login));
        if !user.is_active || !named {
            return Ok(None);
        }
        Ok(Some(Arc::new(CredentialIdentity {
            user: self.session_user(&user).await?,
            kind: CredentialKind::AppPassword { id: found.id, name: found.name, applications: found.applications },
            key: key.to_string(),
            expires_at: found.expires_at,
            last_touch: AtomicI64::new(0),
        })))
    }

    async fn access_token(&self, token: &str, key: &str) -> Result<Option<Arc<CredentialIdentity>>> {
        let Some((client, Some(user), claims)) = self.oauth.check_access_token(token).await? else {
            return Ok(None);
        };
        let expires_at = claims.get("exp").and_then(Value::as_i64).and_then(|e| DateTime::from_timestamp(e, 0));
        Ok(Some(Arc::new(CredentialIdentity {
            user: self.session_user(&user).await?,
            kind: CredentialKind::AccessToken {
                client_id: client.client_id.clone(),
                provider: client.provider.name.clone(),
            },
            key: key.to_string(),
            expires_at,
            last_touch: AtomicI64::new(0),
        })))
    }

    /// Records an app password's use in the background, at most once a minute.
    fn touch(&self, identity: &CredentialIdentity, now: DateTime<Utc>) {
        let CredentialKind::AppPassword { id, .. } = identity.kind else { return };
        let now_ms = now.timestamp_millis();
        let last = identity.last_touch.load(Ordering::Relaxed);
        if now_ms - last < TOUCH_INTERVAL_MS
            || identity.last_touch.compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Relaxed).is_err()
        {
            return;
        }
        let app_passwords = self.app_passwords.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { app_passwords.touch(id).await });
        }
    }
}
