//! Users and their policy views (effective groups resolved), cached in memory by id for the
//! hot paths that see a user on every request: forward auth, OIDC userinfo and
//! introspection. Entries are dropped when the change feed reports a change to the user, to
//! groups or to configuration, so a disabled user or a new membership is seen within a second
//! by every process; a five-minute lifetime bounds anything missed.

use moka::sync::Cache;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

use crate::access::Access;
use crate::error::{CoreError, Result};
use crate::model::{Change, User};
use crate::policy::PolicyUser;
use crate::store::Store;

const CAPACITY: u64 = 100_000;
const LIFETIME: Duration = Duration::from_secs(300);

#[derive(Clone)]
pub struct UserCache {
    store: Arc<dyn Store>,
    access: Access,
    users: Cache<Uuid, Arc<User>>,
    policy_users: Cache<Uuid, Arc<PolicyUser>>,
    /// Bumped on every invalidation: a load that raced with one is used but not kept.
    generation: Arc<AtomicU64>,
}

impl UserCache {
    pub fn new(store: Arc<dyn Store>, access: Access) -> Self {
        UserCache {
            store,
            access,
            users: Cache::builder().max_capacity(CAPACITY).time_to_live(LIFETIME).build(),
            policy_users: Cache::builder().max_capacity(CAPACITY).time_to_live(LIFETIME).build(),
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Applies a change made by any process.
    pub fn apply_change(&self, change: &Change) {
        match change {
            Change::Config => self.invalidate(),
            Change::User(id) => {
                self.generation.fetch_add(1, Ordering::AcqRel);
                self.users.invalidate(id);
                self.policy_users.invalidate(id);
            }
            Change::Groups => {
                self.generation.fetch_add(1, Ordering::AcqRel);
                self.policy_users.invalidate_all();
            }
            Change::Session(_) => {}
        }
    }

    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.users.invalidate_all();
        self.policy_users.invalidate_all();
    }

    /// The user with this id (active or not), from memory when cached.
    pub async fn user(&self, id: Uuid) -> Result<Option<Arc<User>>> {
        if let Some(u) = self.users.get(&id) {
            return Ok(Some(u));
        }
        let generation = self.generation.load(Ordering::Acquire);
        let Some(user) = self.store.get_user(id).await.map_err(CoreError::from_store)? else { return Ok(None) };
        let user = Arc::new(user);
        if self.generation.load(Ordering::Acquire) == generation {
            self.users.insert(id, Arc::clone(&user));
        }
        Ok(Some(user))
    }

    /// The user's policy view (effective groups), from memory when cached.
    pub async fn policy_user(&self, user: &User) -> Result<Arc<PolicyUser>> {
        if let Some(u) = self.policy_users.get(&user.id) {
            return Ok(u);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let loaded = Arc::new(self.access.policy_user(user).await?);
        if self.generation.load(Ordering::Acquire) == generation {
            self.policy_users.insert(user.id, Arc::clone(&loaded));
        }
        Ok(loaded)
    }
}
