//! The user directory: users, groups, memberships and passwords, with their rules
//! (valid names, no group cycles, sessions ending when an account is locked) and audit.

use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use uuid::Uuid;

use crate::clock::Clock;
use crate::error::{CoreError, Result};
use crate::events::{ClientInfo, Events};
use crate::groups::GroupIndex;
use crate::model::*;
use crate::password::PasswordHasher;
use crate::sessions::Sessions;
use crate::store::Store;

/// The superuser group created on first start.
pub const ADMINS_GROUP: &str = "admins";

#[derive(Debug, Clone, Default)]
pub struct UserInput {
    pub username: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub password: Option<String>,
    pub groups: Vec<String>,
    pub kind: Option<UserKind>,
    pub is_active: Option<bool>,
}

#[derive(Clone)]
pub struct Directory {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    hasher: PasswordHasher,
    groups: GroupIndex,
    sessions: Sessions,
    events: Events,
}

fn store_err(e: crate::StoreError) -> CoreError {
    CoreError::from_store(e)
}

/// A pending change, described so the directory can ask "would an administrator remain?"
/// before making it.
#[derive(Debug, Clone)]
enum PendingChange {
    /// The user is deleted or deactivated.
    UserGone(Uuid),
    /// The user leaves the group.
    MembershipGone { group: Uuid, user: Uuid },
    /// The group is deleted.
    GroupGone(Uuid),
    /// The group is saved with these fields (superuser flag, parent).
    GroupChanged(Group),
}

/// Usernames: 1–150 characters of letters, digits and `. _ @ + -` (Django's rule, so
/// accounts imported from authentik keep their names).
pub fn validate_username(username: &str) -> Result<()> {
    if username.is_empty() {
        return Err(CoreError::invalid_field("username", "A username is required."));
    }
    if username.chars().count() > 150 {
        return Err(CoreError::invalid_field("username", "A username has at most 150 characters."));
    }
    if !username.chars().all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '@' | '+' | '-')) {
        return Err(CoreError::invalid_field("username", "A username may contain only letters, digits and . _ @ + -"));
    }
    Ok(())
}

pub fn validate_email(email: &str) -> Result<()> {
    let ok = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && !domain.is_empty() && !domain.starts_with('.') && !domain.ends_with('.')
        });
    if ok {
        Ok(())
    } else {
        Err(CoreError::invalid_field("email", format!("'{email}' is not a valid email address.")))
    }
}

pub fn validate_group_name(name: &str) -> Result<()> {
    if name.trim().is_empty() || name.chars().count() > 150 || name.chars().any(|c| c.is_control()) {
        return Err(CoreError::invalid_field("name", "A group name has 1 to 150 printable characters."));
    }
    Ok(())
}

impl Directory {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        hasher: PasswordHasher,
        groups: GroupIndex,
        sessions: Sessions,
        events: Events,
    ) -> Self {
        Directory { store, clock, hasher, groups, sessions, events }
    }

    pub fn hasher(&self) -> &PasswordHasher {
        &self.hasher
    }

    pub async fn create_user(&self, input: UserInput, client: &ClientInfo) -> Result<User> {
        validate_username(&input.username)?;
        let email = input.email.filter(|e| !e.trim().is_empty()).map(|e| e.trim().to_string());
        if let Some(e) = &email {
            validate_email(e)?;
        }
        if let Some(p) = &input.password {
            if p.is_empty() {
                return Err(CoreError::invalid_field("password", "The password must not be empty."));
            }
        }
        // Resolve groups before writing anything so a typo creates nothing.
        let mut groups = Vec::new();
        for name in &input.groups {
            groups.push(self.require_group(name).await?);
        }
        let password_hash = match &input.password {
            Some(p) => Some(self.hasher.hash(p).await?),
            None => None,
        };
        let now = self.clock.now();
        let user = self
            .store
            .create_user(NewUser {
                id: Uuid::now_v7(),
                name: input.name.unwrap_or_else(|| input.username.clone()),
                username: input.username,
                email,
                is_active: input.is_active.unwrap_or(true),
                kind: input.kind.unwrap_or(UserKind::Internal),
                attributes: json!({}),
                password_changed_at: password_hash.as_ref().map(|_| now),
                password_hash,
                created_at: now,
            })
            .await
            .map_err(store_err)?;
        for g in &groups {
            self.store.add_member(g.id, user.id).await.map_err(store_err)?;
        }
        let group_names: Vec<_> = groups.iter().map(|g| g.name.clone()).collect();
        self.events.record("user_created", Some(&user), client, json!({ "groups": group_names })).await;
        Ok(user)
    }

    pub async fn get_user(&self, id: Uuid) -> Result<User> {
        self.store.get_user(id).await.map_err(store_err)?.ok_or_else(|| CoreError::NotFound(format!("user {id}")))
    }

    /// By username (case-insensitive).
    pub async fn require_user(&self, username: &str) -> Result<User> {
        self.store
            .get_user_by_username(username)
            .await
            .map_err(store_err)?
            .ok_or_else(|| CoreError::NotFound(format!("user '{username}'")))
    }

    pub async fn find_by_login(&self, login: &str) -> Result<Option<User>> {
        self.store.find_user_by_login(login.trim()).await.map_err(store_err)
    }

    pub async fn list_users(&self, query: &ListQuery) -> Result<Page<User>> {
        self.store.list_users(query).await.map_err(store_err)
    }

    /// Saves profile fields (username, name, email, attributes, kind, active flag).
    pub async fn update_user(&self, user: &User, client: &ClientInfo) -> Result<()> {
        validate_username(&user.username)?;
        if let Some(e) = &user.email {
            validate_email(e)?;
        }
        let before = self.get_user(user.id).await?;
        if before.is_active && !user.is_active {
            self.ensure_admin_remains(PendingChange::UserGone(user.id)).await?;
        }
        self.store.update_user(user).await.map_err(store_err)?;
        if before.is_active && !user.is_active {
            self.sessions.revoke_user(user.id).await?;
        }
        self.events.record("user_changed", Some(user), client, json!({})).await;
        Ok(())
    }

    pub async fn set_active(&self, username: &str, active: bool, client: &ClientInfo) -> Result<User> {
        let mut user = self.require_user(username).await?;
        user.is_active = active;
        self.update_user(&user, client).await?;
        Ok(user)
    }

    /// Sets a new password and ends every session of the user.
    pub async fn set_password(&self, user: &User, password: &str, client: &ClientInfo) -> Result<()> {
        if password.is_empty() {
            return Err(CoreError::invalid_field("password", "The password must not be empty."));
        }
        let hash = self.hasher.hash(password).await?;
        self.store.set_password_hash(user.id, &hash, self.clock.now()).await.map_err(store_err)?;
        self.sessions.revoke_user(user.id).await?;
        self.events.record("password_set", Some(user), client, json!({})).await;
        Ok(())
    }

    pub async fn delete_user(&self, username: &str, client: &ClientInfo) -> Result<User> {
        let user = self.require_user(username).await?;
        self.ensure_admin_remains(PendingChange::UserGone(user.id)).await?;
        self.sessions.revoke_user(user.id).await?;
        self.store.delete_user(user.id).await.map_err(store_err)?;
        // The sign-out epoch that revocation just wrote belongs to no one now.
        self.store.delete_setting(&crate::sessions::signout_epoch_key(user.id)).await.map_err(store_err)?;
        self.events.record("user_deleted", Some(&user), client, json!({})).await;
        Ok(user)
    }

    /// Checks a password for a user; a legacy or outdated hash is replaced on success.
    /// `None` user still spends the time of a real check.
    pub async fn check_password(&self, user: Option<&User>, password: &str) -> Result<bool> {
        let Some(user) = user else {
            self.hasher.verify_dummy(password).await?;
            return Ok(false);
        };
        let stored = user.password_hash.as_deref();
        let v = self.hasher.verify(password, stored).await?;
        if !v.valid || !user.is_active {
            return Ok(false);
        }
        if let (true, Some(old)) = (v.needs_rehash, stored) {
            match self.hasher.hash(password).await {
                Ok(new) => {
                    if let Err(e) = self.store.upgrade_password_hash(user.id, old, &new).await {
                        tracing::warn!(error = %e, user.name = %user.username, "could not upgrade password hash");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not rehash password"),
            }
        }
        Ok(true)
    }

    pub async fn record_login(&self, user: &User) -> Result<()> {
        self.store.set_last_login(user.id, self.clock.now()).await.map_err(store_err)
    }

    // ---- groups ----

    pub async fn create_group(
        &self,
        name: &str,
        parent: Option<&str>,
        is_superuser: bool,
        client: &ClientInfo,
    ) -> Result<Group> {
        validate_group_name(name)?;
        let parent_id = match parent {
            Some(p) => Some(self.require_group(p).await?.id),
            None => None,
        };
        let group = self
            .store
            .create_group(NewGroup {
                id: Uuid::now_v7(),
                name: name.to_string(),
                parent_id,
                is_superuser,
                attributes: json!({}),
                created_at: self.clock.now(),
            })
            .await
            .map_err(store_err)?;
        self.groups.invalidate();
        self.events.record_raw("group_created", None, None, client, json!({ "group": group.name })).await;
        Ok(group)
    }

    pub async fn require_group(&self, name: &str) -> Result<Group> {
        self.store
            .get_group_by_name(name)
            .await
            .map_err(store_err)?
            .ok_or_else(|| CoreError::NotFound(format!("group '{name}'")))
    }

    pub async fn list_groups(&self, query: &ListQuery) -> Result<Page<Group>> {
        self.store.list_groups(query).await.map_err(store_err)
    }

    /// Saves a group; refuses a parent that would make a cycle.
    pub async fn update_group(&self, group: &Group, client: &ClientInfo) -> Result<()> {
        validate_group_name(&group.name)?;
        if let Some(parent) = group.parent_id {
            let tree = self.groups.tree().await.map_err(store_err)?;
            if !tree.by_id.contains_key(&parent) {
                return Err(CoreError::invalid_field("parent", "The parent group does not exist."));
            }
            if tree.would_cycle(group.id, parent) {
                return Err(CoreError::invalid_field(
                    "parent",
                    "A group cannot be nested inside itself or its descendants.",
                ));
            }
        }
        self.ensure_admin_remains(PendingChange::GroupChanged(group.clone())).await?;
        self.store.update_group(group).await.map_err(store_err)?;
        self.groups.invalidate();
        self.sessions.apply_change(&Change::Groups);
        self.events.record_raw("group_changed", None, None, client, json!({ "group": group.name })).await;
        Ok(())
    }

    pub async fn delete_group(&self, name: &str, client: &ClientInfo) -> Result<Group> {
        let group = self.require_group(name).await?;
        self.ensure_admin_remains(PendingChange::GroupGone(group.id)).await?;
        self.store.delete_group(group.id).await.map_err(store_err)?;
        self.groups.invalidate();
        self.sessions.apply_change(&Change::Groups);
        self.events.record_raw("group_deleted", None, None, client, json!({ "group": group.name })).await;
        Ok(group)
    }

    pub async fn add_member(&self, group: &str, username: &str, client: &ClientInfo) -> Result<()> {
        let group = self.require_group(group).await?;
        let user = self.require_user(username).await?;
        self.store.add_member(group.id, user.id).await.map_err(store_err)?;
        self.sessions.apply_change(&Change::User(user.id));
        self.events.record("group_member_added", Some(&user), client, json!({ "group": group.name })).await;
        Ok(())
    }

    pub async fn remove_member(&self, group: &str, username: &str, client: &ClientInfo) -> Result<()> {
        let group = self.require_group(group).await?;
        let user = self.require_user(username).await?;
        self.ensure_admin_remains(PendingChange::MembershipGone { group: group.id, user: user.id }).await?;
        self.store.remove_member(group.id, user.id).await.map_err(store_err)?;
        self.sessions.apply_change(&Change::User(user.id));
        self.events.record("group_member_removed", Some(&user), client, json!({ "group": group.name })).await;
        Ok(())
    }

    /// Effective groups (direct and inherited through nesting).
    pub async fn effective_groups(&self, user_id: Uuid) -> Result<Vec<Group>> {
        self.groups.effective_groups(user_id).await.map_err(store_err)
    }

    pub async fn is_superuser(&self, user_id: Uuid) -> Result<bool> {
        Ok(self.effective_groups(user_id).await?.iter().any(|g| g.is_superuser))
    }

    pub async fn member_usernames(&self, group: &Group) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for id in self.store.direct_member_ids(group.id).await.map_err(store_err)? {
            if let Some(u) = self.store.get_user(id).await.map_err(store_err)? {
                names.push(u.username);
            }
        }
        names.sort();
        Ok(names)
    }

    /// True once an active user is (directly or through nesting) in a superuser group.
    pub async fn admin_exists(&self) -> Result<bool> {
        Ok(!self.active_admins(None).await?.is_empty())
    }

    /// Active superusers, as they are now or as they would be after `pending`.
    async fn active_admins(&self, pending: Option<&PendingChange>) -> Result<HashSet<Uuid>> {
        let tree = self.groups.tree().await.map_err(store_err)?;
        let mut groups: HashMap<Uuid, Group> = tree.by_id.clone();
        match pending {
            Some(PendingChange::GroupGone(id)) => {
                groups.remove(id);
                for g in groups.values_mut() {
                    if g.parent_id == Some(*id) {
                        g.parent_id = None;
                    }
                }
            }
            Some(PendingChange::GroupChanged(g)) => {
                groups.insert(g.id, g.clone());
            }
            _ => {}
        }
        let hypothetical = crate::groups::Tree { by_id: groups };
        let mut admins = HashSet::new();
        for group in hypothetical.by_id.values() {
            if !hypothetical.with_ancestors(&[group.id]).iter().any(|g| g.is_superuser) {
                continue;
            }
            for id in self.store.direct_member_ids(group.id).await.map_err(store_err)? {
                let excluded = match pending {
                    Some(PendingChange::UserGone(u)) => *u == id,
                    Some(PendingChange::MembershipGone { group: g, user }) => *g == group.id && *user == id,
                    _ => false,
                };
                if excluded || admins.contains(&id) {
                    continue;
                }
                if self.store.get_user(id).await.map_err(store_err)?.is_some_and(|u| u.is_active) {
                    admins.insert(id);
                }
            }
        }
        Ok(admins)
    }

    /// Refuses a change that would leave no active superuser, when there is one now:
    /// nobody could administer the directory any more except from the command line.
    async fn ensure_admin_remains(&self, pending: PendingChange) -> Result<()> {
        if self.active_admins(Some(&pending)).await?.is_empty() && !self.active_admins(None).await?.is_empty() {
            return Err(CoreError::Conflict(
                "This would leave no active superuser; make someone else a superuser first.".into(),
            ));
        }
        Ok(())
    }
}
