//! OAuth 2 / OpenID Connect provider: clients (oauth2 providers attached to applications),
//! authorization codes with PKCE, ID and access tokens (JWTs), refresh tokens with rotation
//! and family revocation, userinfo, introspection and revocation. The web layer only parses
//! requests and renders the answers in the shapes RFC 6749 and OIDC prescribe.
//!
//! Codes and refresh tokens are kept hashed in the token table (kinds `oauth_code`,
//! `oauth_refresh`) with the grant as JSON in `description`. Their secrets start with the
//! user's id (`<user>.<random>`), so a replayed, already used secret can still be recognised
//! among the user's tokens and its whole family revoked.

pub mod assertion;
pub mod backchannel;
pub mod claims;
pub mod device;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::Duration;
use jsonwebtoken::Algorithm;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::clock::Clock;
use crate::error::{CoreError, Result};
use crate::keys::{hash_secret, random_secret};
use crate::model::{Application, Change, FlowStateRecord, Provider, Token, TokenKind, User};
use crate::signing::Signing;
use crate::store::Store;
use crate::user_cache::UserCache;
use assertion::{AssertionError, AuthMethod, ClientJwks};

/// Codes live this long.
pub const CODE_TTL_SECS: i64 = 60;
/// Scopes a provider offers when its configuration names none.
pub const DEFAULT_SCOPES: &[&str] = &["openid", "profile", "email", "groups", "offline_access"];
/// Claims the userinfo endpoint and ID tokens may carry.
pub const CLAIMS: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "auth_time",
    "nonce",
    "acr",
    "amr",
    "at_hash",
    "sid",
    "name",
    "preferred_username",
    "nickname",
    "email",
    "email_verified",
    "groups",
];
pub const ACR: &str = "goauthentik.io/providers/oauth2/default";

/// An error in the protocol's own vocabulary (`invalid_grant`…), with its HTTP status.
#[derive(Debug, Clone, PartialEq)]
pub struct OAuthError {
    pub error: &'static str,
    pub description: String,
    pub status: u16,
}

impl OAuthError {
    pub fn new(error: &'static str, description: impl Into<String>) -> Self {
        let status = if error == "invalid_client" { 401 } else { 400 };
        OAuthError { error, description: description.into(), status }
    }
    pub fn invalid_grant(d: impl Into<String>) -> Self {
        Self::new("invalid_grant", d)
    }
    pub fn invalid_request(d: impl Into<String>) -> Self {
        Self::new("invalid_request", d)
    }
    pub fn invalid_client() -> Self {
        Self::new("invalid_client", "Client authentication failed.")
    }
}

/// Internal failures (store down…) are not protocol errors; they keep their own mapping.
#[derive(Debug)]
pub enum GrantError {
    OAuth(OAuthError),
    Core(CoreError),
}

impl From<OAuthError> for GrantError {
    fn from(e: OAuthError) -> Self {
        GrantError::OAuth(e)
    }
}
impl From<CoreError> for GrantError {
    fn from(e: CoreError) -> Self {
        GrantError::Core(e)
    }
}

pub type GrantResult<T> = std::result::Result<T, GrantError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientType {
    Confidential,
    Public,
}

/// An oauth2 provider with the application using it, as the endpoints need it.
#[derive(Debug, Clone)]
pub struct Client {
    pub provider: Provider,
    pub app: Application,
    pub client_id: String,
    pub client_type: ClientType,
    client_secret: Option<String>,
    pub redirect_uris: Vec<String>,
    pub alg: Algorithm,
    pub sub_mode: String,
    pub scopes: Vec<String>,
    pub access_token_validity: i64,
    pub refresh_token_validity: i64,
    /// Extra claims from CEL expressions.
    pub claim_mappings: Vec<claims::ClaimMapping>,
    /// Where back-channel logout tokens are POSTed (OIDC Back-Channel Logout 1.0).
    pub backchannel_logout_uri: Option<String>,
    /// Public keys for `private_key_jwt` client authentication.
    pub jwks: Option<ClientJwks>,
    /// The one way this client may authenticate; unset: its secret (Basic or in the body),
    /// or `private_key_jwt` when it has keys.
    pub auth_method: Option<AuthMethod>,
}

impl Client {
    fn parse(provider: Provider, app: Application) -> Option<Client> {
        let c = &provider.config;
        let s = |k: &str| c.get(k).and_then(Value::as_str).map(str::to_string).filter(|v| !v.is_empty());
        let list = |k: &str| -> Option<Vec<String>> {
            c.get(k).and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect())
        };
        let client_id = s("client_id")?;
        let client_type =
            if s("client_type").as_deref() == Some("public") { ClientType::Public } else { ClientType::Confidential };
        let alg = s("signing_alg").as_deref().and_then(crate::signing::parse_alg).unwrap_or(Algorithm::RS256);
        let scopes = list("scopes")
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect());
        let claim_mappings = claims::load(&provider.name, c);
        // Validated on write; a setting that no longer parses (hand-edited database) leaves the
        // client without keys rather than without a provider.
        let jwks = c.get("jwks").filter(|v| !v.is_null()).and_then(|v| match assertion::parse_jwks(v) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!(provider = %provider.name, error = %e, "the provider's jwks is unusable; private_key_jwt is off");
                None
            }
        });
        let auth_method = s("token_endpoint_auth_method").as_deref().and_then(AuthMethod::parse);
        Some(Client {
            jwks,
            auth_method,
            claim_mappings,
            backchannel_logout_uri: s("backchannel_logout_uri"),
            client_id,
            client_type,
            client_secret: s("client_secret"),
            redirect_uris: list("redirect_uris").unwrap_or_default(),
            alg,
            sub_mode: s("sub_mode").unwrap_or_else(|| "user_id".into()),
            scopes,
            access_token_validity: c
                .get("access_token_validity")
                .and_then(Value::as_i64)
                .filter(|v| *v > 0)
                .unwrap_or(300),
            refresh_token_validity: c
                .get("refresh_token_validity")
                .and_then(Value::as_i64)
                .filter(|v| *v > 0)
                .unwrap_or(30 * 86400),
            provider,
            app,
        })
    }

    /// Exact match against the registered redirect URIs.
    pub fn redirect_allowed(&self, uri: &str) -> bool {
        self.redirect_uris.iter().any(|r| r == uri)
    }

    /// Whether `secret` is this client's secret (constant time). Public clients have none.
    pub fn secret_matches(&self, secret: &str) -> bool {
        match &self.client_secret {
            Some(s) => s.as_bytes().ct_eq(secret.as_bytes()).into(),
            None => false,
        }
    }

    /// The scopes asked for that this client offers, in the order asked, without repeats.
    pub fn grantable(&self, requested: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in requested.split_whitespace() {
            if self.scopes.iter().any(|o| o == s) && !out.iter().any(|o| o == s) {
                out.push(s.to_string());
            }
        }
        out
    }

    pub fn issuer(&self, origin: &str) -> String {
        format!("{}/application/o/{}/", origin.trim_end_matches('/'), self.app.slug)
    }

    pub fn alg_name(&self) -> &'static str {
        crate::signing::alg_name(self.alg)
    }
}

/// What a code or refresh token stands for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Grant {
    pub client_id: String,
    pub scopes: Vec<String>,
    #[serde(default)]
    pub nonce: Option<String>,
    #[serde(default)]
    pub redirect_uri: Option<String>,
    #[serde(default)]
    pub code_challenge: Option<String>,
    /// The login session's public id (`sid`).
    #[serde(default)]
    pub sid: Option<String>,
    pub auth_time: i64,
    #[serde(default)]
    pub amr: Vec<String>,
    /// Refresh tokens issued from one code share a family; reuse of a rotated one ends it.
    #[serde(default)]
    pub family: Option<Uuid>,
    /// The issuer the grant was made under (origin-dependent).
    pub issuer: String,
}

/// The token endpoint's success answer.
#[derive(Debug, Clone, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    pub scope: String,
    /// Whom the tokens were issued for (none for client credentials), for the audit log.
    #[serde(skip)]
    pub user: Option<(Uuid, String)>,
}

/// The client credentials a back-channel request carries, as the web layer found them.
#[derive(Debug, Default)]
pub struct ClientCredentials<'a> {
    /// HTTP Basic, decoded: the client id and its secret.
    pub basic: Option<(String, Option<String>)>,
    pub client_id: Option<&'a str>,
    pub client_secret: Option<&'a str>,
    pub client_assertion_type: Option<&'a str>,
    pub client_assertion: Option<&'a str>,
}

/// Every oauth2 client; each shared, so a request holds its client without copying it.
type Clients = Arc<Vec<Arc<Client>>>;

#[derive(Clone)]
pub struct OAuth {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    signing: Signing,
    /// The oauth2 clients, loaded once and dropped on `Change::Config`.
    clients: Arc<RwLock<Option<Clients>>>,
    generation: Arc<AtomicU64>,
    logout_delivery: Arc<std::sync::OnceLock<Arc<dyn backchannel::LogoutDelivery>>>,
    users: UserCache,
}

/// `base64url(sha256(verifier))`, the S256 transformation (RFC 7636).
pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn valid_pkce_value(v: &str) -> bool {
    (43..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// Checks an authorization request's `code_challenge`/`code_challenge_method`.
pub fn check_pkce(
    client: &Client,
    challenge: Option<&str>,
    method: Option<&str>,
) -> std::result::Result<(), OAuthError> {
    match (challenge, method) {
        (None, None) if client.client_type == ClientType::Public => {
            Err(OAuthError::invalid_request("A public client must use PKCE (code_challenge with S256)."))
        }
        (None, None) => Ok(()),
        (None, Some(_)) => Err(OAuthError::invalid_request("code_challenge_method without code_challenge.")),
        (Some(c), Some("S256")) if valid_pkce_value(c) => Ok(()),
        (Some(_), Some("S256")) => Err(OAuthError::invalid_request("The code_challenge is malformed.")),
        (Some(_), _) => {
            Err(OAuthError::invalid_request("Only the S256 code_challenge_method is supported; plain is refused."))
        }
    }
}

/// `at_hash`: the left half of SHA-256 of the access token, base64url.
fn at_hash(access_token: &str) -> String {
    let d = Sha256::digest(access_token.as_bytes());
    URL_SAFE_NO_PAD.encode(&d[..16])
}

impl OAuth {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, signing: Signing, users: UserCache) -> Self {
        OAuth {
            users,
            store,
            clock,
            signing,
            clients: Arc::new(RwLock::new(None)),
            generation: Arc::new(AtomicU64::new(0)),
            logout_delivery: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// Applies a change made by any process to the client cache.
    pub fn apply_change(&self, change: &Change) {
        if *change == Change::Config {
            self.invalidate();
        }
    }

    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut c) = self.clients.write() {
            *c = None;
        }
    }

    pub fn signing(&self) -> &Signing {
        &self.signing
    }

    async fn clients(&self) -> Result<Clients> {
        if let Some(c) = self.clients.read().ok().and_then(|c| c.clone()) {
            return Ok(c);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let loaded = Arc::new(self.load_clients().await?);
        if self.generation.load(Ordering::Acquire) == generation {
            if let Ok(mut c) = self.clients.write() {
                *c = Some(Arc::clone(&loaded));
            }
        }
        Ok(loaded)
    }

    async fn load_clients(&self) -> Result<Vec<Arc<Client>>> {
        let providers = self.store.list_providers().await.map_err(CoreError::from_store)?;
        let apps = self.store.list_applications().await.map_err(CoreError::from_store)?;
        Ok(providers
            .into_iter()
            .filter(|p| p.kind == "oauth2")
            .filter_map(|p| {
                let app = apps.iter().find(|a| a.provider_id == Some(p.id))?.clone();
                Client::parse(p, app).map(Arc::new)
            })
            .collect())
    }

    pub async fn client_by_id(&self, client_id: &str) -> Result<Option<Arc<Client>>> {
        Ok(self.clients().await?.iter().find(|c| c.client_id == client_id).cloned())
    }

    pub async fn client_by_slug(&self, slug: &str) -> Result<Option<Arc<Client>>> {
        Ok(self.clients().await?.iter().find(|c| c.app.slug == slug).cloned())
    }

    /// The client a back-channel request (token, introspection, revocation, device
    /// authorization) authenticates as, by exactly one method: HTTP Basic, `client_secret` in
    /// the body, a `private_key_jwt` assertion, or (public clients) none. `origin` and
    /// `endpoint` (`token`, `introspect`…) give the URLs an assertion may name as its audience.
    pub async fn authenticate_client(
        &self,
        creds: &ClientCredentials<'_>,
        origin: &str,
        endpoint: &str,
    ) -> GrantResult<Arc<Client>> {
        if creds.client_assertion.is_some() || creds.client_assertion_type.is_some() {
            return self.authenticate_assertion(creds, origin, endpoint).await;
        }
        let (id, secret, method) = match &creds.basic {
            Some((id, secret)) => {
                if creds.client_secret.is_some() {
                    return Err(OAuthError::invalid_request("Use one client authentication method, not two.").into());
                }
                if creds.client_id.is_some_and(|c| c != id) {
                    return Err(OAuthError::invalid_request("client_id differs from the authenticated client.").into());
                }
                (id.as_str(), secret.as_deref(), AuthMethod::ClientSecretBasic)
            }
            None => {
                let id = creds.client_id.ok_or_else(OAuthError::invalid_client)?;
                let method =
                    if creds.client_secret.is_some() { AuthMethod::ClientSecretPost } else { AuthMethod::None };
                (id, creds.client_secret, method)
            }
        };
        let client = self.client_by_id(id).await?.ok_or_else(OAuthError::invalid_client)?;
        // The method is checked first so that the log says why a client set to one method is
        // refused when it tries another.
        if client.auth_method.is_some_and(|only| only != method) {
            tracing::warn!(
                client = %client.client_id,
                used = method.as_str(),
                configured = client.auth_method.map(AuthMethod::as_str).unwrap_or("-"),
                "client authentication refused: not the client's token_endpoint_auth_method"
            );
            return Err(OAuthError::invalid_client().into());
        }
        // `secret: None` is only good for a public client.
        let ok = match (client.client_type, secret) {
            (ClientType::Public, None) => true,
            (ClientType::Public, Some(_)) => false,
            (ClientType::Confidential, Some(s)) => client.secret_matches(s),
            (ClientType::Confidential, None) => false,
        };
        if ok {
            Ok(client)
        } else {
            Err(OAuthError::invalid_client().into())
        }
    }

    async fn authenticate_assertion(
        &self,
        creds: &ClientCredentials<'_>,
        origin: &str,
        endpoint: &str,
    ) -> GrantResult<Arc<Client>> {
        if creds.basic.is_some() || creds.client_secret.is_some() {
            return Err(OAuthError::invalid_request("Use one client authentication method, not two.").into());
        }
        if creds.client_assertion_type != Some(assertion::ASSERTION_TYPE) {
            return Err(OAuthError::invalid_request(format!(
                "client_assertion_type must be {}.",
                assertion::ASSERTION_TYPE
            ))
            .into());
        }
        let Some(jwt) = creds.client_assertion else {
            return Err(OAuthError::invalid_request("The client_assertion parameter is missing.").into());
        };
        let claimed = creds.client_id.map(String::from).or_else(|| assertion::claimed_client(jwt));
        let refused = |client: &str, reason: &dyn std::fmt::Display| {
            tracing::warn!(client = %client.chars().take(100).collect::<String>(), reason = %reason, "private_key_jwt client authentication refused");
            GrantError::from(OAuthError::invalid_client())
        };
        let Some(id) = claimed else { return Err(refused("-", &"the assertion names no client")) };
        let Some(client) = self.client_by_id(&id).await? else {
            return Err(refused(&id, &"no such client"));
        };
        if client.auth_method.is_some_and(|m| m != AuthMethod::PrivateKeyJwt) {
            return Err(refused(&id, &"the client's token_endpoint_auth_method is not private_key_jwt"));
        }
        let now = self.clock.now();
        let o = origin.trim_end_matches('/');
        let audiences =
            [format!("{o}/application/o/token/"), client.issuer(o), format!("{o}/application/o/{endpoint}/")];
        let checked = client
            .jwks
            .as_ref()
            .ok_or(AssertionError::NoJwks)
            .and_then(|keys| keys.verify(jwt))
            .and_then(|claims| assertion::check_claims(&claims, &client.client_id, &audiences, now.timestamp()))
            .map_err(|e| refused(&id, &e))?;
        // The jti is single-use until exp, across every instance sharing the store: the first
        // insert of its marker wins.
        let marker = hex::encode(Sha256::digest(format!("{}\n{}", client.client_id, checked.jti).as_bytes()));
        let record = FlowStateRecord {
            key: format!("client_assertion:{marker}"),
            data: json!({ "client_id": client.client_id }),
            expires_at: chrono::DateTime::from_timestamp(checked.exp, 0).unwrap_or(now),
        };
        if !self.store.insert_flow_state(&record, now).await.map_err(CoreError::from_store)? {
            return Err(refused(&id, &AssertionError::Replayed));
        }
        Ok(client)
    }

    pub async fn authorization_flow_slug(&self, client: &Client) -> Result<Option<String>> {
        let Some(id) = client.provider.authorization_flow_id else { return Ok(None) };
        let flows = self.store.list_flows().await.map_err(CoreError::from_store)?;
        Ok(flows.into_iter().find(|f| f.id == id).map(|f| f.slug))
    }

    async fn new_secret_token(
        &self,
        kind: TokenKind,
        user_id: Uuid,
        grant: &Grant,
        valid_for: Duration,
    ) -> Result<(String, Token)> {
        let secret = format!("{}.{}", user_id.simple(), random_secret(32));
        let now = self.clock.now();
        let token = Token {
            id: Uuid::now_v7(),
            secret_hash: hash_secret(&secret),
            kind,
            user_id: Some(user_id),
            description: serde_json::to_string(grant).map_err(|e| CoreError::Internal(e.to_string()))?,
            created_at: now,
            expires_at: Some(now + valid_for),
            used_at: None,
        };
        self.store.create_token(&token).await.map_err(CoreError::from_store)?;
        Ok((secret, token))
    }

    /// A fresh one-time code for `user` (who passed the authorization flow and policies).
    pub async fn issue_code(&self, user_id: Uuid, grant: &Grant) -> Result<String> {
        Ok(self.new_secret_token(TokenKind::OauthCode, user_id, grant, Duration::seconds(CODE_TTL_SECS)).await?.0)
    }

    /// A token of `kind` with this secret among its user's tokens, used or not.
    async fn find_any(&self, kind: TokenKind, secret: &str) -> Result<Option<Token>> {
        self.store.find_token_any(kind, &hash_secret(secret)).await.map_err(CoreError::from_store)
    }

    /// Ends every refresh token of a family.
    pub async fn revoke_family(&self, user_id: Uuid, family: Uuid) -> Result<()> {
        let tokens = self.store.list_tokens(Some(user_id)).await.map_err(CoreError::from_store)?;
        for t in tokens.into_iter().filter(|t| t.kind == TokenKind::OauthRefresh) {
            let g: Option<Grant> = serde_json::from_str(&t.description).ok();
            if g.and_then(|g| g.family) == Some(family) {
                self.store.delete_token(t.id).await.map_err(CoreError::from_store)?;
            }
        }
        Ok(())
    }

    /// `authorization_code` grant.
    pub async fn exchange_code(
        &self,
        client: &Client,
        code: &str,
        redirect_uri: Option<&str>,
        verifier: Option<&str>,
    ) -> GrantResult<TokenResponse> {
        if code.is_empty() || code.len() > 200 {
            return Err(OAuthError::invalid_grant("The code is invalid.").into());
        }
        let now = self.clock.now();
        let hash = hash_secret(code);
        let found = self.store.find_token(TokenKind::OauthCode, &hash, now).await.map_err(CoreError::from_store)?;
        let Some(token) = found else {
            // A code used twice: whatever was issued from it is revoked.
            if let Some(used) = self.find_any(TokenKind::OauthCode, code).await? {
                if used.used_at.is_some() {
                    if let Some(user) = used.user_id {
                        self.revoke_family(user, used.id).await?;
                    }
                    tracing::warn!(client = %client.client_id, "an authorization code was used twice; its tokens are revoked");
                }
            }
            return Err(OAuthError::invalid_grant("The code is invalid, expired or already used.").into());
        };
        let grant: Grant =
            serde_json::from_str(&token.description).map_err(|_| OAuthError::invalid_grant("The code is invalid."))?;
        if grant.client_id != client.client_id {
            return Err(OAuthError::invalid_grant("The code was issued to another client.").into());
        }
        if grant.redirect_uri.as_deref() != redirect_uri {
            return Err(OAuthError::invalid_grant("redirect_uri does not match the authorization request.").into());
        }
        match (&grant.code_challenge, verifier) {
            (Some(challenge), Some(v)) => {
                if !valid_pkce_value(v) || s256(v).as_bytes().ct_eq(challenge.as_bytes()).unwrap_u8() == 0 {
                    return Err(
                        OAuthError::invalid_grant("The code_verifier does not match the code_challenge.").into()
                    );
                }
            }
            (Some(_), None) => return Err(OAuthError::invalid_grant("code_verifier is missing.").into()),
            (None, Some(_)) => {
                return Err(OAuthError::invalid_grant("code_verifier given, but no code_challenge was.").into())
            }
            (None, None) => {}
        }
        if !self.store.consume_token(token.id, now).await.map_err(CoreError::from_store)? {
            return Err(OAuthError::invalid_grant("The code is invalid, expired or already used.").into());
        }
        let user_id = token.user_id.ok_or_else(|| OAuthError::invalid_grant("The code is invalid."))?;
        let user = self.active_user(user_id).await?;
        let mut grant = grant;
        grant.family = Some(token.id);
        self.tokens_for(client, &user, &grant, true).await
    }

    /// The user from the shared cache (kept fresh by the change feed): a token request costs
    /// no user read.
    async fn active_user(&self, id: Uuid) -> GrantResult<Arc<User>> {
        match self.users.user(id).await? {
            Some(u) if u.is_active => Ok(u),
            _ => Err(OAuthError::invalid_grant("The user is no longer active.").into()),
        }
    }

    /// `refresh_token` grant: rotates the token; a rotated token presented again ends its family.
    pub async fn refresh(&self, client: &Client, secret: &str, scope: Option<&str>) -> GrantResult<TokenResponse> {
        let bad = || OAuthError::invalid_grant("The refresh token is invalid, expired or revoked.");
        if secret.is_empty() || secret.len() > 200 {
            return Err(bad().into());
        }
        let now = self.clock.now();
        let found = self
            .store
            .find_token(TokenKind::OauthRefresh, &hash_secret(secret), now)
            .await
            .map_err(CoreError::from_store)?;
        let Some(token) = found else {
            if let Some(used) = self.find_any(TokenKind::OauthRefresh, secret).await? {
                if used.used_at.is_some() {
                    let g: Option<Grant> = serde_json::from_str(&used.description).ok();
                    if let (Some(family), Some(user)) = (g.and_then(|g| g.family), used.user_id) {
                        self.revoke_family(user, family).await?;
                        tracing::warn!(client = %client.client_id, "a rotated refresh token was reused; its family is revoked");
                    }
                }
            }
            return Err(bad().into());
        };
        let mut grant: Grant = serde_json::from_str(&token.description).map_err(|_| bad())?;
        if grant.client_id != client.client_id {
            return Err(bad().into());
        }
        if let Some(scope) = scope {
            let asked: Vec<String> = scope.split_whitespace().map(String::from).collect();
            if asked.iter().any(|s| !grant.scopes.contains(s)) {
                return Err(OAuthError::new("invalid_scope", "A refresh cannot widen the scopes.").into());
            }
            grant.scopes = asked;
        }
        if !self.store.consume_token(token.id, now).await.map_err(CoreError::from_store)? {
            // Lost a race with another use of the same token: that is reuse too.
            if let (Some(family), Some(user)) = (grant.family, token.user_id) {
                self.revoke_family(user, family).await?;
            }
            return Err(bad().into());
        }
        let user = self.active_user(token.user_id.ok_or_else(bad)?).await?;
        self.tokens_for(client, &user, &grant, grant.scopes.iter().any(|s| s == "openid")).await
    }

    /// `client_credentials` grant: a confidential client acting for itself. The access token's
    /// subject is the client; there is no ID token and no refresh token.
    pub async fn client_credentials(
        &self,
        client: &Client,
        scope: Option<&str>,
        issuer: &str,
    ) -> GrantResult<TokenResponse> {
        if client.client_type != ClientType::Confidential {
            return Err(OAuthError::new(
                "unauthorized_client",
                "Only confidential clients may use client_credentials.",
            )
            .into());
        }
        let scopes: Vec<String> =
            client.grantable(scope.unwrap_or("")).into_iter().filter(|s| s != "offline_access").collect();
        let now = self.clock.now().timestamp();
        let claims = json!({
            "iss": issuer,
            "sub": client.client_id,
            "aud": client.client_id,
            "azp": client.client_id,
            "client_id": client.client_id,
            "iat": now,
            "exp": now + client.access_token_validity,
            "jti": Uuid::new_v4().simple().to_string(),
            "scope": scopes.join(" "),
        });
        let access_token = self.signing.sign_with(client.alg, &claims).await?;
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: client.access_token_validity,
            id_token: None,
            refresh_token: None,
            scope: scopes.join(" "),
            user: None,
        })
    }

    fn subject(&self, client: &Client, user: &User) -> String {
        match client.sub_mode.as_str() {
            "hashed_user_id" => hex::encode(Sha256::digest(format!("{}:{}", client.provider.id, user.id).as_bytes())),
            "user_username" => user.username.clone(),
            "user_email" => user.email.clone().unwrap_or_else(|| user.id.to_string()),
            "user_upn" => user
                .attributes
                .get("upn")
                .and_then(Value::as_str)
                .map(String::from)
                .or_else(|| user.email.clone())
                .unwrap_or_else(|| user.id.to_string()),
            _ => user.id.to_string(),
        }
    }

    /// The claims `scopes` release about `user`.
    pub async fn user_claims(&self, client: &Client, user: &User, scopes: &[String]) -> Result<Map<String, Value>> {
        let mut c = Map::new();
        c.insert("sub".into(), json!(self.subject(client, user)));
        let has = |s: &str| scopes.iter().any(|x| x == s);
        if has("profile") {
            c.insert("name".into(), json!(user.name));
            c.insert("preferred_username".into(), json!(user.username));
            c.insert("nickname".into(), json!(user.username));
        }
        if has("email") {
            c.insert("email".into(), json!(user.email));
            let verified =
                user.attributes.get("email_verified").and_then(Value::as_bool).unwrap_or(user.email.is_some());
            c.insert("email_verified".into(), json!(verified));
        }
        let mapped = claims::any_applies(&client.claim_mappings, scopes);
        if has("groups") || mapped {
            // Effective groups from the shared cache: userinfo makes no store query.
            let view = self.users.policy_user(user).await?;
            if has("groups") {
                c.insert("groups".into(), json!(view.groups));
            }
            if mapped {
                claims::apply(&client.claim_mappings, &client.provider.name, &client.client_id, &view, scopes, &mut c);
            }
        }
        Ok(c)
    }

    async fn tokens_for(
        &self,
        client: &Client,
        user: &User,
        grant: &Grant,
        id_token: bool,
    ) -> GrantResult<TokenResponse> {
        let now = self.clock.now().timestamp();
        let exp = now + client.access_token_validity;
        let claims = self.user_claims(client, user, &grant.scopes).await?;
        let mut access = claims.clone();
        access.insert("iss".into(), json!(grant.issuer));
        access.insert("aud".into(), json!(client.client_id));
        access.insert("azp".into(), json!(client.client_id));
        access.insert("client_id".into(), json!(client.client_id));
        access.insert("iat".into(), json!(now));
        access.insert("exp".into(), json!(exp));
        access.insert("jti".into(), json!(Uuid::new_v4().simple().to_string()));
        access.insert("scope".into(), json!(grant.scopes.join(" ")));
        access.insert("uid".into(), json!(user.id));
        if let Some(sid) = &grant.sid {
            access.insert("sid".into(), json!(sid));
        }
        let access_token = self.signing.sign_with(client.alg, &Value::Object(access)).await?;
        let id_token = if id_token && grant.scopes.iter().any(|s| s == "openid") {
            let mut c = claims;
            c.insert("iss".into(), json!(grant.issuer));
            c.insert("aud".into(), json!(client.client_id));
            c.insert("azp".into(), json!(client.client_id));
            c.insert("iat".into(), json!(now));
            c.insert("exp".into(), json!(exp));
            c.insert("auth_time".into(), json!(grant.auth_time));
            c.insert("acr".into(), json!(ACR));
            c.insert("amr".into(), json!(grant.amr));
            c.insert("at_hash".into(), json!(at_hash(&access_token)));
            if let Some(n) = &grant.nonce {
                c.insert("nonce".into(), json!(n));
            }
            if let Some(sid) = &grant.sid {
                c.insert("sid".into(), json!(sid));
            }
            Some(self.signing.sign_with(client.alg, &Value::Object(c)).await?)
        } else {
            None
        };
        let refresh_token = if grant.scopes.iter().any(|s| s == "offline_access") {
            let validity = Duration::seconds(client.refresh_token_validity);
            Some(self.new_secret_token(TokenKind::OauthRefresh, user.id, grant, validity).await?.0)
        } else {
            None
        };
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: client.access_token_validity,
            id_token,
            refresh_token,
            scope: grant.scopes.join(" "),
            user: Some((user.id, user.username.clone())),
        })
    }

    /// The claims of a valid access token (signature, expiry, active user, existing client).
    /// The user is `None` for a client-credentials token.
    pub async fn check_access_token(&self, token: &str) -> Result<Option<(Arc<Client>, Option<Arc<User>>, Value)>> {
        let Some(claims) = self.signing.verify(token).await else { return Ok(None) };
        if claims.get("scope").is_none() {
            // Not an access token (an ID token or a forward-auth JWT).
            return Ok(None);
        }
        let Some(client_id) = claims.get("client_id").and_then(Value::as_str) else { return Ok(None) };
        let Some(client) = self.client_by_id(client_id).await? else { return Ok(None) };
        let Some(uid) = claims.get("uid").and_then(Value::as_str) else {
            return Ok(Some((client, None, claims)));
        };
        let Ok(uid) = Uuid::parse_str(uid) else { return Ok(None) };
        match self.users.user(uid).await? {
            Some(u) if u.is_active => Ok(Some((client, Some(u), claims))),
            _ => Ok(None),
        }
    }

    /// Userinfo: the claims the token's scopes release.
    pub async fn userinfo(&self, token: &str) -> Result<Option<Map<String, Value>>> {
        let Some((client, user, claims)) = self.check_access_token(token).await? else { return Ok(None) };
        let Some(user) = user else {
            let mut m = Map::new();
            m.insert("sub".into(), json!(client.client_id));
            return Ok(Some(m));
        };
        let scopes: Vec<String> =
            claims.get("scope").and_then(Value::as_str).unwrap_or("").split_whitespace().map(String::from).collect();
        Ok(Some(self.user_claims(&client, &user, &scopes).await?))
    }

    /// RFC 7662: what `client` may learn about `token` (only its own tokens are active).
    pub async fn introspect(&self, client: &Client, token: &str) -> Result<Value> {
        if let Some((owner, _user, claims)) = self.check_access_token(token).await? {
            if owner.client_id == client.client_id {
                let mut out = claims.as_object().cloned().unwrap_or_default();
                out.insert("active".into(), json!(true));
                out.insert("token_type".into(), json!("Bearer"));
                return Ok(Value::Object(out));
            }
        }
        let now = self.clock.now();
        if let Some(t) = self
            .store
            .find_token(TokenKind::OauthRefresh, &hash_secret(token), now)
            .await
            .map_err(CoreError::from_store)?
        {
            if let Ok(g) = serde_json::from_str::<Grant>(&t.description) {
                if g.client_id == client.client_id {
                    return Ok(json!({
                        "active": true,
                        "client_id": g.client_id,
                        "scope": g.scopes.join(" "),
                        "exp": t.expires_at.map(|e| e.timestamp()),
                        "iat": t.created_at.timestamp(),
                        "token_type": "refresh_token",
                    }));
                }
            }
        }
        Ok(json!({ "active": false }))
    }

    /// RFC 7009: ends a refresh token (and its family) of this client. Access tokens are
    /// short-lived JWTs and simply expire. Unknown tokens are not an error.
    pub async fn revoke(&self, client: &Client, token: &str) -> Result<()> {
        let now = self.clock.now();
        let found = self
            .store
            .find_token(TokenKind::OauthRefresh, &hash_secret(token), now)
            .await
            .map_err(CoreError::from_store)?;
        if let Some(t) = found {
            if let Ok(g) = serde_json::from_str::<Grant>(&t.description) {
                if g.client_id == client.client_id {
                    match (g.family, t.user_id) {
                        (Some(f), Some(u)) => self.revoke_family(u, f).await?,
                        _ => self.store.delete_token(t.id).await.map_err(CoreError::from_store)?,
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn client(kind: &str) -> Client {
        let now = Utc::now();
        let provider = Provider {
            id: Uuid::nil(),
            name: "p".into(),
            kind: "oauth2".into(),
            authorization_flow_id: None,
            config: json!({
                "client_id": "c", "client_type": kind, "client_secret": "s3cret",
                "redirect_uris": ["https://app.test/cb"], "scopes": ["openid", "email", "offline_access"],
            }),
            created_at: now,
        };
        let app = Application {
            id: Uuid::nil(),
            name: "a".into(),
            slug: "a".into(),
            provider_id: Some(Uuid::nil()),
            launch_url: None,
            icon: None,
            description: String::new(),
            group: None,
            policy_engine_mode: "any".into(),
            open_in_new_tab: false,
            created_at: now,
        };
        Client::parse(provider, app).unwrap()
    }

    #[test]
    fn pkce_s256_only_and_required_for_public_clients() {
        let public = client("public");
        let confidential = client("confidential");
        let challenge = s256("dBjftJeZ4CVP-mJ92K9fsNwl4tGqgtYCp0TMVFZHsVmhUpgZWk7V6o2");
        assert!(check_pkce(&public, Some(&challenge), Some("S256")).is_ok());
        assert!(check_pkce(&public, None, None).is_err());
        assert!(check_pkce(&confidential, None, None).is_ok());
        assert!(check_pkce(&public, Some(&challenge), Some("plain")).is_err());
        assert!(check_pkce(&public, Some(&challenge), None).is_err(), "no method means plain");
        assert!(check_pkce(&public, Some("short"), Some("S256")).is_err());
        // As Python computes it: base64url(sha256(verifier)) without padding.
        assert_eq!(
            s256("dBjftJeZ4CVP-mJ92K9fsNwl4tGqgtYCp0TMVFZHsVmhUpgZWk7V6o2"),
            "J_Zmf9IngyyAzp-eetBPMK7ZkyRYYSkXBUVB2iaj9aE"
        );
    }

    #[test]
    fn redirects_match_exactly_and_scopes_are_filtered() {
        let c = client("confidential");
        assert!(c.redirect_allowed("https://app.test/cb"));
        for bad in ["https://app.test/cb/", "https://app.test/cb?x=1", "https://APP.test/cb", "https://app.test/c"] {
            assert!(!c.redirect_allowed(bad), "{bad}");
        }
        assert_eq!(c.grantable("openid groups email openid"), vec!["openid", "email"]);
        assert!(c.secret_matches("s3cret") && !c.secret_matches("s3cre") && !client("public").secret_matches(""));
        assert_eq!(c.alg_name(), "RS256");
    }
}
