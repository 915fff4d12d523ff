//! App passwords: named per-user secrets for clients that cannot log in through a browser
//! (a WebDAV client, a script, a phone app) and send `Authorization: Basic user:secret` through
//! forward auth instead.
//!
//! The secret is 256 random bits, shown once; only its SHA-256 is stored (a random secret needs
//! no slow hash, so checking one costs no argon2). An app password may be limited to some
//! applications and may expire; revoking it records `Change::User`, so every instance drops a
//! cached verification at once.

use chrono::{DateTime, Duration, Utc};
use moka::sync::Cache;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use uuid::Uuid;

use crate::clock::Clock;
use crate::error::{CoreError, Result};
use crate::events::{ClientInfo, Events};
use crate::header_auth::CredentialIdentity;
use crate::keys::{hash_secret, random_secret};
use crate::model::{Application, User};
use crate::store::Store;

/// Longest accepted name.
const MAX_NAME: usize = 64;

/// A stored app password (without its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppPassword {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    /// SHA-256 of the secret, hex.
    #[serde(skip_serializing)]
    pub secret_hash: String,
    /// The applications it opens; `None` for every application the user may use.
    pub applications: Option<Vec<Uuid>>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl AppPassword {
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
    }

    /// Whether it may be used for `app`.
    pub fn allows(&self, app: Uuid) -> bool {
        self.applications.as_ref().is_none_or(|apps| apps.contains(&app))
    }
}

/// What `create` needs besides the user.
#[derive(Debug, Clone, Default)]
pub struct NewAppPassword {
    pub name: String,
    /// Empty: every application.
    pub applications: Vec<Application>,
    /// From now; `None` never expires.
    pub expires_in: Option<Duration>,
}

#[derive(Clone)]
pub struct AppPasswords {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    events: Events,
    /// Credentials verified by forward auth (see `header_auth`), kept here so that a revocation
    /// on this instance drops them at once; other instances follow the change feed.
    pub(crate) verified: Cache<String, Arc<CredentialIdentity>>,
    /// Bumped by every invalidation, so a verification racing one is not cached.
    pub(crate) generation: Arc<AtomicU64>,
}

impl AppPasswords {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, events: Events) -> Self {
        AppPasswords {
            store,
            clock,
            events,
            verified: Cache::builder()
                .max_capacity(100_000)
                // Bounds staleness should a change signal ever be missed.
                .time_to_live(std::time::Duration::from_secs(300))
                .support_invalidation_closures()
                .build(),
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Drops every cached verification of `user_id`'s credentials.
    pub fn forget_user(&self, user_id: Uuid) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        // Never fails for a cache built with support for invalidation closures.
        let _ = self.verified.invalidate_entries_if(move |_, v| v.user.id == user_id);
    }

    pub fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.verified.invalidate_all();
    }

    /// Creates one for `user`; returns the secret (shown once, never stored) and the record.
    pub async fn create(
        &self,
        user: &User,
        input: NewAppPassword,
        client: &ClientInfo,
    ) -> Result<(String, AppPassword)> {
        let name = input.name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
            return Err(CoreError::invalid_field(
                "name",
                format!("An app password needs a name of 1 to {MAX_NAME} printable characters."),
            ));
        }
        if let Some(d) = input.expires_in {
            if d <= Duration::zero() {
                return Err(CoreError::invalid_field("expires", "The expiry must lie in the future."));
            }
        }
        let now = self.clock.now();
        let secret = random_secret(32);
        let mut applications: Vec<Uuid> = input.applications.iter().map(|a| a.id).collect();
        applications.dedup();
        let record = AppPassword {
            id: Uuid::now_v7(),
            user_id: user.id,
            name: name.to_string(),
            secret_hash: hash_secret(&secret),
            applications: (!applications.is_empty()).then_some(applications),
            created_at: now,
            expires_at: input.expires_in.map(|d| now + d),
            last_used_at: None,
        };
        self.store.create_app_password(&record).await.map_err(|e| match CoreError::from_store(e) {
            CoreError::Conflict(_) => {
                CoreError::Conflict(format!("{} already has an app password named '{name}'.", user.username))
            }
            other => other,
        })?;
        self.events
            .record(
                "app_password_created",
                Some(user),
                client,
                json!({
                    "name": record.name,
                    "id": record.id,
                    "applications": input.applications.iter().map(|a| a.slug.clone()).collect::<Vec<_>>(),
                    "expires_at": record.expires_at,
                }),
            )
            .await;
        Ok((secret, record))
    }

    /// The applications named by `slugs` (blank entries ignored), for scoping a new app
    /// password; an unknown slug is a field error on `applications`.
    pub async fn applications_by_slug(&self, slugs: &[String]) -> Result<Vec<Application>> {
        let mut apps = Vec::new();
        for slug in slugs.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            match self.store.get_application_by_slug(slug).await.map_err(CoreError::from_store)? {
                Some(app) => apps.push(app),
                None => {
                    return Err(CoreError::invalid_field(
                        "applications",
                        format!("There is no application with the slug '{slug}'."),
                    ))
                }
            }
        }
        Ok(apps)
    }

    /// Slugs of the applications a password is scoped to (ids of deleted ones as they are).
    pub async fn scope_slugs(&self, password: &AppPassword) -> Result<Option<Vec<String>>> {
        let Some(ids) = &password.applications else { return Ok(None) };
        let apps = self.store.list_applications().await.map_err(CoreError::from_store)?;
        Ok(Some(
            ids.iter()
                .map(|id| apps.iter().find(|a| a.id == *id).map_or_else(|| id.to_string(), |a| a.slug.clone()))
                .collect(),
        ))
    }

    /// Revokes the user's app password with this id; `NotFound` if it is not theirs.
    pub async fn revoke_id(&self, user: &User, id: Uuid, client: &ClientInfo) -> Result<AppPassword> {
        let found = self.list(user).await?.into_iter().find(|p| p.id == id);
        let Some(found) = found else {
            return Err(CoreError::NotFound(format!("app password {id} of {}", user.username)));
        };
        self.revoke(user, &found.name, client).await
    }

    pub async fn list(&self, user: &User) -> Result<Vec<AppPassword>> {
        self.store.list_app_passwords(user.id).await.map_err(CoreError::from_store)
    }

    /// Revokes the user's app password called `name`; `NotFound` if there is none.
    pub async fn revoke(&self, user: &User, name: &str, client: &ClientInfo) -> Result<AppPassword> {
        let found = self.list(user).await?.into_iter().find(|p| p.name == name.trim());
        let Some(found) = found else {
            return Err(CoreError::NotFound(format!("app password '{}' of {}", name.trim(), user.username)));
        };
        self.store.delete_app_password(found.id).await.map_err(CoreError::from_store)?;
        self.forget_user(user.id);
        self.events
            .record("app_password_revoked", Some(user), client, json!({ "name": found.name, "id": found.id }))
            .await;
        Ok(found)
    }

    /// The unexpired app password with this secret, read from the store (callers cache).
    pub async fn find(&self, secret: &str) -> Result<Option<AppPassword>> {
        let found = self.store.find_app_password(&hash_secret(secret)).await.map_err(CoreError::from_store)?;
        let now = self.clock.now();
        Ok(found.filter(|p| !p.is_expired(now)))
    }

    /// Records a use (callers write it at most once a minute per password).
    pub async fn touch(&self, id: Uuid) {
        if let Err(e) = self.store.touch_app_password(id, self.clock.now()).await {
            tracing::debug!(error = %e, "could not record the use of an app password");
        }
    }
}

/// `90d`, `12h`, `30m`, `2w`, `3600s` (or a bare number of seconds) as a duration.
pub fn parse_expiry(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: i64 = number.parse().ok().filter(|n| *n > 0 && *n < 100_000_000)?;
    match unit {
        "" | "s" => Some(Duration::seconds(n)),
        "m" => Some(Duration::minutes(n)),
        "h" => Some(Duration::hours(n)),
        "d" => Some(Duration::days(n)),
        "w" => Some(Duration::weeks(n)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_parse() {
        assert_eq!(parse_expiry("90d"), Some(Duration::days(90)));
        assert_eq!(parse_expiry("12h"), Some(Duration::hours(12)));
        assert_eq!(parse_expiry("3600"), Some(Duration::seconds(3600)));
        for bad in ["", "d", "0d", "-1d", "5y", "1.5h"] {
            assert_eq!(parse_expiry(bad), None, "{bad}");
        }
    }

    #[test]
    fn scope_and_expiry() {
        let now = Utc::now();
        let app = Uuid::now_v7();
        let mut p = AppPassword {
            id: Uuid::nil(),
            user_id: Uuid::nil(),
            name: "x".into(),
            secret_hash: String::new(),
            applications: None,
            created_at: now,
            expires_at: None,
            last_used_at: None,
        };
        assert!(p.allows(app) && !p.is_expired(now));
        p.applications = Some(vec![Uuid::nil()]);
        p.expires_at = Some(now);
        assert!(!p.allows(app) && p.is_expired(now));
    }
}
