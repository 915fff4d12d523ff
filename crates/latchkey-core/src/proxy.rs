//! Forward auth (proxy providers): which provider and application a request to a protected
//! host belongs to, whether it may pass, and the signed values that carry a browser through
//! the login and back. The web layer only translates headers to and from these calls.
//!
//! Everything on the per-request path is answered from memory: the provider table is loaded
//! once and dropped on `Change::Config`; users come from a cache dropped on `Change::User`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use moka::sync::Cache;
use regex::Regex;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use url::Url;
use uuid::Uuid;

use crate::access::Access;
use crate::access_rules::{AccessRules, RuleMatch, RuleOutcome, RuleRequest, RuleSubject};
use crate::clock::Clock;
use crate::error::{CoreError, Result};
use crate::header_auth::{CredentialIdentity, CredentialKind};
use crate::keys::DerivedKey;
use crate::model::{Application, Change, User};
use crate::policy::{PolicyUser, RequestFacts};
use crate::sessions::{ActiveSession, SessionUser};
use crate::store::Store;
use crate::user_cache::UserCache;

/// How long a login round trip may take before its state expires.
const STATE_TTL_SECS: i64 = 15 * 60;
/// How long the one-time hand-off code from the login host to the app host lives.
const HANDOFF_TTL_SECS: i64 = 60;
const HANDOFF_AAD: &[u8] = b"latchkey/v1/proxy-handoff";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// One application on its own host; the cookie is host-only.
    Single,
    /// Every host under `cookie_domain`; the cookie is set on that domain.
    Domain,
}

/// A proxy provider as the hot path needs it, with the application using it.
#[derive(Debug)]
pub struct ProxyProvider {
    pub id: Uuid,
    pub name: String,
    pub mode: ProxyMode,
    pub external_host: Url,
    /// Without a leading dot, lower case.
    pub cookie_domain: Option<String>,
    pub skip_paths: Vec<Regex>,
    /// Lifetime of the JWT handed to the application, in seconds.
    pub token_validity: i64,
    pub app: Application,
    pub outpost: String,
    /// Ordered access rules (first match wins); empty keeps the default of one factor plus
    /// the application's policies.
    pub rules: AccessRules,
    /// The flow that asks a logged-in user for a second factor when a rule demands one.
    pub stepup_flow: String,
    /// Whether `Authorization: Basic/Bearer` is checked when there is no session.
    pub intercept_header_auth: bool,
    /// OAuth2 providers (by name or client_id) whose access tokens are accepted as Bearer.
    pub jwt_federation_providers: Vec<String>,
}

/// The flow a logged-in user is sent through when a rule wants a second factor.
pub const DEFAULT_STEPUP_FLOW: &str = "default-authentication-stepup";

/// Who a forward-auth request comes from: a browser session, or a credential sent in the
/// `Authorization` header.
#[derive(Debug, Clone)]
pub enum Subject {
    Session(Arc<ActiveSession>),
    Credential(Arc<CredentialIdentity>),
}

impl Subject {
    pub fn user(&self) -> &SessionUser {
        match self {
            Subject::Session(s) => &s.user,
            Subject::Credential(c) => &c.user,
        }
    }

    /// Stable for the session or credential: keys what is cached for it (JWTs).
    pub fn cache_key(&self) -> &str {
        match self {
            Subject::Session(s) => &s.session.key_hash,
            Subject::Credential(c) => &c.key,
        }
    }

    /// Whether the login proved a second factor (RFC 8176 `amr` values of one).
    pub fn has_second_factor(&self) -> bool {
        match self {
            Subject::Session(s) => has_second_factor(&s.session.amr),
            Subject::Credential(_) => false,
        }
    }
}

/// Whether these authentication methods include a second factor.
pub fn has_second_factor(amr: &[String]) -> bool {
    amr.iter().any(|m| matches!(m.as_str(), "otp" | "mfa" | "hwk" | "swk" | "webauthn"))
}

impl ProxyProvider {
    /// Name of the cookie this provider's hosts receive (authentik names its own alike).
    pub fn cookie_name(&self) -> String {
        format!("authentik_proxy_{}", &self.id.simple().to_string()[..8])
    }

    /// Whether `path` is one of the provider's unauthenticated paths.
    pub fn skips(&self, path: &str) -> bool {
        self.skip_paths.iter().any(|r| r.is_match(path))
    }

    fn covers_host(&self, url: &Url) -> bool {
        let Some(host) = url.host_str().map(str::to_ascii_lowercase) else { return false };
        match (self.mode, &self.cookie_domain) {
            (ProxyMode::Domain, Some(domain)) => host == *domain || host.ends_with(&format!(".{domain}")),
            _ => {
                Some(host.as_str()) == self.external_host.host_str()
                    && url.port_or_known_default() == self.external_host.port_or_known_default()
            }
        }
    }

    /// `target` if the browser may be sent there after login: an http(s) URL on a host this
    /// provider protects (the cookie domain, or the app's own host), without credentials.
    pub fn safe_target(&self, target: &str) -> Option<Url> {
        if target.len() > 4096 || target.chars().any(|c| c.is_control()) {
            return None;
        }
        let url = Url::parse(target).ok()?;
        let ok = matches!(url.scheme(), "http" | "https")
            && url.username().is_empty()
            && url.password().is_none()
            && self.covers_host(&url);
        ok.then_some(url)
    }

    /// Whether a session cookie set by Latchkey on `login_host` also reaches this provider's
    /// hosts: a domain-mode provider whose `cookie_domain` contains the login host.
    pub fn shares_cookie_with(&self, login_host: &str) -> bool {
        Url::parse(&format!("http://{login_host}/"))
            .is_ok_and(|u| self.mode == ProxyMode::Domain && self.cookie_domain.is_some() && self.covers_host(&u))
    }

    /// `rd` when safe, else the external host (the fallback).
    pub fn target_or_home(&self, rd: Option<&str>) -> Url {
        rd.and_then(|rd| self.safe_target(rd)).unwrap_or_else(|| self.external_host.clone())
    }
}

/// The request a proxy asks about.
#[derive(Debug, Clone)]
pub struct ForwardedRequest {
    /// The original URL (`proto://host/uri`).
    pub url: Url,
    pub method: String,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
}

/// What the outpost answers.
pub enum Verdict {
    /// An unauthenticated path or a bypass rule: pass without identity.
    Anonymous,
    /// No valid session: send the browser to log in.
    LoginNeeded,
    /// Logged in with one factor where a rule wants two: send the browser to give the second.
    SecondFactorNeeded(Arc<ActiveSession>),
    /// A deny rule, the application's policies, or a credential not valid for this application.
    Denied {
        subject: Option<Subject>,
        messages: Vec<String>,
    },
    Allowed(Subject),
}

/// The login round trip's state, signed: where to return to, for which provider, until when.
#[derive(Debug, Serialize, Deserialize)]
pub struct LoginState {
    pub rd: String,
    pub provider: Uuid,
    pub exp: i64,
}

#[derive(Serialize, Deserialize)]
struct Handoff {
    /// The sealed session cookie value.
    s: String,
    p: Uuid,
    exp: i64,
}

struct Table {
    providers: Vec<Arc<ProxyProvider>>,
    by_id: HashMap<Uuid, Arc<ProxyProvider>>,
}

#[derive(Clone)]
pub struct Proxy {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    access: Access,
    state_key: DerivedKey,
    encryption: DerivedKey,
    table: Arc<RwLock<Option<Arc<Table>>>>,
    generation: Arc<AtomicU64>,
    /// Users and their policy views, shared with OIDC (the core's one user cache).
    users: UserCache,
    /// Hand-off codes already redeemed (one use each, on this instance).
    used: Cache<String, ()>,
}

impl Proxy {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        access: Access,
        state_key: DerivedKey,
        encryption: DerivedKey,
        users: UserCache,
    ) -> Self {
        Proxy {
            store,
            clock,
            access,
            state_key,
            encryption,
            table: Arc::new(RwLock::new(None)),
            generation: Arc::new(AtomicU64::new(0)),
            users,
            used: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(std::time::Duration::from_secs(HANDOFF_TTL_SECS as u64 * 2))
                .build(),
        }
    }

    /// Applies a change made by any process to the caches (the user cache applies its own).
    pub fn apply_change(&self, change: &Change) {
        if *change == Change::Config {
            self.invalidate();
        }
    }

    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut t) = self.table.write() {
            *t = None;
        }
    }

    async fn table(&self) -> Result<Arc<Table>> {
        if let Some(t) = self.table.read().ok().and_then(|t| t.clone()) {
            return Ok(t);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let table = Arc::new(self.load().await?);
        if self.generation.load(Ordering::Acquire) == generation {
            if let Ok(mut t) = self.table.write() {
                *t = Some(Arc::clone(&table));
            }
        }
        Ok(table)
    }

    async fn load(&self) -> Result<Table> {
        load_table(self.store.as_ref()).await
    }

    /// The cookie domain a session cookie set on `host` (`name[:port]`) should carry so that
    /// every host of a domain-mode provider receives it: the longest `cookie_domain` of a
    /// domain-mode provider that contains `host`. `None` when none does (or the table is
    /// unavailable): the cookie then stays host-only.
    pub async fn cookie_domain_for(&self, host: &str) -> Option<String> {
        let table = self.table().await.ok()?;
        // Asked on every request: without domain-mode providers there is nothing to parse.
        if !table.providers.iter().any(|p| p.mode == ProxyMode::Domain) {
            return None;
        }
        let url = Url::parse(&format!("http://{host}/")).ok()?;
        table
            .providers
            .iter()
            .filter(|p| p.mode == ProxyMode::Domain && p.covers_host(&url))
            .filter_map(|p| p.cookie_domain.clone())
            .max_by_key(String::len)
    }
}

/// `target` if it is an absolute URL some proxy provider protects (a host under a
/// domain-mode provider's `cookie_domain`, or a single-mode provider's own host): the login
/// flow may then return the browser there. Read from the store, off the hot path.
pub async fn protected_target(store: &dyn Store, target: &str) -> Result<Option<Url>> {
    if !(target.starts_with("http://") || target.starts_with("https://")) {
        return Ok(None);
    }
    let table = load_table(store).await?;
    Ok(table.providers.iter().find_map(|p| p.safe_target(target)))
}

async fn load_table(store: &dyn Store) -> Result<Table> {
    let providers = store.list_providers().await.map_err(CoreError::from_store)?;
    let apps = store.list_applications().await.map_err(CoreError::from_store)?;
    let outposts = store.list_outposts().await.map_err(CoreError::from_store)?;
    let mut out = Vec::new();
    for p in providers.into_iter().filter(|p| p.kind == "proxy") {
        let Some(app) = apps.iter().find(|a| a.provider_id == Some(p.id)) else { continue };
        match parse_provider(&p.config, p.id, &p.name, app.clone()) {
            Ok(mut parsed) => {
                if let Some(o) = outposts.iter().find(|o| o.provider_ids.contains(&p.id)) {
                    parsed.outpost = o.name.clone();
                }
                out.push(Arc::new(parsed));
            }
            Err(e) => tracing::warn!(provider = %p.name, error = %e, "proxy provider skipped"),
        }
    }
    let by_id = out.iter().map(|p| (p.id, Arc::clone(p))).collect();
    Ok(Table { providers: out, by_id })
}

impl Proxy {
    /// The provider protecting `url`: a single-mode provider of exactly that host first, else
    /// the domain-mode provider with the longest cookie domain containing the host.
    pub async fn resolve(&self, url: &Url) -> Result<Option<Arc<ProxyProvider>>> {
        let table = self.table().await?;
        let single = table.providers.iter().find(|p| p.mode == ProxyMode::Single && p.covers_host(url));
        if let Some(p) = single {
            return Ok(Some(Arc::clone(p)));
        }
        Ok(table
            .providers
            .iter()
            .filter(|p| p.mode == ProxyMode::Domain && p.covers_host(url))
            .max_by_key(|p| p.cookie_domain.as_ref().map_or(0, String::len))
            .cloned())
    }

    pub async fn provider(&self, id: Uuid) -> Result<Option<Arc<ProxyProvider>>> {
        Ok(self.table().await?.by_id.get(&id).cloned())
    }

    /// Decides a forwarded request made by `subject` (already validated by the caller, so the
    /// check costs one session lookup, not one per layer). Access rules first, then the
    /// application's policy bindings; everything from memory.
    pub async fn decide(
        &self,
        provider: &ProxyProvider,
        req: &ForwardedRequest,
        subject: Option<Subject>,
    ) -> Result<Verdict> {
        if provider.skips(req.url.path()) {
            return Ok(Verdict::Anonymous);
        }
        let mut two_factor = false;
        if !provider.rules.is_empty() {
            let host = lower(req.url.host_str().unwrap_or(""));
            let method = upper(&req.method);
            let facts = RuleRequest {
                host: &host,
                path: req.url.path(),
                method: &method,
                client_ip: req.client_ip.as_deref().and_then(|ip| ip.parse().ok()),
            };
            let view = subject.as_ref().map(|s| RuleSubject { username: &s.user().username, groups: &s.user().groups });
            match provider.rules.evaluate(&facts, view.as_ref()) {
                RuleMatch::Matched { outcome: RuleOutcome::Bypass, .. } => return Ok(Verdict::Anonymous),
                RuleMatch::Matched { rule, outcome: RuleOutcome::Deny } => {
                    tracing::info!(provider = %provider.name, rule, host = %host, "forward auth: denied by access rule");
                    let messages = vec![format!("Access is refused by the rule '{rule}'.")];
                    return Ok(Verdict::Denied { subject, messages });
                }
                RuleMatch::Matched { outcome: RuleOutcome::TwoFactor, .. } => two_factor = true,
                RuleMatch::NeedsIdentity | RuleMatch::Matched { .. } | RuleMatch::None => {}
            }
        }
        let Some(subject) = subject else { return Ok(Verdict::LoginNeeded) };
        if let Subject::Credential(c) = &subject {
            if let Some(refusal) = credential_refusal(provider, c) {
                return Ok(Verdict::Denied { subject: Some(subject.clone()), messages: vec![refusal] });
            }
        }
        if two_factor && !subject.has_second_factor() {
            return Ok(match subject {
                Subject::Session(s) => Verdict::SecondFactorNeeded(s),
                other => Verdict::Denied {
                    subject: Some(other),
                    messages: vec![
                        "This address needs a second factor, which an app password or token cannot give; sign in with a browser.".into(),
                    ],
                },
            });
        }
        let Some(user) = self.user(subject.user().id).await? else { return Ok(Verdict::LoginNeeded) };
        let facts = || RequestFacts {
            client_ip: req.client_ip.clone(),
            user_agent: req.user_agent.clone(),
            host: req.url.host_str().map(String::from),
            path: Some(req.url.path().to_string()),
            method: Some(req.method.clone()),
        };
        let policy_user = self.policy_user(&user).await?;
        let decision = self.access.application_as(&provider.app, &user, &policy_user, facts).await?;
        Ok(if decision.passing {
            Verdict::Allowed(subject)
        } else {
            Verdict::Denied { subject: Some(subject), messages: decision.messages }
        })
    }

    /// Whether `req` passes without identity (an unauthenticated path or a bypass rule), so no
    /// credential needs to be looked at.
    pub fn bypassed(&self, provider: &ProxyProvider, req: &ForwardedRequest) -> bool {
        if provider.skips(req.url.path()) {
            return true;
        }
        if provider.rules.is_empty() {
            return false;
        }
        let host = lower(req.url.host_str().unwrap_or(""));
        let method = upper(&req.method);
        let facts = RuleRequest {
            host: &host,
            path: req.url.path(),
            method: &method,
            client_ip: req.client_ip.as_deref().and_then(|ip| ip.parse().ok()),
        };
        matches!(provider.rules.evaluate(&facts, None), RuleMatch::Matched { outcome: RuleOutcome::Bypass, .. })
    }

    /// Whether the session behind `subject` (if any) satisfies the rules for `url` without a
    /// further factor: `false` only when a matching rule wants two factors the session lacks.
    pub fn second_factor_satisfied(
        &self,
        provider: &ProxyProvider,
        url: &Url,
        method: &str,
        session: &ActiveSession,
        client_ip: Option<&str>,
    ) -> bool {
        if provider.rules.is_empty() || has_second_factor(&session.session.amr) {
            return true;
        }
        let host = lower(url.host_str().unwrap_or(""));
        let facts =
            RuleRequest { host: &host, path: url.path(), method, client_ip: client_ip.and_then(|ip| ip.parse().ok()) };
        let view = RuleSubject { username: &session.user.username, groups: &session.user.groups };
        !matches!(
            provider.rules.evaluate(&facts, Some(&view)),
            RuleMatch::Matched { outcome: RuleOutcome::TwoFactor, .. }
        )
    }

    async fn policy_user(&self, user: &User) -> Result<Arc<PolicyUser>> {
        self.users.policy_user(user).await
    }

    async fn user(&self, id: Uuid) -> Result<Option<Arc<User>>> {
        self.users.user(id).await
    }

    /// The JWT cached for (`session`, its key hash; `provider`) if it was made from `fingerprint` (the
    /// identity it carries) and more than half of its lifetime remains.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// A signed state binding the return URL (already checked safe) and the provider.
    pub fn seal_state(&self, provider: &ProxyProvider, rd: &Url) -> String {
        let state =
            LoginState { rd: rd.to_string(), provider: provider.id, exp: self.now().timestamp() + STATE_TTL_SECS };
        // Serialising a struct of strings and numbers cannot fail.
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&state).unwrap_or_default());
        self.state_key.seal(&body)
    }

    /// The state, if its signature holds and it has not expired.
    pub fn open_state(&self, sealed: &str) -> Option<LoginState> {
        let body = self.state_key.unseal(sealed)?;
        let state: LoginState = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).ok()?).ok()?;
        (state.exp > self.now().timestamp()).then_some(state)
    }

    fn cipher(&self) -> Result<LessSafeKey> {
        let unbound = UnboundKey::new(&AES_256_GCM, self.encryption.bytes())
            .map_err(|_| CoreError::Internal("bad encryption key".into()))?;
        Ok(LessSafeKey::new(unbound))
    }

    /// A one-time code carrying the session from the login host to the app host. Encrypted,
    /// not just signed: it stands for the session cookie, which must not appear in clear in URLs.
    pub fn seal_handoff(&self, provider: &ProxyProvider, session_cookie: &str) -> Result<String> {
        let h =
            Handoff { s: session_cookie.to_string(), p: provider.id, exp: self.now().timestamp() + HANDOFF_TTL_SECS };
        let mut buf = serde_json::to_vec(&h).map_err(|e| CoreError::Internal(e.to_string()))?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| CoreError::Internal("no randomness".into()))?;
        self.cipher()?
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(HANDOFF_AAD), &mut buf)
            .map_err(|_| CoreError::Internal("could not seal the hand-off".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(URL_SAFE_NO_PAD.encode(out))
    }

    /// The session cookie value a hand-off code carries, once, for `provider`, before it expires.
    pub fn open_handoff(&self, provider: &ProxyProvider, code: &str) -> Option<String> {
        let raw = URL_SAFE_NO_PAD.decode(code).ok()?;
        if raw.len() <= NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        let mut buf = sealed.to_vec();
        let plain = self
            .cipher()
            .ok()?
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(HANDOFF_AAD), &mut buf)
            .ok()?;
        let h: Handoff = serde_json::from_slice(plain).ok()?;
        if h.p != provider.id || h.exp <= self.now().timestamp() {
            return None;
        }
        let id = crate::keys::hash_secret(code);
        if self.used.contains_key(&id) {
            return None;
        }
        self.used.insert(id, ());
        Some(h.s)
    }
}

/// Why a verified credential may not be used for this provider's application, if it may not.
fn credential_refusal(provider: &ProxyProvider, c: &CredentialIdentity) -> Option<String> {
    match &c.kind {
        CredentialKind::AppPassword { name, applications: Some(apps), .. } if !apps.contains(&provider.app.id) => {
            Some(format!("The app password '{name}' is not valid for {}.", provider.app.name))
        }
        CredentialKind::AccessToken { client_id, provider: issuer }
            if !provider.jwt_federation_providers.iter().any(|p| p == client_id || p == issuer) =>
        {
            Some(format!("Access tokens of '{issuer}' are not accepted by {}.", provider.app.name))
        }
        _ => None,
    }
}

/// A stored proxy provider config (as blueprints write it) in the shape the hot path uses.
fn parse_provider(config: &Value, id: Uuid, name: &str, app: Application) -> Result<ProxyProvider> {
    let s = |k: &str| config.get(k).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
    let mode = match s("mode").unwrap_or("forward_single") {
        "forward_single" => ProxyMode::Single,
        "forward_domain" => ProxyMode::Domain,
        other => return Err(CoreError::invalid(format!("mode '{other}' is not served by forward auth"))),
    };
    let external_host = s("external_host")
        .and_then(|h| Url::parse(h).ok())
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| CoreError::invalid("external_host is missing or not an http(s) URL"))?;
    let cookie_domain = s("cookie_domain").map(|d| d.trim_start_matches('.').to_ascii_lowercase());
    if mode == ProxyMode::Domain && cookie_domain.is_none() {
        return Err(CoreError::invalid("forward_domain needs a cookie_domain"));
    }
    let mut skip_paths = Vec::new();
    for line in s("skip_path_regex").unwrap_or("").lines().map(str::trim).filter(|l| !l.is_empty()) {
        skip_paths.push(Regex::new(line).map_err(|e| CoreError::invalid(format!("skip_path_regex '{line}': {e}")))?);
    }
    let token_validity = config.get("access_token_validity").and_then(Value::as_i64).filter(|v| *v > 0).unwrap_or(300);
    let rules = AccessRules::from_config(config)?;
    let stepup_flow = s("stepup_flow").unwrap_or(DEFAULT_STEPUP_FLOW).to_string();
    let intercept_header_auth = config.get("intercept_header_auth").and_then(Value::as_bool).unwrap_or(true);
    let jwt_federation_providers = config
        .get("jwt_federation_providers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect())
        .unwrap_or_default();
    Ok(ProxyProvider {
        id,
        name: name.to_string(),
        mode,
        external_host,
        cookie_domain,
        skip_paths,
        token_validity,
        app,
        outpost: "embedded".into(),
        rules,
        stepup_flow,
        intercept_header_auth,
        jwt_federation_providers,
    })
}

/// `s` in ASCII lower case, copied only when it is not already (URL hosts are): the rules are
/// checked on every forward-auth request.
fn lower(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// `s` in ASCII upper case, copied only when it is not already (methods usually are).
fn upper(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_lowercase()) {
        Cow::Owned(s.to_ascii_uppercase())
    } else {
        Cow::Borrowed(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn app() -> Application {
        Application {
            id: Uuid::nil(),
            name: "a".into(),
            slug: "a".into(),
            provider_id: None,
            launch_url: None,
            icon: None,
            description: String::new(),
            group: None,
            policy_engine_mode: "any".into(),
            open_in_new_tab: false,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn redirect_targets_stay_inside_the_provider() {
        let single =
            parse_provider(&json!({"external_host": "http://app.test:8080"}), Uuid::nil(), "s", app()).unwrap();
        assert!(single.safe_target("http://app.test:8080/x?y").is_some());
        for bad in ["http://evil.test/", "http://app.test:9090/", "http://u@app.test:8080/", "javascript:x", "/rel"] {
            assert!(single.safe_target(bad).is_none(), "{bad}");
        }
        assert_eq!(single.target_or_home(Some("http://evil.test/")).as_str(), "http://app.test:8080/");
        let domain = parse_provider(
            &json!({"mode": "forward_domain", "external_host": "https://auth.example.test", "cookie_domain": ".Example.test", "skip_path_regex": "^/api/health$\n\n^/public/"}),
            Uuid::nil(),
            "d",
            app(),
        )
        .unwrap();
        assert!(domain.safe_target("https://x.example.test/").is_some());
        assert!(domain.safe_target("https://example.test/").is_some());
        assert!(domain.safe_target("https://badexample.test/").is_none());
        assert!(domain.safe_target("https://example.test.evil/").is_none());
        assert!(domain.skips("/api/health") && domain.skips("/public/a") && !domain.skips("/api/healthz"));
        assert!(domain.shares_cookie_with("auth.example.test:443") && domain.shares_cookie_with("example.test"));
        assert!(!domain.shares_cookie_with("auth.other.test") && !single.shares_cookie_with("app.test:8080"));
    }
}
