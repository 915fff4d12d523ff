//! The domain model: plain data, shared by services, stores and adapters.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// What kind of account a user is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserKind {
    /// A person who logs in.
    Internal,
    /// A machine identity that only uses API tokens.
    ServiceAccount,
}

impl UserKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UserKind::Internal => "internal",
            UserKind::ServiceAccount => "service_account",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "internal" => Some(UserKind::Internal),
            "service_account" => Some(UserKind::ServiceAccount),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: Uuid,
    /// Unique case-insensitively; stored as typed.
    pub username: String,
    /// Display name.
    pub name: String,
    pub email: Option<String>,
    pub is_active: bool,
    pub kind: UserKind,
    pub attributes: Value,
    /// PHC string or an imported legacy hash; `None` means no password login.
    #[serde(skip_serializing)]
    pub password_hash: Option<String>,
    pub password_changed_at: Option<DateTime<Utc>>,
    /// POSIX uid for LDAP; allocated by the store from 2000, stable.
    pub uid_number: i64,
    pub created_at: DateTime<Utc>,
    pub last_login: Option<DateTime<Utc>>,
}

/// What is needed to create a user; the store allocates `uid_number`.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: Uuid,
    pub username: String,
    pub name: String,
    pub email: Option<String>,
    pub is_active: bool,
    pub kind: UserKind,
    pub attributes: Value,
    pub password_hash: Option<String>,
    pub password_changed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub id: Uuid,
    /// Unique case-insensitively.
    pub name: String,
    pub parent_id: Option<Uuid>,
    pub is_superuser: bool,
    pub attributes: Value,
    /// POSIX gid for LDAP; allocated by the store from 2000, stable.
    pub gid_number: i64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewGroup {
    pub id: Uuid,
    pub name: String,
    pub parent_id: Option<Uuid>,
    pub is_superuser: bool,
    pub attributes: Value,
    pub created_at: DateTime<Utc>,
}

/// A server-side login session. `key_hash` is the SHA-256 (hex) of the random id in the cookie.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    #[serde(skip_serializing)]
    pub key_hash: String,
    /// Short public identifier (a prefix of the hash) for listing and revoking.
    pub id: String,
    pub user_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// Absolute end of the session, whatever its activity.
    pub expires_at: DateTime<Utc>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    /// Authentication methods used (RFC 8176 values: `pwd`, `otp`, `hwk`, `swk`, `mfa`).
    pub amr: Vec<String>,
}

/// Kinds of one-time and long-lived secrets kept (hashed) in the token table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// REST API bearer token.
    Api,
    /// First-run setup link; valid only while no admin exists.
    Setup,
    /// One-time login link for a user (lost-admin recovery).
    Recovery,
    /// A link mailed by a flow's email stage; continues that flow (`description` names it).
    FlowLink,
    /// A link confirming a new email address (`description` holds the address).
    EmailChange,
    /// An OAuth2 authorization code (one use, 60 s; `description` holds the grant as JSON).
    OauthCode,
    /// An OAuth2 refresh token (rotated on use; `description` holds the grant as JSON).
    OauthRefresh,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Api => "api",
            TokenKind::Setup => "setup",
            TokenKind::Recovery => "recovery",
            TokenKind::FlowLink => "flow_link",
            TokenKind::EmailChange => "email_change",
            TokenKind::OauthCode => "oauth_code",
            TokenKind::OauthRefresh => "oauth_refresh",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "api" => Some(TokenKind::Api),
            "setup" => Some(TokenKind::Setup),
            "recovery" => Some(TokenKind::Recovery),
            "flow_link" => Some(TokenKind::FlowLink),
            "email_change" => Some(TokenKind::EmailChange),
            "oauth_code" => Some(TokenKind::OauthCode),
            "oauth_refresh" => Some(TokenKind::OauthRefresh),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Token {
    pub id: Uuid,
    /// SHA-256 (hex) of the secret; the secret itself is shown once and never stored.
    #[serde(skip_serializing)]
    pub secret_hash: String,
    pub kind: TokenKind,
    pub user_id: Option<Uuid>,
    pub description: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Set when a one-time token is consumed.
    pub used_at: Option<DateTime<Utc>>,
}

/// An audit event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    /// e.g. `login`, `login_failed`, `user_created`.
    pub action: String,
    pub user_id: Option<Uuid>,
    pub username: Option<String>,
    pub client_ip: Option<String>,
    pub context: Value,
}

#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub action: Option<String>,
    pub user_id: Option<Uuid>,
    pub username: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Events whose context names this application slug (`"application": slug`).
    pub application: Option<String>,
}

/// What a flow is for (authentik's designations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowDesignation {
    Authentication,
    Authorization,
    Enrollment,
    Recovery,
    Invalidation,
    StageConfiguration,
    Unenrollment,
}

impl FlowDesignation {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowDesignation::Authentication => "authentication",
            FlowDesignation::Authorization => "authorization",
            FlowDesignation::Enrollment => "enrollment",
            FlowDesignation::Recovery => "recovery",
            FlowDesignation::Invalidation => "invalidation",
            FlowDesignation::StageConfiguration => "stage_configuration",
            FlowDesignation::Unenrollment => "unenrollment",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "authentication" => FlowDesignation::Authentication,
            "authorization" => FlowDesignation::Authorization,
            "enrollment" => FlowDesignation::Enrollment,
            "recovery" => FlowDesignation::Recovery,
            "invalidation" => FlowDesignation::Invalidation,
            "stage_configuration" => FlowDesignation::StageConfiguration,
            "unenrollment" => FlowDesignation::Unenrollment,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub title: String,
    pub designation: FlowDesignation,
    /// Flow-level settings that later features add (authentication requirement, denied action…).
    pub settings: Value,
    pub created_at: DateTime<Utc>,
}

/// A configured stage: a kind (which handler runs it) and its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub id: Uuid,
    /// Unique.
    pub name: String,
    /// Handler name, e.g. `identification`, `password`, `user_login`.
    pub kind: String,
    pub config: Value,
    pub created_at: DateTime<Utc>,
}

/// A stage placed in a flow at a position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowStageBinding {
    pub id: Uuid,
    pub flow_id: Uuid,
    pub stage_id: Uuid,
    pub order: i64,
    /// Binding-level settings (policy evaluation mode, later policies).
    pub settings: Value,
}

/// Server-side state of one running flow, keyed by the hash of the flow cookie and the slug.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowStateRecord {
    pub key: String,
    pub data: Value,
    pub expires_at: DateTime<Utc>,
}

/// A change other processes sharing the store must react to (cache invalidation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "key", rename_all = "snake_case")]
pub enum Change {
    /// One session ended (value: its key hash).
    Session(String),
    /// Something about a user changed: sessions, groups, activity, password (value: user id).
    User(Uuid),
    /// Group structure or flags changed: cached group membership is stale.
    Groups,
    /// Flows, stages or settings changed.
    Config,
}

/// Paging and sorting for list queries, as authentik's API names them.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub search: Option<String>,
    /// A field name, `-field` for descending.
    pub ordering: Option<String>,
    /// 1-based.
    pub page: u32,
    pub page_size: u32,
}

impl Default for ListQuery {
    fn default() -> Self {
        ListQuery { search: None, ordering: None, page: 1, page_size: 100 }
    }
}

impl ListQuery {
    pub fn all() -> Self {
        ListQuery { page_size: u32::MAX, ..Default::default() }
    }
    pub fn offset(&self) -> u64 {
        u64::from(self.page.max(1) - 1) * u64::from(self.page_size)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: u64,
}

/// A reusable rule: kinds are `expression`, `password`, `password_expiry`, `reputation`,
/// `user` and `group_membership`; `config` holds the kind's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub id: Uuid,
    /// Unique.
    pub name: String,
    pub kind: String,
    pub config: Value,
    /// Log every evaluation of this policy (for debugging a rule).
    pub execution_logging: bool,
    pub created_at: DateTime<Utc>,
}

/// What a policy binding is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum BindingTarget {
    Flow(Uuid),
    /// A stage placed in a flow (`FlowStageBinding::id`).
    StageBinding(Uuid),
    Application(Uuid),
}

impl BindingTarget {
    pub fn kind_str(&self) -> &'static str {
        match self {
            BindingTarget::Flow(_) => "flow",
            BindingTarget::StageBinding(_) => "stage_binding",
            BindingTarget::Application(_) => "application",
        }
    }
    pub fn id(&self) -> Uuid {
        match self {
            BindingTarget::Flow(id) | BindingTarget::StageBinding(id) | BindingTarget::Application(id) => *id,
        }
    }
    pub fn from_parts(kind: &str, id: Uuid) -> Option<Self> {
        match kind {
            "flow" => Some(BindingTarget::Flow(id)),
            "stage_binding" => Some(BindingTarget::StageBinding(id)),
            "application" => Some(BindingTarget::Application(id)),
            _ => None,
        }
    }
}

/// What a binding checks: a policy, or directly a user or a group (nested groups count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum BindingSubject {
    Policy(Uuid),
    User(Uuid),
    Group(Uuid),
}

impl BindingSubject {
    pub fn kind_str(&self) -> &'static str {
        match self {
            BindingSubject::Policy(_) => "policy",
            BindingSubject::User(_) => "user",
            BindingSubject::Group(_) => "group",
        }
    }
    pub fn id(&self) -> Uuid {
        match self {
            BindingSubject::Policy(id) | BindingSubject::User(id) | BindingSubject::Group(id) => *id,
        }
    }
    pub fn from_parts(kind: &str, id: Uuid) -> Option<Self> {
        match kind {
            "policy" => Some(BindingSubject::Policy(id)),
            "user" => Some(BindingSubject::User(id)),
            "group" => Some(BindingSubject::Group(id)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyBinding {
    pub id: Uuid,
    pub target: BindingTarget,
    pub subject: BindingSubject,
    pub order: i64,
    /// Inverts the result.
    pub negate: bool,
    /// A disabled binding is skipped.
    pub enabled: bool,
    /// Evaluation time limit; exceeding it counts as `failure_result`.
    pub timeout_ms: i64,
    /// Result used when the policy errors or times out (false: fail closed).
    pub failure_result: bool,
    pub created_at: DateTime<Utc>,
}

/// An application users see and get access to; its policy bindings decide who may use it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Application {
    pub id: Uuid,
    pub name: String,
    /// Unique; appears in URLs (`/application/o/<slug>/`).
    pub slug: String,
    pub provider_id: Option<Uuid>,
    /// `blank://blank` hides the tile from "My applications".
    pub launch_url: Option<String>,
    pub icon: Option<String>,
    pub description: String,
    /// UI grouping of tiles.
    pub group: Option<String>,
    /// `any` (one passing binding lets the user in) or `all`.
    pub policy_engine_mode: String,
    pub open_in_new_tab: bool,
    pub created_at: DateTime<Utc>,
}

/// How an application is reached: `proxy`, `oauth2` or `ldap`, with the type's settings in `config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provider {
    pub id: Uuid,
    /// Unique.
    pub name: String,
    pub kind: String,
    /// The flow run when a user is sent to this provider (consent…).
    pub authorization_flow_id: Option<Uuid>,
    pub config: Value,
    pub created_at: DateTime<Utc>,
}

/// A component serving providers; `embedded` runs inside this process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outpost {
    pub id: Uuid,
    /// Unique.
    pub name: String,
    pub kind: String,
    pub provider_ids: Vec<Uuid>,
    pub config: Value,
    pub created_at: DateTime<Utc>,
}

/// A user's consent to an application receiving some permissions (scopes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsentGrant {
    pub id: Uuid,
    pub user_id: Uuid,
    pub application_id: Uuid,
    pub permissions: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Brute-force bookkeeping for one key (`user:<login>` or `ip:<address>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThrottleRecord {
    pub key: String,
    /// Failures counted in the current window.
    pub failures: i64,
    pub window_start: DateTime<Utc>,
    pub last_failure: DateTime<Utc>,
    /// No attempt is accepted before this moment.
    pub blocked_until: Option<DateTime<Utc>>,
}

/// Reputation score of a username or client address (`user:<name>` / `ip:<addr>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reputation {
    pub key: String,
    pub score: i64,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailStatus {
    /// Waiting for its (next) attempt.
    Queued,
    Sent,
    /// Given up after a day of retries.
    Failed,
}

impl MailStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MailStatus::Queued => "queued",
            MailStatus::Sent => "sent",
            MailStatus::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "queued" => Some(MailStatus::Queued),
            "sent" => Some(MailStatus::Sent),
            "failed" => Some(MailStatus::Failed),
            _ => None,
        }
    }
}

/// A message in the persistent outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mail {
    pub id: Uuid,
    pub to: String,
    pub subject: String,
    pub text_body: String,
    pub html_body: Option<String>,
    pub status: MailStatus,
    pub attempts: i64,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

/// An invitation to enroll: a link usable `max_uses` times until it expires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invitation {
    pub id: Uuid,
    /// SHA-256 (hex) of the secret in the link.
    #[serde(skip_serializing)]
    pub secret_hash: String,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub max_uses: i64,
    pub uses: i64,
    /// The invitee must enroll with this address.
    pub fixed_email: Option<String>,
    /// Groups the new user joins.
    pub groups: Vec<String>,
    /// The enrollment flow the link opens.
    pub flow_slug: String,
}

/// What kind of second factor a device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    Totp,
    Static,
    Webauthn,
}

impl DeviceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Totp => "totp",
            DeviceKind::Static => "static",
            DeviceKind::Webauthn => "webauthn",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "totp" => Some(DeviceKind::Totp),
            "static" => Some(DeviceKind::Static),
            "webauthn" => Some(DeviceKind::Webauthn),
            _ => None,
        }
    }
}

/// A user's authenticator: a TOTP app, a set of recovery codes or a security key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthenticatorDevice {
    pub id: Uuid,
    pub user_id: Uuid,
    pub kind: DeviceKind,
    pub name: String,
    /// Encrypted secret (TOTP seed), never shown.
    #[serde(skip_serializing)]
    pub secret: Option<String>,
    /// Kind-specific data (static: hashed codes and used flags).
    #[serde(skip_serializing)]
    pub data: Value,
    /// Set once the user proved the device works; unconfirmed devices are ignored at login.
    pub confirmed: bool,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// The last accepted TOTP time step (replay protection).
    #[serde(skip_serializing)]
    pub last_step: Option<i64>,
}
