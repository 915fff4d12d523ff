//! Login sessions: created by the `user_login` stage, checked on every request.
//!
//! The check is the hot path (every forward-auth request makes it), so valid sessions are
//! answered from an in-memory cache. Revocations made here invalidate it at once; those made
//! by other processes arrive through the store's change feed within a second.

use chrono::{DateTime, Duration, Utc};
use moka::sync::Cache;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use uuid::Uuid;

use crate::clock::Clock;
use crate::error::{CoreError, Result};
use crate::events::ClientInfo;
use crate::groups::GroupIndex;
use crate::keys::{hash_secret, random_secret, DerivedKey};
use crate::model::{Change, Session, User};
use crate::store::Store;

/// Where a user's sign-out epoch is kept: the time of their last "sign out everywhere"
/// (or password change, or disabling), as microseconds; absent when there was none.
pub fn signout_epoch_key(user_id: Uuid) -> String {
    format!("signout_epoch:{user_id}")
}

#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    /// A session unused for this long ends.
    pub idle_timeout: Duration,
    /// A session ends this long after login, whatever its activity.
    pub lifetime: Duration,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings { idle_timeout: Duration::hours(24), lifetime: Duration::days(14) }
    }
}

/// What request handlers need to know about the logged-in user.
#[derive(Debug, Clone)]
pub struct SessionUser {
    pub id: Uuid,
    pub username: String,
    pub name: String,
    pub email: Option<String>,
    /// Effective group names (nesting resolved).
    pub groups: Vec<String>,
    pub is_superuser: bool,
}

/// A validated session.
#[derive(Debug)]
pub struct ActiveSession {
    pub session: Session,
    pub user: SessionUser,
    /// Last activity written to the store (ms); activity is persisted at most once a minute.
    persisted_seen: AtomicI64,
}

const TOUCH_INTERVAL_MS: i64 = 60_000;

#[derive(Clone)]
pub struct Sessions {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    groups: GroupIndex,
    cookie_key: DerivedKey,
    settings: SessionSettings,
    cache: Cache<String, Arc<ActiveSession>>,
}

impl Sessions {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        groups: GroupIndex,
        cookie_key: DerivedKey,
        settings: SessionSettings,
    ) -> Self {
        let cache = Cache::builder()
            .max_capacity(100_000)
            // Bounds how stale a user's name or groups can be if a change signal is ever missed.
            .time_to_live(std::time::Duration::from_secs(300))
            .support_invalidation_closures()
            .build();
        Sessions { store, clock, groups, cookie_key, settings, cache }
    }

    pub fn settings(&self) -> SessionSettings {
        self.settings
    }

    /// Starts a session for `user`; returns the cookie value and the session.
    pub async fn create(&self, user: &User, amr: Vec<String>, client: &ClientInfo) -> Result<(String, Session)> {
        let secret = random_secret(32);
        let key_hash = hash_secret(&secret);
        let now = self.clock.now();
        let session = Session {
            id: key_hash[..16].to_string(),
            key_hash,
            user_id: user.id,
            created_at: now,
            last_seen: now,
            expires_at: now + self.settings.lifetime,
            client_ip: client.ip.clone(),
            user_agent: client.user_agent.clone(),
            amr,
        };
        self.store.create_session(&session).await.map_err(CoreError::from_store)?;
        // Warm the cache: the first page after login needs no store round trip.
        let active = self.activate(session.clone(), user.clone()).await?;
        self.cache.insert(session.key_hash.clone(), active);
        Ok((self.cookie_key.seal(&secret), session))
    }

    /// What the cache keeps for a session: it and a snapshot of its user with effective groups.
    async fn activate(&self, session: Session, user: User) -> Result<Arc<ActiveSession>> {
        let groups = self.groups.effective_groups(user.id).await.map_err(CoreError::from_store)?;
        Ok(Arc::new(ActiveSession {
            persisted_seen: AtomicI64::new(session.last_seen.timestamp_millis()),
            user: SessionUser {
                id: user.id,
                username: user.username,
                name: user.name,
                email: user.email,
                is_superuser: groups.iter().any(|g| g.is_superuser),
                groups: groups.into_iter().map(|g| g.name).collect(),
            },
            session,
        }))
    }

    /// The session a cookie value stands for, if it is genuine, unexpired and its user active.
    pub async fn validate(&self, cookie_value: &str) -> Result<Option<Arc<ActiveSession>>> {
        // Forged or garbled cookies stop here, before any cache or store lookup.
        let Some(secret) = self.cookie_key.unseal(cookie_value) else {
            return Ok(None);
        };
        let key_hash = hash_secret(secret);
        let now = self.clock.now();
        if let Some(active) = self.cache.get(&key_hash) {
            if self.is_live(&active, now) {
                self.touch(&active, now);
                return Ok(Some(active));
            }
            self.cache.invalidate(&key_hash);
            return Ok(None);
        }
        let Some(session) = self.store.get_session(&key_hash).await.map_err(CoreError::from_store)? else {
            return Ok(None);
        };
        let Some(user) = self.store.get_user(session.user_id).await.map_err(CoreError::from_store)? else {
            return Ok(None);
        };
        if !user.is_active {
            return Ok(None);
        }
        let active = self.activate(session, user).await?;
        if !self.is_live(&active, now) {
            return Ok(None);
        }
        self.cache.insert(key_hash, Arc::clone(&active));
        self.touch(&active, now);
        Ok(Some(active))
    }

    fn is_live(&self, active: &ActiveSession, now: DateTime<Utc>) -> bool {
        let last_seen = active.persisted_seen.load(Ordering::Relaxed);
        active.session.expires_at > now
            && now.timestamp_millis() - last_seen < self.settings.idle_timeout.num_milliseconds()
    }

    /// Persists activity at most once a minute per session, in the background.
    fn touch(&self, active: &Arc<ActiveSession>, now: DateTime<Utc>) {
        let now_ms = now.timestamp_millis();
        let seen = active.persisted_seen.load(Ordering::Relaxed);
        if now_ms - seen < TOUCH_INTERVAL_MS {
            return;
        }
        if active.persisted_seen.compare_exchange(seen, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return; // another request is already writing it
        }
        let store = Arc::clone(&self.store);
        let key = active.session.key_hash.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = store.touch_session(&key, now).await {
                    tracing::warn!(error = %e, "could not record session activity");
                }
            });
        }
    }

    /// Ends one session by the hash of its key.
    pub async fn revoke(&self, key_hash: &str) -> Result<()> {
        self.cache.invalidate(key_hash);
        self.store.delete_session(key_hash).await.map_err(CoreError::from_store)
    }

    /// Ends the session a cookie stands for (logout).
    pub async fn revoke_cookie(&self, cookie_value: &str) -> Result<Option<Session>> {
        let Some(secret) = self.cookie_key.unseal(cookie_value) else {
            return Ok(None);
        };
        let key_hash = hash_secret(secret);
        let session = self.store.get_session(&key_hash).await.map_err(CoreError::from_store)?;
        self.revoke(&key_hash).await?;
        Ok(session)
    }

    /// Ends every session of a user; returns how many. Also moves the user's sign-out epoch,
    /// which voids what outlives sessions (browsers remembered for the second factor).
    pub async fn revoke_user(&self, user_id: Uuid) -> Result<u64> {
        self.forget_user(user_id);
        let epoch = serde_json::json!(self.clock.now().timestamp_micros());
        self.store.set_setting(&signout_epoch_key(user_id), &epoch).await.map_err(CoreError::from_store)?;
        self.store.delete_user_sessions(user_id).await.map_err(CoreError::from_store)
    }

    pub async fn list(&self, user_id: Option<Uuid>) -> Result<Vec<Session>> {
        self.store.list_sessions(user_id).await.map_err(CoreError::from_store)
    }

    /// Ends the session whose public id (or a unique prefix of it, at least 6 characters) is given.
    pub async fn revoke_by_id(&self, id: &str) -> Result<Session> {
        if id.len() < 6 {
            return Err(CoreError::invalid("a session id needs at least 6 characters"));
        }
        let mut found = self.store.find_sessions_by_id(id).await.map_err(CoreError::from_store)?;
        match found.len() {
            0 => Err(CoreError::NotFound(format!("session '{id}'"))),
            1 => {
                let session = found.remove(0);
                self.revoke(&session.key_hash).await?;
                Ok(session)
            }
            _ => Err(CoreError::invalid(format!("session id '{id}' is ambiguous; give more characters"))),
        }
    }

    fn forget_user(&self, user_id: Uuid) {
        // Only fails if closures are unsupported, which the builder enabled.
        let _ = self.cache.invalidate_entries_if(move |_, s| s.user.id == user_id);
    }

    /// Applies a change made by any process (this one included) to the cache.
    pub fn apply_change(&self, change: &Change) {
        match change {
            Change::Session(key_hash) => self.cache.invalidate(key_hash),
            Change::User(id) => self.forget_user(*id),
            Change::Groups => {
                self.groups.invalidate();
                self.cache.invalidate_all();
            }
            Change::Config => {}
        }
    }

    /// Forget everything cached (e.g. when change signals may have been missed).
    pub fn clear(&self) {
        self.groups.invalidate();
        self.cache.invalidate_all();
    }

    /// Housekeeping: removes expired sessions from the store.
    pub async fn purge_expired(&self) -> Result<u64> {
        let now = self.clock.now();
        self.store.delete_expired_sessions(now, now - self.settings.idle_timeout).await.map_err(CoreError::from_store)
    }
}
