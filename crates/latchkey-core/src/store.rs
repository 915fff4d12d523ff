//! The store contract: small traits per aggregate, implemented by `latchkey-store`
//! for SQLite and PostgreSQL. Nothing here knows SQL.
//!
//! Writes that other processes must notice (a session revoked, a user disabled) record a
//! [`Change`] in the same transaction; [`Store::subscribe`] delivers changes made by any
//! process sharing the database, including this one.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::error::StoreResult;
use crate::model::*;

#[async_trait]
pub trait UserStore: Send + Sync {
    /// Fails with `Conflict` when the username is taken (case-insensitively).
    async fn create_user(&self, user: NewUser) -> StoreResult<User>;
    async fn get_user(&self, id: Uuid) -> StoreResult<Option<User>>;
    async fn get_user_by_username(&self, username: &str) -> StoreResult<Option<User>>;
    /// Matches the username or the email, case-insensitively; usernames win over emails.
    async fn find_user_by_login(&self, login: &str) -> StoreResult<Option<User>>;
    /// `search` matches username, name and email; ordering fields: username, name, email, created_at, last_login.
    async fn list_users(&self, query: &ListQuery) -> StoreResult<Page<User>>;
    /// Updates username, name, email, is_active, kind, attributes. Records `Change::User`.
    async fn update_user(&self, user: &User) -> StoreResult<()>;
    /// Sets the hash and `password_changed_at`. Records `Change::User`.
    async fn set_password_hash(&self, id: Uuid, hash: &str, changed_at: DateTime<Utc>) -> StoreResult<()>;
    /// Replaces the hash only if it is still `old_hash` (rehash on login must not undo a password change).
    async fn upgrade_password_hash(&self, id: Uuid, old_hash: &str, new_hash: &str) -> StoreResult<()>;
    async fn set_last_login(&self, id: Uuid, at: DateTime<Utc>) -> StoreResult<()>;
    /// Deletes the user, memberships, sessions and tokens. Records `Change::User`.
    async fn delete_user(&self, id: Uuid) -> StoreResult<()>;
    async fn count_users(&self) -> StoreResult<u64>;
    /// Every active user, in no particular order and without a count: one plain read for
    /// whole-directory readers (the LDAP snapshot).
    async fn all_active_users(&self) -> StoreResult<Vec<User>> {
        Ok(self.list_users(&ListQuery::all()).await?.items.into_iter().filter(|u| u.is_active).collect())
    }
}

#[async_trait]
pub trait GroupStore: Send + Sync {
    /// Fails with `Conflict` when the name is taken.
    async fn create_group(&self, group: NewGroup) -> StoreResult<Group>;
    async fn get_group(&self, id: Uuid) -> StoreResult<Option<Group>>;
    async fn get_group_by_name(&self, name: &str) -> StoreResult<Option<Group>>;
    /// `search` matches the name; ordering fields: name, created_at.
    async fn list_groups(&self, query: &ListQuery) -> StoreResult<Page<Group>>;
    /// Every group; the directory computes nesting from this (group counts are small).
    async fn all_groups(&self) -> StoreResult<Vec<Group>>;
    /// Updates name, parent_id, is_superuser, attributes. Records `Change::Groups`.
    async fn update_group(&self, group: &Group) -> StoreResult<()>;
    /// Deletes the group and its memberships; children become top-level. Records `Change::Groups`.
    async fn delete_group(&self, id: Uuid) -> StoreResult<()>;
    /// Idempotent. Records `Change::User`.
    async fn add_member(&self, group_id: Uuid, user_id: Uuid) -> StoreResult<()>;
    /// Idempotent. Records `Change::User`.
    async fn remove_member(&self, group_id: Uuid, user_id: Uuid) -> StoreResult<()>;
    /// Ids of the groups the user is directly a member of.
    async fn direct_group_ids(&self, user_id: Uuid) -> StoreResult<Vec<Uuid>>;
    /// Users directly in the group.
    async fn direct_member_ids(&self, group_id: Uuid) -> StoreResult<Vec<Uuid>>;
    /// Every direct membership as (group id, user id), in one read: whole-directory readers
    /// (the LDAP snapshot) must not pay one query per group.
    async fn all_memberships(&self) -> StoreResult<Vec<(Uuid, Uuid)>> {
        let mut all = Vec::new();
        for group in self.all_groups().await? {
            for user in self.direct_member_ids(group.id).await? {
                all.push((group.id, user));
            }
        }
        Ok(all)
    }
}

#[async_trait]
pub trait SessionStore: Send + Sync {
    async fn create_session(&self, session: &Session) -> StoreResult<()>;
    async fn get_session(&self, key_hash: &str) -> StoreResult<Option<Session>>;
    /// Sessions whose public `id` starts with `id_prefix`.
    async fn find_sessions_by_id(&self, id_prefix: &str) -> StoreResult<Vec<Session>>;
    async fn list_sessions(&self, user_id: Option<Uuid>) -> StoreResult<Vec<Session>>;
    async fn touch_session(&self, key_hash: &str, last_seen: DateTime<Utc>) -> StoreResult<()>;
    /// Records `Change::Session`.
    async fn delete_session(&self, key_hash: &str) -> StoreResult<()>;
    /// Returns how many ended. Records `Change::User`.
    async fn delete_user_sessions(&self, user_id: Uuid) -> StoreResult<u64>;
    /// Housekeeping: drops sessions past their absolute expiry or idle since `idle_before`.
    async fn delete_expired_sessions(&self, now: DateTime<Utc>, idle_before: DateTime<Utc>) -> StoreResult<u64>;
}

#[async_trait]
pub trait FlowStore: Send + Sync {
    /// Creates or updates by slug; returns the stored flow (its id is kept on update).
    async fn upsert_flow(&self, flow: &Flow) -> StoreResult<Flow>;
    async fn get_flow_by_slug(&self, slug: &str) -> StoreResult<Option<Flow>>;
    async fn list_flows(&self) -> StoreResult<Vec<Flow>>;
    async fn delete_flow(&self, id: Uuid) -> StoreResult<()>;
    /// Creates or updates by name; returns the stored stage (its id is kept on update).
    async fn upsert_stage(&self, stage: &Stage) -> StoreResult<Stage>;
    async fn get_stage(&self, id: Uuid) -> StoreResult<Option<Stage>>;
    async fn get_stage_by_name(&self, name: &str) -> StoreResult<Option<Stage>>;
    async fn list_stages(&self) -> StoreResult<Vec<Stage>>;
    async fn delete_stage(&self, id: Uuid) -> StoreResult<()>;
    /// Creates or updates by (flow_id, stage_id, order).
    async fn upsert_binding(&self, binding: &FlowStageBinding) -> StoreResult<FlowStageBinding>;
    /// The flow's stage bindings in order, with their stages.
    async fn flow_bindings(&self, flow_id: Uuid) -> StoreResult<Vec<(FlowStageBinding, Stage)>>;
    async fn delete_binding(&self, id: Uuid) -> StoreResult<()>;

    async fn get_flow_state(&self, key: &str, now: DateTime<Utc>) -> StoreResult<Option<FlowStateRecord>>;
    async fn put_flow_state(&self, state: &FlowStateRecord) -> StoreResult<()>;
    /// Creates the state only if no unexpired one has its key (an expired one is replaced);
    /// `false` when one exists. Atomic: of two concurrent calls with one key exactly one wins,
    /// across every process sharing the database (single-use markers such as assertion `jti`s).
    async fn insert_flow_state(&self, state: &FlowStateRecord, now: DateTime<Utc>) -> StoreResult<bool>;
    async fn delete_flow_state(&self, key: &str) -> StoreResult<()>;
    async fn delete_expired_flow_states(&self, now: DateTime<Utc>) -> StoreResult<u64>;
}

#[async_trait]
pub trait TokenStore: Send + Sync {
    async fn create_token(&self, token: &Token) -> StoreResult<()>;
    /// An unexpired, unused token of that kind with that secret hash.
    async fn find_token(&self, kind: TokenKind, secret_hash: &str, now: DateTime<Utc>) -> StoreResult<Option<Token>>;
    /// The token of that kind with that secret hash, used or expired alike (replay detection).
    async fn find_token_any(&self, kind: TokenKind, secret_hash: &str) -> StoreResult<Option<Token>>;
    /// Deletes the tokens that expired before `before`; answers how many.
    async fn delete_expired_tokens(&self, before: DateTime<Utc>) -> StoreResult<u64>;
    /// Marks a one-time token used; `false` if it was already used, expired or missing.
    /// Atomic: of two concurrent calls exactly one wins.
    async fn consume_token(&self, id: Uuid, now: DateTime<Utc>) -> StoreResult<bool>;
    async fn list_tokens(&self, user_id: Option<Uuid>) -> StoreResult<Vec<Token>>;
    /// How many tokens of `kind` were issued to the user since `since` (rate limits on mailed links).
    async fn count_tokens_since(&self, user_id: Uuid, kind: TokenKind, since: DateTime<Utc>) -> StoreResult<u64>;
    async fn delete_token(&self, id: Uuid) -> StoreResult<()>;
}

#[async_trait]
pub trait EventStore: Send + Sync {
    async fn record_event(&self, event: &Event) -> StoreResult<()>;
    /// Newest first.
    async fn list_events(&self, filter: &EventFilter, query: &ListQuery) -> StoreResult<Page<Event>>;
}

#[async_trait]
pub trait SettingsStore: Send + Sync {
    async fn get_setting(&self, key: &str) -> StoreResult<Option<Value>>;
    /// Records `Change::Config`.
    async fn set_setting(&self, key: &str, value: &Value) -> StoreResult<()>;
    /// Removes a setting (absent is fine). Records `Change::Config`.
    async fn delete_setting(&self, key: &str) -> StoreResult<()>;
}

#[async_trait]
pub trait PolicyStore: Send + Sync {
    /// Creates or updates by name; returns the stored policy (its id is kept on update). Records `Change::Config`.
    async fn upsert_policy(&self, policy: &Policy) -> StoreResult<Policy>;
    async fn get_policy(&self, id: Uuid) -> StoreResult<Option<Policy>>;
    async fn get_policy_by_name(&self, name: &str) -> StoreResult<Option<Policy>>;
    async fn list_policies(&self) -> StoreResult<Vec<Policy>>;
    /// Also deletes its bindings. Records `Change::Config`.
    async fn delete_policy(&self, id: Uuid) -> StoreResult<()>;
    /// Creates or updates by (target, subject); returns the stored binding. Records `Change::Config`.
    async fn upsert_policy_binding(&self, binding: &PolicyBinding) -> StoreResult<PolicyBinding>;
    /// A target's bindings, by `order` then creation.
    async fn policy_bindings(&self, target: BindingTarget) -> StoreResult<Vec<PolicyBinding>>;
    async fn list_policy_bindings(&self) -> StoreResult<Vec<PolicyBinding>>;
    /// Records `Change::Config`.
    async fn delete_policy_binding(&self, id: Uuid) -> StoreResult<()>;
}

#[async_trait]
pub trait ApplicationStore: Send + Sync {
    /// Creates or updates by slug. Records `Change::Config`.
    async fn upsert_application(&self, app: &Application) -> StoreResult<Application>;
    async fn get_application(&self, id: Uuid) -> StoreResult<Option<Application>>;
    async fn get_application_by_slug(&self, slug: &str) -> StoreResult<Option<Application>>;
    async fn list_applications(&self) -> StoreResult<Vec<Application>>;
    /// Also deletes its policy bindings and consent grants. Records `Change::Config`.
    async fn delete_application(&self, id: Uuid) -> StoreResult<()>;
    /// Creates or updates by name. Records `Change::Config`.
    async fn upsert_provider(&self, provider: &Provider) -> StoreResult<Provider>;
    async fn get_provider(&self, id: Uuid) -> StoreResult<Option<Provider>>;
    async fn get_provider_by_name(&self, name: &str) -> StoreResult<Option<Provider>>;
    async fn list_providers(&self) -> StoreResult<Vec<Provider>>;
    /// Applications using it lose their provider. Records `Change::Config`.
    async fn delete_provider(&self, id: Uuid) -> StoreResult<()>;
    /// Creates or updates by name. Records `Change::Config`.
    async fn upsert_outpost(&self, outpost: &Outpost) -> StoreResult<Outpost>;
    async fn get_outpost_by_name(&self, name: &str) -> StoreResult<Option<Outpost>>;
    async fn list_outposts(&self) -> StoreResult<Vec<Outpost>>;
    async fn delete_outpost(&self, id: Uuid) -> StoreResult<()>;
}

#[async_trait]
pub trait ConsentStore: Send + Sync {
    /// Creates or replaces the grant of (user, application).
    async fn put_consent(&self, grant: &ConsentGrant) -> StoreResult<()>;
    /// The unexpired grant of (user, application), if any.
    async fn get_consent(
        &self,
        user_id: Uuid,
        application_id: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<ConsentGrant>>;
    async fn list_consents(&self, user_id: Uuid) -> StoreResult<Vec<ConsentGrant>>;
    async fn delete_consent(&self, id: Uuid) -> StoreResult<()>;
}

#[async_trait]
pub trait ThrottleStore: Send + Sync {
    async fn get_throttle(&self, key: &str) -> StoreResult<Option<ThrottleRecord>>;
    async fn put_throttle(&self, record: &ThrottleRecord) -> StoreResult<()>;
    /// Returns whether a record was removed.
    async fn delete_throttle(&self, key: &str) -> StoreResult<bool>;
    /// Records currently blocking (blocked_until > now), for admins.
    async fn list_throttles(&self, now: DateTime<Utc>) -> StoreResult<Vec<ThrottleRecord>>;
    /// Adds `delta` to the score of `key` (created at 0), clamped to [min, max]; returns the new score.
    async fn adjust_reputation(
        &self,
        key: &str,
        delta: i64,
        min: i64,
        max: i64,
        now: DateTime<Utc>,
    ) -> StoreResult<i64>;
    async fn get_reputation(&self, key: &str) -> StoreResult<Option<Reputation>>;
}

#[async_trait]
pub trait MailStore: Send + Sync {
    async fn queue_mail(&self, mail: &Mail) -> StoreResult<()>;
    /// Creates the token and queues the mail carrying it in one transaction: neither exists
    /// without the other.
    async fn create_token_with_mail(&self, token: &Token, mail: &Mail) -> StoreResult<()>;
    /// Takes up to `limit` queued mails due at `now` and hides them from other workers until
    /// `lease_until` (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so each is sent once).
    async fn claim_mails(&self, now: DateTime<Utc>, lease_until: DateTime<Utc>, limit: u32) -> StoreResult<Vec<Mail>>;
    async fn mail_sent(&self, id: Uuid, at: DateTime<Utc>) -> StoreResult<()>;
    /// Records a failed attempt; `retry_at: None` gives up (status failed).
    async fn mail_failed(&self, id: Uuid, error: &str, retry_at: Option<DateTime<Utc>>) -> StoreResult<()>;
    /// Newest first.
    async fn list_mails(&self, limit: u32) -> StoreResult<Vec<Mail>>;
}

#[async_trait]
pub trait InvitationStore: Send + Sync {
    async fn create_invitation(&self, invitation: &Invitation) -> StoreResult<()>;
    /// A usable invitation (unexpired, uses left) with that secret hash.
    async fn find_invitation(&self, secret_hash: &str, now: DateTime<Utc>) -> StoreResult<Option<Invitation>>;
    /// Counts one use; `false` if it is used up or expired. Atomic.
    async fn use_invitation(&self, id: Uuid, now: DateTime<Utc>) -> StoreResult<bool>;
    /// Newest first.
    async fn list_invitations(&self) -> StoreResult<Vec<Invitation>>;
    async fn delete_invitation(&self, id: Uuid) -> StoreResult<()>;
}

#[async_trait]
pub trait DeviceStore: Send + Sync {
    async fn create_device(&self, device: &AuthenticatorDevice) -> StoreResult<()>;
    /// The user's devices, oldest first.
    async fn list_devices(&self, user_id: Uuid) -> StoreResult<Vec<AuthenticatorDevice>>;
    async fn get_device(&self, id: Uuid) -> StoreResult<Option<AuthenticatorDevice>>;
    /// Updates name, secret, data, confirmed and last_used_at. `NotFound` if it is gone.
    async fn update_device(&self, device: &AuthenticatorDevice) -> StoreResult<()>;
    /// Replaces `data` only if it is still `expected` (single use of static codes); atomic.
    async fn replace_device_data(
        &self,
        id: Uuid,
        expected: &Value,
        data: &Value,
        used_at: DateTime<Utc>,
    ) -> StoreResult<bool>;
    /// Returns whether a device was removed.
    async fn delete_device(&self, id: Uuid) -> StoreResult<bool>;
    /// Accepts TOTP time step `step` only if it is later than the last accepted one; atomic, so
    /// a code is never accepted twice.
    async fn record_totp_step(&self, id: Uuid, step: i64, used_at: DateTime<Utc>) -> StoreResult<bool>;
}

#[async_trait]
pub trait AppPasswordStore: Send + Sync {
    /// `Conflict` when the user already has an app password of that name.
    async fn create_app_password(&self, password: &crate::app_passwords::AppPassword) -> StoreResult<()>;
    /// The app password with that secret hash (expired ones too: the caller checks).
    async fn find_app_password(&self, secret_hash: &str) -> StoreResult<Option<crate::app_passwords::AppPassword>>;
    /// The user's app passwords, oldest first.
    async fn list_app_passwords(&self, user_id: Uuid) -> StoreResult<Vec<crate::app_passwords::AppPassword>>;
    /// Returns whether one was removed. Records `Change::User` (caches of verified ones drop it).
    async fn delete_app_password(&self, id: Uuid) -> StoreResult<bool>;
    async fn touch_app_password(&self, id: Uuid, used_at: DateTime<Utc>) -> StoreResult<()>;
}

/// The whole store, as services receive it (`Arc<dyn Store>`).
#[async_trait]
pub trait Store:
    UserStore
    + GroupStore
    + SessionStore
    + FlowStore
    + TokenStore
    + EventStore
    + SettingsStore
    + PolicyStore
    + ApplicationStore
    + ConsentStore
    + ThrottleStore
    + MailStore
    + InvitationStore
    + DeviceStore
    + AppPasswordStore
    + Send
    + Sync
    + 'static
{
    /// A cheap round trip proving the database answers.
    async fn ping(&self) -> StoreResult<()>;
    /// Changes recorded by any process sharing this database, delivered within about a second.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Change>;
    /// Which engine this is (`sqlite` or `postgres`), for logs and `config check`.
    fn engine(&self) -> &'static str;
}
