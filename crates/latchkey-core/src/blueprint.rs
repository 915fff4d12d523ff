//! Blueprints: declarative YAML files that create or update groups, users, providers,
//! applications, outposts, flows, stages, policies and policy bindings (DESIGN.md, "Blueprints").
//!
//! Applying is two phases. Phase 1 parses and validates the whole file against the store
//! and the file itself (types, unknown keys, references, names) without writing anything,
//! so an invalid file changes nothing. Phase 2 writes, matching objects by name, slug or
//! username, and counts only real changes, so applying the same file twice changes nothing
//! the second time.
//!
//! Update semantics: a key left out of an entry leaves the stored value as it is (as in
//! authentik), except a provider's type settings, which the entry declares as a whole.
//! A user's `groups` adds memberships and never removes others (a blueprint applied at
//! every start must not take an administrator out of `admins`). An application's
//! `allowed_groups` is authoritative for its group bindings.
//!
//! Phase 2 is not one database transaction (the store traits have none): a database
//! failure in the middle of it can leave a partial apply, which applying again completes.

use serde::{Deserialize, Deserializer};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Display;
use uuid::Uuid;

use crate::directory::{validate_email, validate_group_name, validate_username};
use crate::error::{CoreError, FieldErrors, Result};
use crate::events::ClientInfo;
use crate::model::*;
use crate::oauth::assertion::AuthMethod;
use crate::policy::POLICY_KINDS;
use crate::Core;

/// The authorization flow a provider gets when its entry names none.
pub const DEFAULT_AUTHORIZATION_FLOW: &str = "default-provider-authorization-implicit-consent";

// ---------------------------------------------------------------- file format

/// A parsed blueprint document.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blueprint {
    #[serde(default, deserialize_with = "list")]
    pub groups: Vec<GroupEntry>,
    #[serde(default, deserialize_with = "list")]
    pub users: Vec<UserEntry>,
    #[serde(default, deserialize_with = "list")]
    pub providers: Vec<ProviderEntry>,
    #[serde(default, deserialize_with = "list")]
    pub applications: Vec<ApplicationEntry>,
    #[serde(default, deserialize_with = "list")]
    pub outposts: Vec<OutpostEntry>,
    #[serde(default, deserialize_with = "list")]
    pub flows: Vec<FlowEntry>,
    #[serde(default, deserialize_with = "list")]
    pub stages: Vec<StageEntry>,
    #[serde(default, deserialize_with = "list")]
    pub policies: Vec<PolicyEntry>,
    #[serde(default, deserialize_with = "list")]
    pub bindings: Vec<BindingEntry>,
}

/// `groups:` with nothing under it (every entry commented out) means an empty list.
fn list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> std::result::Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// Tells a key set to `null` (`Some(None)`) from a key left out (`None`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> std::result::Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupEntry {
    pub name: String,
    /// Left out: unchanged; `null`: top-level.
    #[serde(default, deserialize_with = "present")]
    pub parent: Option<Option<String>>,
    pub is_superuser: Option<bool>,
    pub attributes: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    pub username: String,
    pub name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub email: Option<Option<String>>,
    /// Plain text, hashed on apply; rewritten only when it no longer verifies.
    pub password: Option<String>,
    /// An argon2, bcrypt, Django pbkdf2_sha256 or sha512-crypt hash; set when the user is
    /// created or has no password (a legacy hash is upgraded at login, so re-setting it
    /// on every apply would undo that).
    pub password_hash: Option<String>,
    #[serde(default, deserialize_with = "list")]
    pub groups: Vec<String>,
    pub is_active: Option<bool>,
    pub attributes: Option<Value>,
    #[serde(rename = "type")]
    pub kind: Option<UserKind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Proxy,
    Oauth2,
    Ldap,
}

impl ProviderKind {
    fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Proxy => "proxy",
            ProviderKind::Oauth2 => "oauth2",
            ProviderKind::Ldap => "ldap",
        }
    }
}

/// A validity: seconds, or authentik's `hours=1;minutes=30`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Validity {
    Seconds(u64),
    Text(String),
}

/// Every type's fields; those not of the entry's type are refused in validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ProviderKind,
    pub authorization_flow: Option<String>,
    // proxy
    pub mode: Option<String>,
    pub external_host: Option<String>,
    pub cookie_domain: Option<String>,
    pub internal_host: Option<String>,
    pub skip_path_regex: Option<String>,
    /// Ordered access rules (see `access_rules`).
    pub access_rules: Option<Vec<crate::access_rules::AccessRuleSpec>>,
    /// OAuth2 providers (names or client ids) whose access tokens are accepted as Bearer.
    pub jwt_federation_providers: Option<Vec<String>>,
    pub intercept_header_auth: Option<bool>,
    // proxy and oauth2
    pub access_token_validity: Option<Validity>,
    // oauth2
    pub client_type: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub redirect_uris: Option<Vec<String>>,
    pub signing_alg: Option<String>,
    pub sub_mode: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub refresh_token_validity: Option<Validity>,
    /// Extra claims from CEL expressions (authentik's scope mappings).
    pub claims: Option<Vec<crate::oauth::claims::ClaimSpec>>,
    pub backchannel_logout_uri: Option<String>,
    /// The client's public keys (a JWKS object, or its JSON text) for `private_key_jwt`.
    pub jwks: Option<Value>,
    /// `client_secret_basic`, `client_secret_post`, `private_key_jwt` or `none`: the only
    /// method accepted. Unset: the secret either way, or `private_key_jwt` with `jwks`.
    pub token_endpoint_auth_method: Option<String>,
    // ldap
    pub base_dn: Option<String>,
    pub bind_flow: Option<String>,
    pub search_group: Option<String>,
    pub mfa_support: Option<bool>,
    pub anonymous_search: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineMode {
    Any,
    All,
}

impl EngineMode {
    fn as_str(self) -> &'static str {
        match self {
            EngineMode::Any => "any",
            EngineMode::All => "all",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplicationEntry {
    pub name: String,
    pub slug: String,
    #[serde(default, deserialize_with = "present")]
    pub provider: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub launch_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub icon: Option<Option<String>>,
    pub description: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub group: Option<Option<String>>,
    pub policy_engine_mode: Option<EngineMode>,
    pub open_in_new_tab: Option<bool>,
    /// Shorthand for group bindings on the application; authoritative for them when given.
    pub allowed_groups: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OutpostKind {
    #[default]
    Proxy,
    Ldap,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutpostEntry {
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: OutpostKind,
    #[serde(default, deserialize_with = "list")]
    pub providers: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Authentication {
    None,
    RequireAuthenticated,
    RequireUnauthenticated,
    RequireSuperuser,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeniedAction {
    MessageContinue,
    Message,
    Continue,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowEntry {
    pub slug: String,
    pub name: Option<String>,
    pub title: Option<String>,
    pub designation: Option<FlowDesignation>,
    pub authentication: Option<Authentication>,
    pub denied_action: Option<DeniedAction>,
    /// How the flow's own policy bindings combine.
    pub policy_engine_mode: Option<EngineMode>,
    /// Stages in order; when given, they are the flow's stages exactly.
    pub stages: Option<Vec<FlowStageEntry>>,
}

/// A stage in a flow: its name, or its name with the binding's policy settings.
#[derive(Debug)]
pub enum FlowStageEntry {
    Name(String),
    Binding(FlowStageBindingEntry),
}

// By hand rather than `untagged`, whose error ("did not match any variant") names no field.
impl<'de> Deserialize<'de> for FlowStageEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::String(name) => Ok(FlowStageEntry::Name(name)),
            other => serde_yaml::from_value(other).map(FlowStageEntry::Binding).map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowStageBindingEntry {
    pub stage: String,
    /// Evaluate the binding's policies when the flow is planned (default true).
    pub evaluate_on_plan: Option<bool>,
    /// Evaluate them again when the stage is reached (default false).
    pub re_evaluate_policies: Option<bool>,
    pub policy_engine_mode: Option<EngineMode>,
}

impl FlowStageEntry {
    pub fn stage(&self) -> &str {
        match self {
            FlowStageEntry::Name(n) => n,
            FlowStageEntry::Binding(b) => &b.stage,
        }
    }

    /// The stage binding's settings, as the flow engine reads them.
    fn settings(&self) -> Value {
        let mut m = Map::new();
        if let FlowStageEntry::Binding(b) = self {
            if let Some(v) = b.evaluate_on_plan {
                m.insert("evaluate_on_plan".into(), json!(v));
            }
            if let Some(v) = b.re_evaluate_policies {
                m.insert("re_evaluate_policies".into(), json!(v));
            }
            if let Some(v) = b.policy_engine_mode {
                m.insert("policy_engine_mode".into(), json!(v.as_str()));
            }
        }
        Value::Object(m)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageEntry {
    pub name: String,
    pub kind: String,
    pub config: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyEntry {
    pub name: String,
    pub kind: String,
    pub config: Option<Value>,
    pub execution_logging: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageBindingRef {
    pub flow: String,
    pub stage: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetEntry {
    pub flow: Option<String>,
    pub application: Option<String>,
    pub stage_binding: Option<StageBindingRef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingEntry {
    pub target: TargetEntry,
    pub policy: Option<String>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub order: Option<i64>,
    pub negate: Option<bool>,
    pub enabled: Option<bool>,
    pub timeout_ms: Option<i64>,
    pub failure_result: Option<bool>,
}

// ---------------------------------------------------------------- report

/// What one kind of object went through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindCounts {
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
}

/// What applying a blueprint did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    /// Per kind (`groups`, `users`, …).
    pub kinds: BTreeMap<&'static str, KindCounts>,
}

#[derive(Clone, Copy)]
enum Outcome {
    Created,
    Updated,
    Unchanged,
}

impl ApplyReport {
    fn count(&mut self, kind: &'static str, outcome: Outcome) {
        let k = self.kinds.entry(kind).or_default();
        match outcome {
            Outcome::Created => {
                self.created += 1;
                k.created += 1;
            }
            Outcome::Updated => {
                self.updated += 1;
                k.updated += 1;
            }
            Outcome::Unchanged => {
                self.unchanged += 1;
                k.unchanged += 1;
            }
        }
    }
}

// ---------------------------------------------------------------- parsing

/// Errors of one file: every message starts with `blueprint <file>: <entry path>`.
struct Errs<'a> {
    source: &'a str,
}

impl Errs<'_> {
    fn at(&self, path: &str, message: impl Display) -> CoreError {
        let message = format!("blueprint {}: {path}: {message}", self.source);
        let mut fields = FieldErrors::new();
        fields.insert(path.to_string(), vec![message.clone()]);
        CoreError::Invalid { message, fields }
    }
}

/// `providers[1] (Grafana)`: the entry's position and its name, as the user wrote it.
fn entry_label(section: &str, index: usize, name: &str) -> String {
    if name.is_empty() {
        format!("{section}[{index}]")
    } else {
        format!("{section}[{index}] ({name})")
    }
}

/// Adds the entry's name to a serde path (`providers[1].x` → `providers[1] (Grafana).x`).
fn label_serde_path(path: &str, doc: &serde_yaml::Value) -> String {
    let Some(open) = path.find('[') else { return path.to_string() };
    let Some(close) = path[open..].find(']').map(|c| open + c) else { return path.to_string() };
    let section = &path[..open];
    let Ok(index) = path[open + 1..close].parse::<usize>() else { return path.to_string() };
    let key = match section {
        "users" => "username",
        "flows" => "slug",
        _ => "name",
    };
    let name = doc.get(section).and_then(|s| s.get(index)).and_then(|e| e.get(key)).and_then(|n| n.as_str());
    match name {
        Some(n) => format!("{}{}", entry_label(section, index, n), &path[close + 1..]),
        None => path.to_string(),
    }
}

/// Parses a blueprint; errors name the file, the entry and the field.
pub fn parse(source_name: &str, yaml: &str) -> Result<Blueprint> {
    let errs = Errs { source: source_name };
    let doc: serde_yaml::Value = serde_yaml::from_str(yaml).map_err(|e| errs.at("document", e))?;
    if doc.is_null() {
        return Ok(Blueprint::default());
    }
    if !doc.is_mapping() {
        return Err(errs.at("document", "a blueprint is a mapping of keys such as groups, users and providers"));
    }
    let de = serde_yaml::Deserializer::from_str(yaml);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let raw = e.path().to_string();
        let path = if raw.is_empty() || raw == "." { "document".to_string() } else { label_serde_path(&raw, &doc) };
        // serde_yaml starts its message with its own (shorter) path; ours says it better.
        let mut message = e.inner().to_string();
        if let Some((prefix, rest)) = message.split_once(": ") {
            if !prefix.is_empty() && raw.starts_with(prefix) {
                message = rest.to_string();
            }
        }
        errs.at(&path, message)
    })
}

// ---------------------------------------------------------------- field checks

fn is_slug(s: &str) -> bool {
    !s.is_empty() && s.len() <= 100 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn check_name(errs: &Errs, path: &str, field: &str, value: &str) -> Result<()> {
    if value.trim().is_empty() || value.chars().count() > 150 || value.chars().any(char::is_control) {
        return Err(errs.at(&format!("{path}.{field}"), "must be 1 to 150 printable characters"));
    }
    Ok(())
}

fn check_slug(errs: &Errs, path: &str, field: &str, value: &str) -> Result<()> {
    if !is_slug(value) {
        return Err(errs.at(
            &format!("{path}.{field}"),
            format!("'{value}' is not a valid slug (letters, digits, - and _, at most 100)"),
        ));
    }
    Ok(())
}

fn check_mapping(errs: &Errs, path: &str, field: &str, value: &Option<Value>) -> Result<()> {
    match value {
        None | Some(Value::Object(_)) => Ok(()),
        Some(_) => Err(errs.at(&format!("{path}.{field}"), "must be a mapping")),
    }
}

fn absolute_url(value: &str) -> Option<url::Url> {
    url::Url::parse(value).ok().filter(|u| !u.cannot_be_a_base() || u.scheme() == "blank")
}

fn http_url(value: &str) -> Option<url::Url> {
    url::Url::parse(value).ok().filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
}

/// Seconds of a validity; `hours=1;minutes=30` as authentik writes it, or plain seconds.
pub fn parse_validity(v: &Validity) -> Option<u64> {
    match v {
        Validity::Seconds(s) if *s > 0 => Some(*s),
        Validity::Seconds(_) => None,
        Validity::Text(t) => {
            let mut total: u64 = 0;
            for part in t.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                let (unit, n) = part.split_once('=')?;
                let n: f64 = n.trim().parse().ok()?;
                let unit_secs = match unit.trim() {
                    "weeks" => 604_800.0,
                    "days" => 86_400.0,
                    "hours" => 3_600.0,
                    "minutes" => 60.0,
                    "seconds" => 1.0,
                    _ => return None,
                };
                if !(n >= 0.0 && n.is_finite()) {
                    return None;
                }
                total = total.checked_add((n * unit_secs) as u64)?;
            }
            (total > 0).then_some(total)
        }
    }
}

fn recognised_hash(hash: &str) -> bool {
    (hash.starts_with("$argon2") && argon2::password_hash::PasswordHash::new(hash).is_ok())
        || ((hash.starts_with("$2b$") || hash.starts_with("$2y$") || hash.starts_with("$2a$")) && hash.len() == 60)
        || (hash.starts_with("pbkdf2_sha256$") && hash.split('$').count() == 4)
        || hash.starts_with("$6$")
}

fn is_domain(s: &str) -> bool {
    let s = s.trim_start_matches('.');
    !s.is_empty()
        && s.len() <= 253
        && s.split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}

/// What a provider of each type accepts.
fn provider_fields(kind: ProviderKind) -> &'static [&'static str] {
    match kind {
        ProviderKind::Proxy => &[
            "mode",
            "external_host",
            "cookie_domain",
            "internal_host",
            "skip_path_regex",
            "access_token_validity",
            "access_rules",
            "jwt_federation_providers",
            "intercept_header_auth",
        ],
        ProviderKind::Oauth2 => &[
            "client_type",
            "client_id",
            "client_secret",
            "redirect_uris",
            "signing_alg",
            "sub_mode",
            "scopes",
            "access_token_validity",
            "refresh_token_validity",
            "claims",
            "backchannel_logout_uri",
            "jwks",
            "token_endpoint_auth_method",
        ],
        ProviderKind::Ldap => &["base_dn", "bind_flow", "search_group", "mfa_support", "anonymous_search"],
    }
}

impl ProviderEntry {
    /// The type-specific fields that were given.
    fn given_fields(&self) -> Vec<&'static str> {
        let mut given = Vec::new();
        let mut add = |name: &'static str, set: bool| {
            if set {
                given.push(name)
            }
        };
        add("mode", self.mode.is_some());
        add("external_host", self.external_host.is_some());
        add("cookie_domain", self.cookie_domain.is_some());
        add("internal_host", self.internal_host.is_some());
        add("skip_path_regex", self.skip_path_regex.is_some());
        add("access_rules", self.access_rules.is_some());
        add("jwt_federation_providers", self.jwt_federation_providers.is_some());
        add("intercept_header_auth", self.intercept_header_auth.is_some());
        add("access_token_validity", self.access_token_validity.is_some());
        add("client_type", self.client_type.is_some());
        add("client_id", self.client_id.is_some());
        add("client_secret", self.client_secret.is_some());
        add("redirect_uris", self.redirect_uris.is_some());
        add("signing_alg", self.signing_alg.is_some());
        add("sub_mode", self.sub_mode.is_some());
        add("scopes", self.scopes.is_some());
        add("refresh_token_validity", self.refresh_token_validity.is_some());
        add("claims", self.claims.is_some());
        add("backchannel_logout_uri", self.backchannel_logout_uri.is_some());
        add("jwks", self.jwks.is_some());
        add("token_endpoint_auth_method", self.token_endpoint_auth_method.is_some());
        add("base_dn", self.base_dn.is_some());
        add("bind_flow", self.bind_flow.is_some());
        add("search_group", self.search_group.is_some());
        add("mfa_support", self.mfa_support.is_some());
        add("anonymous_search", self.anonymous_search.is_some());
        given
    }
}

// ---------------------------------------------------------------- phase 1: what exists

/// Names of objects in the store, and of those the file declares.
struct Known {
    groups: HashMap<String, Group>,
    providers: HashMap<String, Provider>,
    applications: HashMap<String, Application>,
    flows: HashMap<String, Flow>,
    stages: HashMap<String, Stage>,
    policies: HashMap<String, Policy>,
    file_groups: HashMap<String, usize>,
    file_users: HashMap<String, usize>,
    file_providers: HashMap<String, usize>,
    file_flows: HashMap<String, usize>,
    file_stages: HashMap<String, usize>,
    file_policies: HashMap<String, usize>,
    file_apps: HashMap<String, usize>,
}

fn store_err(e: crate::StoreError) -> CoreError {
    CoreError::from_store(e)
}

async fn load_known(core: &Core, bp: &Blueprint, errs: &Errs<'_>) -> Result<Known> {
    let store = &core.store;
    let mut known = Known {
        groups: store.all_groups().await.map_err(store_err)?.into_iter().map(|g| (g.name.to_lowercase(), g)).collect(),
        providers: store.list_providers().await.map_err(store_err)?.into_iter().map(|p| (p.name.clone(), p)).collect(),
        applications: store
            .list_applications()
            .await
            .map_err(store_err)?
            .into_iter()
            .map(|a| (a.slug.clone(), a))
            .collect(),
        flows: store.list_flows().await.map_err(store_err)?.into_iter().map(|f| (f.slug.clone(), f)).collect(),
        stages: store.list_stages().await.map_err(store_err)?.into_iter().map(|s| (s.name.clone(), s)).collect(),
        policies: store.list_policies().await.map_err(store_err)?.into_iter().map(|p| (p.name.clone(), p)).collect(),
        file_groups: HashMap::new(),
        file_users: HashMap::new(),
        file_providers: HashMap::new(),
        file_flows: HashMap::new(),
        file_stages: HashMap::new(),
        file_policies: HashMap::new(),
        file_apps: HashMap::new(),
    };
    // Each name once per file: two entries for one object would fight each other.
    fn once(
        errs: &Errs,
        map: &mut HashMap<String, usize>,
        key: String,
        section: &str,
        i: usize,
        shown: &str,
        field: &str,
    ) -> Result<()> {
        if let Some(first) = map.insert(key, i) {
            return Err(errs.at(
                &format!("{}.{field}", entry_label(section, i, shown)),
                format!("'{shown}' is already declared by {section}[{first}]"),
            ));
        }
        Ok(())
    }
    for (i, g) in bp.groups.iter().enumerate() {
        once(errs, &mut known.file_groups, g.name.to_lowercase(), "groups", i, &g.name, "name")?;
    }
    for (i, u) in bp.users.iter().enumerate() {
        once(errs, &mut known.file_users, u.username.to_lowercase(), "users", i, &u.username, "username")?;
    }
    for (i, p) in bp.providers.iter().enumerate() {
        once(errs, &mut known.file_providers, p.name.clone(), "providers", i, &p.name, "name")?;
    }
    for (i, a) in bp.applications.iter().enumerate() {
        once(errs, &mut known.file_apps, a.slug.clone(), "applications", i, &a.name, "slug")?;
    }
    let mut outposts = HashMap::new();
    for (i, o) in bp.outposts.iter().enumerate() {
        once(errs, &mut outposts, o.name.clone(), "outposts", i, &o.name, "name")?;
    }
    for (i, f) in bp.flows.iter().enumerate() {
        once(errs, &mut known.file_flows, f.slug.clone(), "flows", i, &f.slug, "slug")?;
    }
    for (i, s) in bp.stages.iter().enumerate() {
        once(errs, &mut known.file_stages, s.name.clone(), "stages", i, &s.name, "name")?;
    }
    for (i, p) in bp.policies.iter().enumerate() {
        once(errs, &mut known.file_policies, p.name.clone(), "policies", i, &p.name, "name")?;
    }
    Ok(known)
}

impl Known {
    fn group_exists(&self, name: &str) -> bool {
        let k = name.to_lowercase();
        self.groups.contains_key(&k) || self.file_groups.contains_key(&k)
    }
    fn flow_exists(&self, slug: &str) -> bool {
        self.flows.contains_key(slug) || self.file_flows.contains_key(slug)
    }
    fn stage_exists(&self, name: &str) -> bool {
        self.stages.contains_key(name) || self.file_stages.contains_key(name)
    }
    fn policy_exists(&self, name: &str) -> bool {
        self.policies.contains_key(name) || self.file_policies.contains_key(name)
    }
    fn app_exists(&self, slug: &str) -> bool {
        self.applications.contains_key(slug) || self.file_apps.contains_key(slug)
    }
    /// The provider's type, from the file (which wins) or the store.
    fn provider_kind(&self, bp: &Blueprint, name: &str) -> Option<String> {
        match self.file_providers.get(name) {
            Some(&i) => bp.providers.get(i).map(|p| p.kind.as_str().to_string()),
            None => self.providers.get(name).map(|p| p.kind.clone()),
        }
    }
}

// ---------------------------------------------------------------- phase 1: validation

async fn validate(core: &Core, bp: &Blueprint, known: &Known, errs: &Errs<'_>) -> Result<()> {
    validate_groups(bp, known, errs)?;
    validate_users(bp, known, errs)?;
    validate_stages_and_flows(core, bp, known, errs)?;
    validate_policies(bp, errs)?;
    validate_providers(bp, known, errs)?;
    validate_applications(bp, known, errs)?;
    validate_outposts(bp, known, errs)?;
    validate_bindings(core, bp, known, errs).await
}

fn validate_groups(bp: &Blueprint, known: &Known, errs: &Errs) -> Result<()> {
    for (i, g) in bp.groups.iter().enumerate() {
        let path = entry_label("groups", i, &g.name);
        validate_group_name(&g.name).map_err(|e| errs.at(&format!("{path}.name"), e))?;
        if let Some(Some(parent)) = &g.parent {
            if !known.group_exists(parent) {
                return Err(errs.at(&format!("{path}.parent"), format!("group '{parent}' does not exist")));
            }
        }
        check_mapping(errs, &path, "attributes", &g.attributes)?;
    }
    // The nesting after the apply must have no cycle: stored parents, overridden by the file.
    let by_id: HashMap<Uuid, String> = known.groups.values().map(|g| (g.id, g.name.to_lowercase())).collect();
    let mut parent_of: HashMap<String, Option<String>> =
        known.groups.iter().map(|(k, g)| (k.clone(), g.parent_id.and_then(|p| by_id.get(&p).cloned()))).collect();
    for g in &bp.groups {
        match &g.parent {
            Some(p) => {
                parent_of.insert(g.name.to_lowercase(), p.as_ref().map(|p| p.to_lowercase()));
            }
            None => {
                parent_of.entry(g.name.to_lowercase()).or_insert(None);
            }
        }
    }
    for (i, g) in bp.groups.iter().enumerate() {
        let start = g.name.to_lowercase();
        let mut at = parent_of.get(&start).cloned().flatten();
        let mut steps = 0;
        while let Some(p) = at {
            if p == start || steps > parent_of.len() {
                return Err(errs.at(
                    &format!("{}.parent", entry_label("groups", i, &g.name)),
                    "a group cannot be nested inside itself or its descendants",
                ));
            }
            at = parent_of.get(&p).cloned().flatten();
            steps += 1;
        }
    }
    Ok(())
}

fn validate_users(bp: &Blueprint, known: &Known, errs: &Errs) -> Result<()> {
    for (i, u) in bp.users.iter().enumerate() {
        let path = entry_label("users", i, &u.username);
        validate_username(&u.username).map_err(|e| errs.at(&format!("{path}.username"), e))?;
        if let Some(name) = &u.name {
            check_name(errs, &path, "name", name)?;
        }
        if let Some(Some(email)) = &u.email {
            if !email.trim().is_empty() {
                validate_email(email.trim()).map_err(|e| errs.at(&format!("{path}.email"), e))?;
            }
        }
        match (&u.password, &u.password_hash) {
            (Some(_), Some(_)) => {
                return Err(errs.at(&format!("{path}.password_hash"), "give either password or password_hash, not both"))
            }
            (Some(p), None) if p.is_empty() => {
                return Err(errs.at(&format!("{path}.password"), "the password must not be empty"))
            }
            (None, Some(h)) if !recognised_hash(h) => {
                return Err(errs.at(
                    &format!("{path}.password_hash"),
                    "not a recognised hash (argon2, bcrypt, pbkdf2_sha256 or sha512-crypt)",
                ))
            }
            _ => {}
        }
        for (j, g) in u.groups.iter().enumerate() {
            if !known.group_exists(g) {
                return Err(errs.at(&format!("{path}.groups[{j}]"), format!("group '{g}' does not exist")));
            }
        }
        check_mapping(errs, &path, "attributes", &u.attributes)?;
    }
    Ok(())
}

fn validate_stages_and_flows(core: &Core, bp: &Blueprint, known: &Known, errs: &Errs) -> Result<()> {
    for (i, s) in bp.stages.iter().enumerate() {
        let path = entry_label("stages", i, &s.name);
        check_name(errs, &path, "name", &s.name)?;
        check_mapping(errs, &path, "config", &s.config)?;
        let Some(handler) = core.flows.handler(&s.kind) else {
            return Err(errs.at(&format!("{path}.kind"), format!("unknown stage kind '{}'", s.kind)));
        };
        let config = s.config.clone().unwrap_or_else(|| json!({}));
        handler.validate_config(&config).map_err(|e| {
            let field = match &e {
                CoreError::Invalid { fields, .. } => fields.keys().next().map(|f| format!(".{f}")).unwrap_or_default(),
                _ => String::new(),
            };
            errs.at(&format!("{path}.config{field}"), e)
        })?;
    }
    for (i, f) in bp.flows.iter().enumerate() {
        let path = entry_label("flows", i, &f.slug);
        check_slug(errs, &path, "slug", &f.slug)?;
        if let Some(name) = &f.name {
            check_name(errs, &path, "name", name)?;
        }
        if f.designation.is_none() && !known.flows.contains_key(&f.slug) {
            return Err(errs.at(&format!("{path}.designation"), "a new flow needs a designation"));
        }
        for (j, s) in f.stages.iter().flatten().enumerate() {
            let s = s.stage();
            if !known.stage_exists(s) {
                return Err(errs.at(&format!("{path}.stages[{j}]"), format!("stage '{s}' does not exist")));
            }
        }
    }
    Ok(())
}

fn validate_policies(bp: &Blueprint, errs: &Errs) -> Result<()> {
    for (i, p) in bp.policies.iter().enumerate() {
        let path = entry_label("policies", i, &p.name);
        check_name(errs, &path, "name", &p.name)?;
        if !POLICY_KINDS.contains(&p.kind.as_str()) {
            return Err(errs.at(
                &format!("{path}.kind"),
                format!("unknown policy kind '{}' (one of {})", p.kind, POLICY_KINDS.join(", ")),
            ));
        }
        check_mapping(errs, &path, "config", &p.config)?;
        // The rules the policy engine applies when a policy is saved (expressions compile…).
        let config = p.config.clone().unwrap_or_else(|| json!({}));
        crate::policy::CompiledPolicy::validate(&p.kind, &config).map_err(|e| {
            let field = match &e {
                CoreError::Invalid { fields, .. } => fields.keys().next().map(|f| format!(".{f}")).unwrap_or_default(),
                _ => String::new(),
            };
            errs.at(&format!("{path}.config{field}"), e)
        })?;
    }
    Ok(())
}

fn validate_providers(bp: &Blueprint, known: &Known, errs: &Errs) -> Result<()> {
    let mut client_ids: HashMap<String, String> = known
        .providers
        .values()
        .filter(|p| !known.file_providers.contains_key(&p.name))
        .filter_map(|p| p.config.get("client_id").and_then(Value::as_str).map(|c| (c.to_string(), p.name.clone())))
        .collect();
    for (i, p) in bp.providers.iter().enumerate() {
        let path = entry_label("providers", i, &p.name);
        let at = |field: &str| format!("{path}.{field}");
        check_name(errs, &path, "name", &p.name)?;
        let allowed = provider_fields(p.kind);
        if let Some(f) = p.given_fields().into_iter().find(|f| !allowed.contains(f)) {
            return Err(errs.at(&at(f), format!("not a field of a {} provider", p.kind.as_str())));
        }
        if let Some(flow) = &p.authorization_flow {
            // The default may be missing (a store from before it existed): the provider then has none.
            if !known.flow_exists(flow) && flow != DEFAULT_AUTHORIZATION_FLOW {
                return Err(errs.at(&at("authorization_flow"), format!("flow '{flow}' does not exist")));
            }
        }
        if let Some(v) = &p.access_token_validity {
            if parse_validity(v).is_none() {
                return Err(
                    errs.at(&at("access_token_validity"), "not a validity like 'minutes=5' or a number of seconds")
                );
            }
        }
        if let Some(v) = &p.refresh_token_validity {
            if parse_validity(v).is_none() {
                return Err(
                    errs.at(&at("refresh_token_validity"), "not a validity like 'days=30' or a number of seconds")
                );
            }
        }
        match p.kind {
            ProviderKind::Proxy => {
                let mode = p.mode.as_deref().unwrap_or("forward_single");
                if !matches!(mode, "forward_single" | "forward_domain") {
                    return Err(errs.at(&at("mode"), format!("'{mode}' is not forward_single or forward_domain")));
                }
                let Some(host) = &p.external_host else {
                    return Err(errs.at(&at("external_host"), "a proxy provider needs an external_host"));
                };
                let Some(url) = http_url(host) else {
                    return Err(errs.at(&at("external_host"), format!("'{host}' is not an http(s) URL")));
                };
                if let Some(internal) = &p.internal_host {
                    if http_url(internal).is_none() {
                        return Err(errs.at(&at("internal_host"), format!("'{internal}' is not an http(s) URL")));
                    }
                }
                if let Some(rules) = &p.access_rules {
                    if let Err(e) = crate::access_rules::AccessRules::compile(rules) {
                        return Err(errs.at(&at("access_rules"), e.to_string()));
                    }
                }
                if let Some(v) = &p.skip_path_regex {
                    for line in v.lines().map(str::trim).filter(|l| !l.is_empty()) {
                        if let Err(e) = regex::Regex::new(line) {
                            return Err(errs.at(&at("skip_path_regex"), format!("'{line}' is not a valid regex: {e}")));
                        }
                    }
                }
                match (&p.cookie_domain, mode) {
                    (Some(d), _) if !is_domain(d) => {
                        return Err(errs.at(&at("cookie_domain"), format!("'{d}' is not a domain name")))
                    }
                    (Some(d), _) => {
                        let d = d.trim_start_matches('.').to_lowercase();
                        let h = url.host_str().unwrap_or_default().to_lowercase();
                        if h != d && !h.ends_with(&format!(".{d}")) {
                            return Err(errs.at(
                                &at("cookie_domain"),
                                format!("external_host '{host}' is not inside the cookie domain '{d}'"),
                            ));
                        }
                    }
                    (None, "forward_domain") => {
                        return Err(errs.at(&at("cookie_domain"), "forward_domain mode needs a cookie_domain"))
                    }
                    (None, _) => {}
                }
            }
            ProviderKind::Oauth2 => {
                let client_type = p.client_type.as_deref().unwrap_or("confidential");
                if !matches!(client_type, "confidential" | "public") {
                    return Err(errs.at(&at("client_type"), format!("'{client_type}' is not confidential or public")));
                }
                let Some(client_id) = p.client_id.as_deref().filter(|c| !c.trim().is_empty()) else {
                    return Err(errs.at(&at("client_id"), "an oauth2 provider needs a client_id"));
                };
                if let Some(other) = client_ids.insert(client_id.to_string(), p.name.clone()) {
                    return Err(
                        errs.at(&at("client_id"), format!("client_id '{client_id}' is already used by '{other}'"))
                    );
                }
                let method = match p.token_endpoint_auth_method.as_deref() {
                    None => None,
                    Some(m) => match AuthMethod::parse(m) {
                        Some(m) => Some(m),
                        None => {
                            return Err(errs.at(
                                &at("token_endpoint_auth_method"),
                                format!("'{m}' is not one of {}", AuthMethod::NAMES.join(", ")),
                            ))
                        }
                    },
                };
                let jwks = p.jwks.as_ref().filter(|j| !j.is_null());
                if let Some(j) = jwks {
                    if let Err(e) = crate::oauth::assertion::parse_jwks(j) {
                        return Err(errs.at(&at("jwks"), format!("the JWKS {e}")));
                    }
                    if client_type == "public" {
                        return Err(errs.at(&at("jwks"), "a public client does not authenticate; make it confidential"));
                    }
                }
                match (method, client_type) {
                    (Some(AuthMethod::None), "confidential") => {
                        return Err(errs.at(
                            &at("token_endpoint_auth_method"),
                            "none is for public clients; a confidential client authenticates",
                        ))
                    }
                    (Some(m), "public") if m != AuthMethod::None => {
                        return Err(errs.at(
                            &at("token_endpoint_auth_method"),
                            format!("a public client does not authenticate; {} needs a confidential one", m.as_str()),
                        ))
                    }
                    (Some(AuthMethod::PrivateKeyJwt), _) if jwks.is_none() => {
                        return Err(errs.at(&at("jwks"), "private_key_jwt needs the client's public keys in jwks"))
                    }
                    _ => {}
                }
                // A client holding a key needs no secret, unless it is told to use one.
                let needs_secret = match method {
                    Some(m) => matches!(m, AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost),
                    None => jwks.is_none(),
                };
                match (client_type, p.client_secret.as_deref()) {
                    ("confidential", None | Some("")) if needs_secret => {
                        return Err(errs.at(&at("client_secret"), "a confidential client needs a client_secret"))
                    }
                    ("public", Some(_)) => {
                        return Err(errs.at(&at("client_secret"), "a public client has no secret (it uses PKCE)"))
                    }
                    _ => {}
                }
                for (j, uri) in p.redirect_uris.iter().flatten().enumerate() {
                    match absolute_url(uri) {
                        None => {
                            return Err(errs
                                .at(&format!("{path}.redirect_uris[{j}]"), format!("'{uri}' is not an absolute URL")))
                        }
                        Some(u) if u.fragment().is_some() => {
                            return Err(errs.at(
                                &format!("{path}.redirect_uris[{j}]"),
                                format!("'{uri}' must not have a fragment"),
                            ))
                        }
                        Some(_) => {}
                    }
                }
                if let Some(alg) = &p.signing_alg {
                    if crate::signing::parse_alg(alg).is_none() {
                        return Err(errs.at(&at("signing_alg"), format!("'{alg}' is not RS256, ES256 or EdDSA")));
                    }
                }
                if let Some(mode) = &p.sub_mode {
                    const MODES: &[&str] =
                        &["hashed_user_id", "user_id", "user_uuid", "user_username", "user_email", "user_upn"];
                    if !MODES.contains(&mode.as_str()) {
                        return Err(errs.at(&at("sub_mode"), format!("'{mode}' is not one of {}", MODES.join(", "))));
                    }
                }
                for (j, s) in p.scopes.iter().flatten().enumerate() {
                    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                        return Err(errs.at(&format!("{path}.scopes[{j}]"), format!("'{s}' is not a scope name")));
                    }
                }
                let mut mapped = HashSet::new();
                for (j, c) in p.claims.iter().flatten().enumerate() {
                    let field = format!("{path}.claims[{j}] ({})", c.name);
                    if !mapped.insert((c.name.clone(), c.scope.clone())) {
                        return Err(errs.at(&field, "the claim is mapped twice for this scope"));
                    }
                    if let Err(e) = crate::oauth::claims::compile(c) {
                        return Err(errs.at(&field, e));
                    }
                }
                if let Some(uri) = &p.backchannel_logout_uri {
                    if absolute_url(uri).is_none() {
                        return Err(errs.at(&at("backchannel_logout_uri"), format!("'{uri}' is not an absolute URL")));
                    }
                }
            }
            ProviderKind::Ldap => {
                let Some(base_dn) = p.base_dn.as_deref().filter(|b| !b.trim().is_empty()) else {
                    return Err(errs.at(&at("base_dn"), "an ldap provider needs a base_dn"));
                };
                if !base_dn
                    .split(',')
                    .all(|rdn| rdn.split_once('=').is_some_and(|(a, v)| !a.trim().is_empty() && !v.is_empty()))
                {
                    return Err(errs.at(&at("base_dn"), format!("'{base_dn}' is not a DN like dc=example,dc=test")));
                }
                if let Some(flow) = &p.bind_flow {
                    if !known.flow_exists(flow) {
                        return Err(errs.at(&at("bind_flow"), format!("flow '{flow}' does not exist")));
                    }
                }
                // The search group may be created later (DESIGN.md's own example names one it
                // never declares): it is kept by name and resolved when LDAP searches are checked.
                if let Some(group) = &p.search_group {
                    if !known.group_exists(group) {
                        tracing::warn!(group = %group, "LDAP search group does not exist yet; nobody can search the whole tree until it does");
                    }
                }
            }
        }
    }
    Ok(())
}

fn validate_applications(bp: &Blueprint, known: &Known, errs: &Errs) -> Result<()> {
    // A provider serves one application.
    let mut provider_app: HashMap<String, String> = HashMap::new();
    let provider_names: HashMap<Uuid, &str> = known.providers.values().map(|p| (p.id, p.name.as_str())).collect();
    for a in known.applications.values().filter(|a| !known.file_apps.contains_key(&a.slug)) {
        if let Some(name) = a.provider_id.and_then(|id| provider_names.get(&id)) {
            provider_app.insert(name.to_string(), a.slug.clone());
        }
    }
    for (i, a) in bp.applications.iter().enumerate() {
        let path = entry_label("applications", i, &a.name);
        check_name(errs, &path, "name", &a.name)?;
        check_slug(errs, &path, "slug", &a.slug)?;
        if let Some(Some(provider)) = &a.provider {
            if known.provider_kind(bp, provider).is_none() {
                return Err(errs.at(&format!("{path}.provider"), format!("provider '{provider}' does not exist")));
            }
            if let Some(other) = provider_app.insert(provider.clone(), a.slug.clone()) {
                return Err(errs.at(
                    &format!("{path}.provider"),
                    format!("provider '{provider}' already serves application '{other}'"),
                ));
            }
        }
        if let Some(Some(url)) = &a.launch_url {
            if absolute_url(url).is_none() {
                return Err(errs.at(&format!("{path}.launch_url"), format!("'{url}' is not an absolute URL")));
            }
        }
        for (j, g) in a.allowed_groups.iter().flatten().enumerate() {
            if !known.group_exists(g) {
                return Err(errs.at(&format!("{path}.allowed_groups[{j}]"), format!("group '{g}' does not exist")));
            }
        }
    }
    Ok(())
}

fn validate_outposts(bp: &Blueprint, known: &Known, errs: &Errs) -> Result<()> {
    for (i, o) in bp.outposts.iter().enumerate() {
        let path = entry_label("outposts", i, &o.name);
        check_name(errs, &path, "name", &o.name)?;
        for (j, p) in o.providers.iter().enumerate() {
            match known.provider_kind(bp, p).as_deref() {
                None => {
                    return Err(errs.at(&format!("{path}.providers[{j}]"), format!("provider '{p}' does not exist")))
                }
                Some("oauth2") => {
                    return Err(errs.at(
                        &format!("{path}.providers[{j}]"),
                        format!("provider '{p}' is an oauth2 provider, served directly and not by an outpost"),
                    ))
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

async fn validate_bindings(core: &Core, bp: &Blueprint, known: &Known, errs: &Errs<'_>) -> Result<()> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, b) in bp.bindings.iter().enumerate() {
        let path = format!("bindings[{i}]");
        let t = &b.target;
        let targets = [t.flow.is_some(), t.application.is_some(), t.stage_binding.is_some()];
        if targets.iter().filter(|x| **x).count() != 1 {
            return Err(errs.at(&format!("{path}.target"), "give exactly one of flow, application or stage_binding"));
        }
        let target_key = if let Some(flow) = &t.flow {
            if !known.flow_exists(flow) {
                return Err(errs.at(&format!("{path}.target.flow"), format!("flow '{flow}' does not exist")));
            }
            format!("flow:{flow}")
        } else if let Some(app) = &t.application {
            if !known.app_exists(app) {
                return Err(
                    errs.at(&format!("{path}.target.application"), format!("application '{app}' does not exist"))
                );
            }
            format!("application:{app}")
        } else if let Some(sb) = &t.stage_binding {
            if !known.flow_exists(&sb.flow) {
                return Err(
                    errs.at(&format!("{path}.target.stage_binding.flow"), format!("flow '{}' does not exist", sb.flow))
                );
            }
            // The flow's stages after the apply: the file's list when it gives one, else the store's.
            let declared =
                known.file_flows.get(&sb.flow).and_then(|&k| bp.flows.get(k)).and_then(|f| f.stages.as_ref());
            let in_flow = match (declared, known.flows.get(&sb.flow)) {
                (Some(list), _) => list.iter().any(|s| s.stage() == sb.stage),
                (None, Some(flow)) => core
                    .store
                    .flow_bindings(flow.id)
                    .await
                    .map_err(store_err)?
                    .iter()
                    .any(|(_, stage)| stage.name == sb.stage),
                (None, None) => false,
            };
            if !in_flow {
                return Err(errs.at(
                    &format!("{path}.target.stage_binding.stage"),
                    format!("stage '{}' is not in flow '{}'", sb.stage, sb.flow),
                ));
            }
            format!("stage_binding:{}:{}", sb.flow, sb.stage)
        } else {
            String::new()
        };
        let subject_key = match (&b.policy, &b.user, &b.group) {
            (Some(p), None, None) => {
                if !known.policy_exists(p) {
                    return Err(errs.at(&format!("{path}.policy"), format!("policy '{p}' does not exist")));
                }
                format!("policy:{p}")
            }
            (None, Some(u), None) => {
                let in_store = core.store.get_user_by_username(u).await.map_err(store_err)?.is_some();
                if !in_store && !known.file_users.contains_key(&u.to_lowercase()) {
                    return Err(errs.at(&format!("{path}.user"), format!("user '{u}' does not exist")));
                }
                format!("user:{}", u.to_lowercase())
            }
            (None, None, Some(g)) => {
                if !known.group_exists(g) {
                    return Err(errs.at(&format!("{path}.group"), format!("group '{g}' does not exist")));
                }
                format!("group:{}", g.to_lowercase())
            }
            _ => return Err(errs.at(&path, "give exactly one of policy, user or group")),
        };
        if let Some(t) = b.timeout_ms {
            if !(1..=600_000).contains(&t) {
                return Err(errs.at(&format!("{path}.timeout_ms"), "must be between 1 and 600000"));
            }
        }
        if let Some(first) = seen.insert(format!("{target_key}|{subject_key}"), i) {
            return Err(errs.at(&path, format!("binds the same target and subject as bindings[{first}]")));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- phase 2: writing

/// Applies a blueprint: validates everything first (an invalid file changes nothing), then
/// creates or updates what it declares. A database failure in the middle of the writes can
/// leave a partial apply; applying the file again completes it.
pub async fn apply(core: &Core, source_name: &str, yaml: &str, client: &ClientInfo) -> Result<ApplyReport> {
    let bp = parse(source_name, yaml)?;
    apply_parsed(core, source_name, &bp, client, true).await
}

/// Applies an already parsed blueprint (the REST API builds one entry at a time, so its
/// objects get the same validation as a file's). `audit` records `blueprint_applied`;
/// callers that record their own event pass `false`.
pub async fn apply_parsed(
    core: &Core,
    source_name: &str,
    bp: &Blueprint,
    client: &ClientInfo,
    audit: bool,
) -> Result<ApplyReport> {
    let errs = Errs { source: source_name };
    let known = load_known(core, bp, &errs).await?;
    validate(core, bp, &known, &errs).await?;

    let mut w = Writer { core, client, report: ApplyReport::default(), known };
    w.groups(bp).await?;
    w.users(bp).await?;
    w.stages(bp).await?;
    w.flows(bp).await?;
    w.policies(bp).await?;
    w.providers(bp).await?;
    w.applications(bp).await?;
    w.outposts(bp).await?;
    w.bindings(bp).await?;
    let report = w.report;
    if report.created + report.updated > 0 {
        // Other processes learn of the change through the store's feed; this one now.
        core.config_changed();
    }
    if audit && report.created + report.updated > 0 {
        let kinds: Map<String, Value> = report
            .kinds
            .iter()
            .map(|(k, c)| {
                (k.to_string(), json!({ "created": c.created, "updated": c.updated, "unchanged": c.unchanged }))
            })
            .collect();
        core.events
            .record_raw(
                "blueprint_applied",
                None,
                None,
                client,
                json!({
                    "blueprint": source_name,
                    "created": report.created,
                    "updated": report.updated,
                    "unchanged": report.unchanged,
                    "kinds": kinds,
                }),
            )
            .await;
    }
    Ok(report)
}

struct Writer<'a> {
    core: &'a Core,
    client: &'a ClientInfo,
    report: ApplyReport,
    /// Refreshed with what is written, so later sections resolve names to stored ids.
    known: Known,
}

fn merge_object(base: &Value, patch: &Option<Value>) -> Value {
    match (base, patch) {
        (Value::Object(b), Some(Value::Object(p))) => {
            let mut merged = b.clone();
            for (k, v) in p {
                merged.insert(k.clone(), v.clone());
            }
            Value::Object(merged)
        }
        (_, Some(p)) => p.clone(),
        (b, None) => b.clone(),
    }
}

fn empty_if_null(v: Value) -> Value {
    if v.is_null() {
        json!({})
    } else {
        v
    }
}

impl Writer<'_> {
    fn group_id(&self, name: &str) -> Result<Uuid> {
        self.known
            .groups
            .get(&name.to_lowercase())
            .map(|g| g.id)
            .ok_or_else(|| CoreError::Internal(format!("group '{name}' vanished during the apply")))
    }

    async fn groups(&mut self, bp: &Blueprint) -> Result<()> {
        let store = &self.core.store;
        // Parents first, so every parent has an id when its children are written.
        let mut pending: Vec<&GroupEntry> = bp.groups.iter().collect();
        let mut changed_any = false;
        while !pending.is_empty() {
            let pending_names: HashSet<String> = pending.iter().map(|g| g.name.to_lowercase()).collect();
            let (ready, later): (Vec<&GroupEntry>, Vec<&GroupEntry>) = pending.into_iter().partition(|g| {
                !matches!(&g.parent, Some(Some(p)) if pending_names.contains(&p.to_lowercase()) && p.to_lowercase() != g.name.to_lowercase())
            });
            if ready.is_empty() {
                return Err(CoreError::Internal("group nesting could not be ordered".into()));
            }
            for g in ready {
                let parent_id = match &g.parent {
                    Some(Some(p)) => Some(Some(self.group_id(p)?)),
                    Some(None) => Some(None),
                    None => None,
                };
                let key = g.name.to_lowercase();
                let outcome = match self.known.groups.get(&key).cloned() {
                    None => {
                        let created = store
                            .create_group(NewGroup {
                                id: Uuid::now_v7(),
                                name: g.name.clone(),
                                parent_id: parent_id.flatten(),
                                is_superuser: g.is_superuser.unwrap_or(false),
                                attributes: empty_if_null(g.attributes.clone().unwrap_or_else(|| json!({}))),
                                created_at: self.core.clock.now(),
                            })
                            .await
                            .map_err(store_err)?;
                        self.core
                            .events
                            .record_raw("group_created", None, None, self.client, json!({ "group": created.name }))
                            .await;
                        self.known.groups.insert(key, created);
                        Outcome::Created
                    }
                    Some(existing) => {
                        let mut next = existing.clone();
                        next.name = g.name.clone();
                        if let Some(p) = parent_id {
                            next.parent_id = p;
                        }
                        if let Some(s) = g.is_superuser {
                            next.is_superuser = s;
                        }
                        next.attributes = merge_object(&existing.attributes, &g.attributes);
                        if next == existing {
                            Outcome::Unchanged
                        } else {
                            store.update_group(&next).await.map_err(store_err)?;
                            self.core
                                .events
                                .record_raw("group_changed", None, None, self.client, json!({ "group": next.name }))
                                .await;
                            self.known.groups.insert(key, next);
                            Outcome::Updated
                        }
                    }
                };
                changed_any |= !matches!(outcome, Outcome::Unchanged);
                self.report.count("groups", outcome);
            }
            pending = later;
        }
        if changed_any {
            self.core.groups.invalidate();
            self.core.sessions.apply_change(&Change::Groups);
        }
        Ok(())
    }

    async fn users(&mut self, bp: &Blueprint) -> Result<()> {
        let core = self.core;
        for u in &bp.users {
            let email = match &u.email {
                Some(Some(e)) if !e.trim().is_empty() => Some(Some(e.trim().to_string())),
                Some(_) => Some(None),
                None => None,
            };
            let existing = core.store.get_user_by_username(&u.username).await.map_err(store_err)?;
            let (user, mut outcome) = match existing {
                None => {
                    let password_hash = match (&u.password, &u.password_hash) {
                        (Some(p), _) => Some(core.directory.hasher().hash(p).await?),
                        (None, Some(h)) => Some(h.clone()),
                        (None, None) => None,
                    };
                    let now = core.clock.now();
                    let user = core
                        .store
                        .create_user(NewUser {
                            id: Uuid::now_v7(),
                            username: u.username.clone(),
                            name: u.name.clone().unwrap_or_else(|| u.username.clone()),
                            email: email.flatten(),
                            is_active: u.is_active.unwrap_or(true),
                            kind: u.kind.unwrap_or(UserKind::Internal),
                            attributes: empty_if_null(u.attributes.clone().unwrap_or_else(|| json!({}))),
                            password_changed_at: password_hash.as_ref().map(|_| now),
                            password_hash,
                            created_at: now,
                        })
                        .await
                        .map_err(store_err)?;
                    core.events.record("user_created", Some(&user), self.client, json!({ "groups": u.groups })).await;
                    (user, Outcome::Created)
                }
                Some(existing) => {
                    let mut next = existing.clone();
                    next.username = u.username.clone();
                    if let Some(n) = &u.name {
                        next.name = n.clone();
                    }
                    if let Some(e) = email {
                        next.email = e;
                    }
                    if let Some(a) = u.is_active {
                        next.is_active = a;
                    }
                    if let Some(k) = u.kind {
                        next.kind = k;
                    }
                    next.attributes = merge_object(&existing.attributes, &u.attributes);
                    let mut outcome = Outcome::Unchanged;
                    if next != existing {
                        // Through the directory: it ends the sessions of a disabled user and records the change.
                        core.directory.update_user(&next, self.client).await?;
                        outcome = Outcome::Updated;
                    }
                    if let Some(p) = &u.password {
                        let v = core.directory.hasher().verify(p, existing.password_hash.as_deref()).await?;
                        if !v.valid {
                            core.directory.set_password(&next, p, self.client).await?;
                            outcome = Outcome::Updated;
                        }
                    } else if let (Some(h), None) = (&u.password_hash, &existing.password_hash) {
                        core.store.set_password_hash(next.id, h, core.clock.now()).await.map_err(store_err)?;
                        core.events.record("password_set", Some(&next), self.client, json!({})).await;
                        outcome = Outcome::Updated;
                    }
                    (next, outcome)
                }
            };
            if !u.groups.is_empty() {
                let current: HashSet<Uuid> =
                    core.store.direct_group_ids(user.id).await.map_err(store_err)?.into_iter().collect();
                for g in &u.groups {
                    let gid = self.group_id(g)?;
                    if !current.contains(&gid) {
                        core.store.add_member(gid, user.id).await.map_err(store_err)?;
                        core.sessions.apply_change(&Change::User(user.id));
                        core.events.record("group_member_added", Some(&user), self.client, json!({ "group": g })).await;
                        if matches!(outcome, Outcome::Unchanged) {
                            outcome = Outcome::Updated;
                        }
                    }
                }
            }
            self.report.count("users", outcome);
        }
        Ok(())
    }

    async fn stages(&mut self, bp: &Blueprint) -> Result<()> {
        for s in &bp.stages {
            let existing = self.known.stages.get(&s.name).cloned();
            let next = Stage {
                id: existing.as_ref().map(|e| e.id).unwrap_or_else(Uuid::now_v7),
                name: s.name.clone(),
                kind: s.kind.clone(),
                config: empty_if_null(s.config.clone().unwrap_or_else(|| json!({}))),
                created_at: existing.as_ref().map(|e| e.created_at).unwrap_or_else(|| self.core.clock.now()),
            };
            let outcome = match &existing {
                Some(e) if *e == next => Outcome::Unchanged,
                Some(_) => Outcome::Updated,
                None => Outcome::Created,
            };
            if !matches!(outcome, Outcome::Unchanged) {
                let stored = self.core.store.upsert_stage(&next).await.map_err(store_err)?;
                self.known.stages.insert(stored.name.clone(), stored);
            }
            self.report.count("stages", outcome);
        }
        Ok(())
    }

    async fn flows(&mut self, bp: &Blueprint) -> Result<()> {
        let store = &self.core.store;
        for f in &bp.flows {
            let existing = self.known.flows.get(&f.slug).cloned();
            let mut settings = existing.as_ref().map(|e| e.settings.clone()).unwrap_or_else(|| json!({}));
            if !settings.is_object() {
                settings = json!({});
            }
            if let Some(obj) = settings.as_object_mut() {
                if let Some(a) = f.authentication {
                    obj.insert("authentication".into(), serde_json::to_value(a_str(a)).unwrap_or(Value::Null));
                } else if existing.is_none() {
                    obj.insert("authentication".into(), json!("none"));
                }
                if let Some(d) = f.denied_action {
                    obj.insert("denied_action".into(), json!(d_str(d)));
                }
                if let Some(m) = f.policy_engine_mode {
                    obj.insert("policy_engine_mode".into(), json!(m.as_str()));
                }
            }
            let name =
                f.name.clone().or_else(|| existing.as_ref().map(|e| e.name.clone())).unwrap_or_else(|| f.slug.clone());
            let next = Flow {
                id: existing.as_ref().map(|e| e.id).unwrap_or_else(Uuid::now_v7),
                slug: f.slug.clone(),
                title: f
                    .title
                    .clone()
                    .or_else(|| existing.as_ref().map(|e| e.title.clone()))
                    .unwrap_or_else(|| name.clone()),
                name,
                designation: f
                    .designation
                    .or(existing.as_ref().map(|e| e.designation))
                    .unwrap_or(FlowDesignation::Authentication),
                settings,
                created_at: existing.as_ref().map(|e| e.created_at).unwrap_or_else(|| self.core.clock.now()),
            };
            let mut outcome = match &existing {
                Some(e) if *e == next => Outcome::Unchanged,
                Some(_) => Outcome::Updated,
                None => Outcome::Created,
            };
            let flow = if matches!(outcome, Outcome::Unchanged) {
                next
            } else {
                let stored = store.upsert_flow(&next).await.map_err(store_err)?;
                self.known.flows.insert(stored.slug.clone(), stored.clone());
                stored
            };
            if let Some(entries) = &f.stages {
                let mut desired = Vec::new();
                for (i, entry) in entries.iter().enumerate() {
                    let name = entry.stage();
                    let stage = self
                        .known
                        .stages
                        .get(name)
                        .ok_or_else(|| CoreError::Internal(format!("stage '{name}' vanished during the apply")))?;
                    desired.push((stage.id, (i as i64 + 1) * 10, entry.settings()));
                }
                let current = store.flow_bindings(flow.id).await.map_err(store_err)?;
                let same = current.len() == desired.len()
                    && current.iter().zip(&desired).all(|((b, _), (stage_id, order, settings))| {
                        b.stage_id == *stage_id && b.order == *order && b.settings == *settings
                    });
                if !same {
                    // Bindings that stay keep their ids, and so the policies bound to them.
                    for (b, _) in &current {
                        if !desired.iter().any(|(s, o, _)| b.stage_id == *s && b.order == *o) {
                            store.delete_binding(b.id).await.map_err(store_err)?;
                        }
                    }
                    for (stage_id, order, settings) in desired {
                        let found = current.iter().find(|(b, _)| b.stage_id == stage_id && b.order == order);
                        if found.is_some_and(|(b, _)| b.settings == settings) {
                            continue;
                        }
                        store
                            .upsert_binding(&FlowStageBinding {
                                id: found.map(|(b, _)| b.id).unwrap_or_else(Uuid::now_v7),
                                flow_id: flow.id,
                                stage_id,
                                order,
                                settings,
                            })
                            .await
                            .map_err(store_err)?;
                    }
                    if matches!(outcome, Outcome::Unchanged) {
                        outcome = Outcome::Updated;
                    }
                }
            }
            self.report.count("flows", outcome);
        }
        Ok(())
    }

    async fn policies(&mut self, bp: &Blueprint) -> Result<()> {
        for p in &bp.policies {
            let existing = self.known.policies.get(&p.name).cloned();
            let next = Policy {
                id: existing.as_ref().map(|e| e.id).unwrap_or_else(Uuid::now_v7),
                name: p.name.clone(),
                kind: p.kind.clone(),
                config: empty_if_null(p.config.clone().unwrap_or_else(|| json!({}))),
                execution_logging: p
                    .execution_logging
                    .or(existing.as_ref().map(|e| e.execution_logging))
                    .unwrap_or(false),
                created_at: existing.as_ref().map(|e| e.created_at).unwrap_or_else(|| self.core.clock.now()),
            };
            let outcome = match &existing {
                Some(e) if *e == next => Outcome::Unchanged,
                Some(_) => Outcome::Updated,
                None => Outcome::Created,
            };
            if !matches!(outcome, Outcome::Unchanged) {
                let stored = self.core.store.upsert_policy(&next).await.map_err(store_err)?;
                self.known.policies.insert(stored.name.clone(), stored);
            }
            self.report.count("policies", outcome);
        }
        Ok(())
    }

    fn provider_config(&self, p: &ProviderEntry) -> Result<Value> {
        let mut c = Map::new();
        let mut put = |k: &str, v: Value| {
            c.insert(k.to_string(), v);
        };
        match p.kind {
            ProviderKind::Proxy => {
                put("mode", json!(p.mode.as_deref().unwrap_or("forward_single")));
                if let Some(v) = &p.external_host {
                    put("external_host", json!(v));
                }
                if let Some(v) = &p.cookie_domain {
                    put("cookie_domain", json!(v.trim_start_matches('.')));
                }
                if let Some(v) = &p.internal_host {
                    put("internal_host", json!(v));
                }
                if let Some(v) = &p.skip_path_regex {
                    put("skip_path_regex", json!(v));
                }
                if let Some(v) = &p.access_rules {
                    put("access_rules", json!(v));
                }
                if let Some(v) = &p.jwt_federation_providers {
                    put("jwt_federation_providers", json!(v));
                }
                if let Some(v) = p.intercept_header_auth {
                    put("intercept_header_auth", json!(v));
                }
            }
            ProviderKind::Oauth2 => {
                put("client_type", json!(p.client_type.as_deref().unwrap_or("confidential")));
                if let Some(v) = &p.client_id {
                    put("client_id", json!(v));
                }
                if let Some(v) = &p.client_secret {
                    put("client_secret", json!(v));
                }
                put("redirect_uris", json!(p.redirect_uris.clone().unwrap_or_default()));
                if let Some(v) = &p.signing_alg {
                    put("signing_alg", json!(v));
                }
                if let Some(v) = &p.sub_mode {
                    put("sub_mode", json!(v));
                }
                if let Some(v) = &p.scopes {
                    put("scopes", json!(v));
                }
                if let Some(v) = p.refresh_token_validity.as_ref().and_then(parse_validity) {
                    put("refresh_token_validity", json!(v));
                }
                if let Some(v) = &p.claims {
                    put("claims", json!(v));
                }
                if let Some(v) = &p.backchannel_logout_uri {
                    put("backchannel_logout_uri", json!(v));
                }
                // Stored as an object even when given as JSON text (validated above).
                if let Some(v) = p.jwks.as_ref().filter(|v| !v.is_null()) {
                    put("jwks", crate::oauth::assertion::jwks_value(v).unwrap_or_else(|_| v.clone()));
                }
                if let Some(v) = &p.token_endpoint_auth_method {
                    put("token_endpoint_auth_method", json!(v));
                }
            }
            ProviderKind::Ldap => {
                if let Some(v) = &p.base_dn {
                    put("base_dn", json!(v));
                }
                if let Some(slug) = &p.bind_flow {
                    let flow = self
                        .known
                        .flows
                        .get(slug)
                        .ok_or_else(|| CoreError::Internal(format!("flow '{slug}' vanished during the apply")))?;
                    put("bind_flow_id", json!(flow.id));
                }
                if let Some(g) = &p.search_group {
                    put("search_group", json!(g));
                    if let Ok(id) = self.group_id(g) {
                        put("search_group_id", json!(id));
                    }
                }
                if let Some(v) = p.mfa_support {
                    put("mfa_support", json!(v));
                }
                if let Some(v) = p.anonymous_search {
                    put("anonymous_search", json!(v));
                }
            }
        }
        // Seconds, so readers need not parse authentik's notation.
        if let Some(v) = p.access_token_validity.as_ref().and_then(parse_validity) {
            c.insert("access_token_validity".into(), json!(v));
        }
        Ok(Value::Object(c))
    }

    async fn providers(&mut self, bp: &Blueprint) -> Result<()> {
        for p in &bp.providers {
            let slug = p.authorization_flow.as_deref().unwrap_or(DEFAULT_AUTHORIZATION_FLOW);
            let authorization_flow_id = self.known.flows.get(slug).map(|f| f.id);
            let existing = self.known.providers.get(&p.name).cloned();
            let next = Provider {
                id: existing.as_ref().map(|e| e.id).unwrap_or_else(Uuid::now_v7),
                name: p.name.clone(),
                kind: p.kind.as_str().to_string(),
                authorization_flow_id,
                config: self.provider_config(p)?,
                created_at: existing.as_ref().map(|e| e.created_at).unwrap_or_else(|| self.core.clock.now()),
            };
            let outcome = match &existing {
                Some(e) if *e == next => Outcome::Unchanged,
                Some(_) => Outcome::Updated,
                None => Outcome::Created,
            };
            if !matches!(outcome, Outcome::Unchanged) {
                let stored = self.core.store.upsert_provider(&next).await.map_err(store_err)?;
                self.known.providers.insert(stored.name.clone(), stored);
            }
            self.report.count("providers", outcome);
        }
        Ok(())
    }

    fn provider_id(&self, name: &str) -> Result<Uuid> {
        self.known
            .providers
            .get(name)
            .map(|p| p.id)
            .ok_or_else(|| CoreError::Internal(format!("provider '{name}' vanished during the apply")))
    }

    async fn applications(&mut self, bp: &Blueprint) -> Result<()> {
        let store = &self.core.store;
        // Bindings the file declares explicitly win over the allowed_groups shorthand.
        let explicit: HashSet<(String, String)> = bp
            .bindings
            .iter()
            .filter_map(|b| Some((b.target.application.clone()?, b.group.clone()?.to_lowercase())))
            .collect();
        for a in &bp.applications {
            let existing = self.known.applications.get(&a.slug).cloned();
            let provider_id = match &a.provider {
                Some(Some(name)) => Some(Some(self.provider_id(name)?)),
                Some(None) => Some(None),
                None => None,
            };
            let base = existing.clone().unwrap_or_else(|| Application {
                id: Uuid::now_v7(),
                name: a.name.clone(),
                slug: a.slug.clone(),
                provider_id: None,
                launch_url: None,
                icon: None,
                description: String::new(),
                group: None,
                policy_engine_mode: "any".into(),
                open_in_new_tab: false,
                created_at: self.core.clock.now(),
            });
            let mut next = base.clone();
            next.name = a.name.clone();
            if let Some(p) = provider_id {
                next.provider_id = p;
            }
            if let Some(v) = &a.launch_url {
                next.launch_url = v.clone();
            }
            if let Some(v) = &a.icon {
                next.icon = v.clone();
            }
            if let Some(v) = &a.description {
                next.description = v.clone();
            }
            if let Some(v) = &a.group {
                next.group = v.clone();
            }
            if let Some(m) = a.policy_engine_mode {
                next.policy_engine_mode = m.as_str().into();
            }
            if let Some(v) = a.open_in_new_tab {
                next.open_in_new_tab = v;
            }
            let mut outcome = match &existing {
                Some(e) if *e == next => Outcome::Unchanged,
                Some(_) => Outcome::Updated,
                None => Outcome::Created,
            };
            let app = if matches!(outcome, Outcome::Unchanged) {
                next
            } else {
                let stored = store.upsert_application(&next).await.map_err(store_err)?;
                self.known.applications.insert(stored.slug.clone(), stored.clone());
                stored
            };
            if let Some(groups) = &a.allowed_groups {
                let target = BindingTarget::Application(app.id);
                let current = store.policy_bindings(target).await.map_err(store_err)?;
                let mut wanted = HashSet::new();
                let mut changed = false;
                for (i, g) in groups.iter().enumerate() {
                    let gid = self.group_id(g)?;
                    wanted.insert(gid);
                    if explicit.contains(&(a.slug.clone(), g.to_lowercase())) {
                        continue;
                    }
                    let subject = BindingSubject::Group(gid);
                    let found = current.iter().find(|b| b.subject == subject);
                    let order = i as i64;
                    let next = PolicyBinding {
                        id: found.map(|b| b.id).unwrap_or_else(Uuid::now_v7),
                        target,
                        subject,
                        order,
                        negate: false,
                        enabled: true,
                        timeout_ms: found.map(|b| b.timeout_ms).unwrap_or(30_000),
                        failure_result: false,
                        created_at: found.map(|b| b.created_at).unwrap_or_else(|| self.core.clock.now()),
                    };
                    if found != Some(&next) {
                        store.upsert_policy_binding(&next).await.map_err(store_err)?;
                        changed = true;
                    }
                }
                let explicit_groups: HashSet<Uuid> = explicit
                    .iter()
                    .filter(|(slug, _)| *slug == a.slug)
                    .filter_map(|(_, g)| self.known.groups.get(g).map(|g| g.id))
                    .collect();
                for b in &current {
                    if let BindingSubject::Group(gid) = b.subject {
                        if !wanted.contains(&gid) && !explicit_groups.contains(&gid) {
                            store.delete_policy_binding(b.id).await.map_err(store_err)?;
                            changed = true;
                        }
                    }
                }
                if changed && matches!(outcome, Outcome::Unchanged) {
                    outcome = Outcome::Updated;
                }
            }
            self.report.count("applications", outcome);
        }
        Ok(())
    }

    async fn outposts(&mut self, bp: &Blueprint) -> Result<()> {
        for o in &bp.outposts {
            let existing = self.core.store.get_outpost_by_name(&o.name).await.map_err(store_err)?;
            let mut provider_ids = Vec::new();
            for p in &o.providers {
                provider_ids.push(self.provider_id(p)?);
            }
            let next = Outpost {
                id: existing.as_ref().map(|e| e.id).unwrap_or_else(Uuid::now_v7),
                name: o.name.clone(),
                kind: match o.kind {
                    OutpostKind::Proxy => "proxy".into(),
                    OutpostKind::Ldap => "ldap".into(),
                },
                provider_ids,
                config: existing.as_ref().map(|e| e.config.clone()).unwrap_or_else(|| json!({})),
                created_at: existing.as_ref().map(|e| e.created_at).unwrap_or_else(|| self.core.clock.now()),
            };
            let outcome = match &existing {
                Some(e) if *e == next => Outcome::Unchanged,
                Some(_) => Outcome::Updated,
                None => Outcome::Created,
            };
            if !matches!(outcome, Outcome::Unchanged) {
                self.core.store.upsert_outpost(&next).await.map_err(store_err)?;
            }
            self.report.count("outposts", outcome);
        }
        Ok(())
    }

    async fn bindings(&mut self, bp: &Blueprint) -> Result<()> {
        let core = self.core;
        for b in &bp.bindings {
            let missing = |what: String| CoreError::Internal(format!("{what} vanished during the apply"));
            let target = if let Some(slug) = &b.target.flow {
                BindingTarget::Flow(self.known.flows.get(slug).ok_or_else(|| missing(format!("flow '{slug}'")))?.id)
            } else if let Some(slug) = &b.target.application {
                BindingTarget::Application(
                    self.known.applications.get(slug).ok_or_else(|| missing(format!("application '{slug}'")))?.id,
                )
            } else if let Some(sb) = &b.target.stage_binding {
                let flow = self.known.flows.get(&sb.flow).ok_or_else(|| missing(format!("flow '{}'", sb.flow)))?;
                let bindings = core.store.flow_bindings(flow.id).await.map_err(store_err)?;
                let (binding, _) = bindings
                    .iter()
                    .find(|(_, s)| s.name == sb.stage)
                    .ok_or_else(|| missing(format!("stage '{}' in flow '{}'", sb.stage, sb.flow)))?;
                BindingTarget::StageBinding(binding.id)
            } else {
                return Err(CoreError::Internal("binding without a target".into()));
            };
            let subject = if let Some(p) = &b.policy {
                BindingSubject::Policy(self.known.policies.get(p).ok_or_else(|| missing(format!("policy '{p}'")))?.id)
            } else if let Some(u) = &b.user {
                let user = core
                    .store
                    .get_user_by_username(u)
                    .await
                    .map_err(store_err)?
                    .ok_or_else(|| missing(format!("user '{u}'")))?;
                BindingSubject::User(user.id)
            } else if let Some(g) = &b.group {
                BindingSubject::Group(self.group_id(g)?)
            } else {
                return Err(CoreError::Internal("binding without a subject".into()));
            };
            let current = core.store.policy_bindings(target).await.map_err(store_err)?;
            let found = current.into_iter().find(|x| x.subject == subject);
            let next = PolicyBinding {
                id: found.as_ref().map(|x| x.id).unwrap_or_else(Uuid::now_v7),
                target,
                subject,
                order: b.order.or(found.as_ref().map(|x| x.order)).unwrap_or(0),
                negate: b.negate.or(found.as_ref().map(|x| x.negate)).unwrap_or(false),
                enabled: b.enabled.or(found.as_ref().map(|x| x.enabled)).unwrap_or(true),
                timeout_ms: b.timeout_ms.or(found.as_ref().map(|x| x.timeout_ms)).unwrap_or(30_000),
                failure_result: b.failure_result.or(found.as_ref().map(|x| x.failure_result)).unwrap_or(false),
                created_at: found.as_ref().map(|x| x.created_at).unwrap_or_else(|| core.clock.now()),
            };
            let outcome = match &found {
                Some(x) if *x == next => Outcome::Unchanged,
                Some(_) => Outcome::Updated,
                None => Outcome::Created,
            };
            if !matches!(outcome, Outcome::Unchanged) {
                core.store.upsert_policy_binding(&next).await.map_err(store_err)?;
            }
            self.report.count("bindings", outcome);
        }
        Ok(())
    }
}

fn a_str(a: Authentication) -> &'static str {
    match a {
        Authentication::None => "none",
        Authentication::RequireAuthenticated => "require_authenticated",
        Authentication::RequireUnauthenticated => "require_unauthenticated",
        Authentication::RequireSuperuser => "require_superuser",
    }
}

fn d_str(d: DeniedAction) -> &'static str {
    match d {
        DeniedAction::MessageContinue => "message_continue",
        DeniedAction::Message => "message",
        DeniedAction::Continue => "continue",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(yaml: &str) -> String {
        match parse("home.yaml", yaml) {
            Ok(_) => panic!("expected an error for {yaml}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_the_design_example() {
        let yaml = r#"
groups:
  - name: family
    parent: null
users:
  - username: alice
    name: Alice Example
    email: alice@example.test
    password: "plain text"
    groups: [family]
providers:
  - name: Home forward auth
    type: proxy
    mode: forward_domain
    external_host: https://auth.example.test
    cookie_domain: example.test
  - name: Grafana
    type: oauth2
    client_type: confidential
    client_id: grafana
    client_secret: "s3cret"
    redirect_uris: [https://grafana.example.test/login/generic_oauth]
    authorization_flow: default-provider-authorization-explicit-consent
  - name: Directory
    type: ldap
    base_dn: dc=example,dc=test
    bind_flow: default-authentication-flow
    search_group: ldap-search
applications:
  - name: Home
    slug: home
    provider: Home forward auth
    launch_url: blank://blank
    allowed_groups: [family]
outposts:
  - name: embedded
    providers: [Home forward auth, Directory]
"#;
        let bp = parse("home.yaml", yaml).unwrap();
        assert_eq!(bp.groups.len(), 1);
        assert_eq!(bp.groups[0].parent, Some(None));
        assert_eq!(bp.providers[1].kind, ProviderKind::Oauth2);
        assert_eq!(bp.outposts[0].kind, OutpostKind::Proxy);
        assert_eq!(bp.applications[0].allowed_groups.as_deref(), Some(&["family".to_string()][..]));
    }

    #[test]
    fn empty_documents_and_empty_sections_are_fine() {
        assert!(parse("a.yaml", "").unwrap().groups.is_empty());
        assert!(parse("a.yaml", "# nothing yet\n").unwrap().users.is_empty());
        assert!(parse("a.yaml", "groups:\nusers:\n").unwrap().groups.is_empty());
    }

    #[test]
    fn unknown_top_level_key_names_the_file() {
        let e = err("gropus: []\n");
        assert!(e.starts_with("blueprint home.yaml: "), "{e}");
        assert!(e.contains("gropus"), "{e}");
    }

    #[test]
    fn unknown_field_names_the_entry() {
        let e = err("groups:\n  - name: family\n  - name: friends\n    colour: blue\n");
        assert!(e.contains("groups[1] (friends)"), "{e}");
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let e = err("users:\n  - username: alice\n    is_active: maybe\n");
        assert!(e.contains("users[0] (alice).is_active"), "{e}");
        let e = err("users:\n  - username: alice\n    groups: family\n");
        assert!(e.contains("users[0] (alice).groups"), "{e}");
    }

    #[test]
    fn bad_enum_values_are_refused() {
        let e = err("providers:\n  - name: X\n    type: saml\n");
        assert!(e.contains("providers[0] (X).type"), "{e}");
        let e = err("users:\n  - username: bob\n    type: robot\n");
        assert!(e.contains("users[0] (bob).type"), "{e}");
        let e = err("applications:\n  - name: A\n    slug: a\n    policy_engine_mode: most\n");
        assert!(e.contains("applications[0] (A).policy_engine_mode"), "{e}");
    }

    #[test]
    fn not_a_mapping_and_broken_yaml() {
        assert!(err("- a\n- b\n").contains("blueprint home.yaml: document"));
        assert!(err("groups: [\n").contains("blueprint home.yaml"));
    }

    #[test]
    fn validities() {
        assert_eq!(parse_validity(&Validity::Text("minutes=5".into())), Some(300));
        assert_eq!(parse_validity(&Validity::Text("hours=1;minutes=30".into())), Some(5400));
        assert_eq!(parse_validity(&Validity::Seconds(60)), Some(60));
        assert_eq!(parse_validity(&Validity::Text("fortnights=1".into())), None);
        assert_eq!(parse_validity(&Validity::Seconds(0)), None);
    }

    #[test]
    fn hashes_and_domains() {
        assert!(recognised_hash("$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW"));
        assert!(!recognised_hash("plaintext"));
        assert!(is_domain("example.test") && is_domain(".example.test"));
        assert!(!is_domain("https://example.test"));
        assert!(absolute_url("https://grafana.example.test/cb").is_some());
        assert!(absolute_url("not a url").is_none());
        assert!(absolute_url("blank://blank").is_some());
    }
}
