//! authentik-compatible forward auth under `/outpost.goauthentik.io/` (the embedded outpost):
//! Caddy's `forward_auth`, Traefik's `forwardAuth` and nginx's `auth_request` ask here whether
//! a request may pass, and the browser's login round trip runs through `start` and `callback`.
//!
//! The round trip, for a protected host `app` and Latchkey at `auth`:
//! 1. `app/…/auth/caddy` without a session: 302 to `auth/…/start?state=S` (S signs the
//!    original URL and the provider); nginx gets 401 and sends the browser to `app/…/start?rd=`,
//!    which signs `rd` the same way and redirects to `auth/…/start?state=S`.
//! 2. `auth/…/start?state=S`: no Latchkey session yet → the login flow, returning here after;
//!    with one → 302 to `app/…/callback?state=S&code=C`, C an encrypted one-time hand-off.
//! 3. `app/…/callback`: C opened, the session cookie set on the app's host (single mode) or on
//!    the cookie domain (domain mode), 302 to the original URL.
//!
//! The proxy's cookie carries the very same session as Latchkey's own cookie, so a logout,
//! revocation or password change ends both at once.

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use latchkey_core::proxy::{ForwardedRequest, ProxyMode, ProxyProvider, Subject, Verdict};
use serde::Deserialize;
use serde_json::json;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use url::Url;
use uuid::Uuid;

use crate::error::{WebError, WebResult};
use crate::flows::{found, login_url};
use crate::request::{Caller, SESSION_COOKIE};
use crate::state::AppState;

const PREFIX: &str = "/outpost.goauthentik.io";
/// Forwarded headers longer than this are refused (no legitimate URL or host is near it).
const MAX_HEADER: usize = 8 * 1024;

/// Identity headers, as authentik names them (`X-Authentik-Username`…). Header names are
/// case-insensitive and HTTP/1.1 writes them lower-cased; proxies match them by name.
const IDENTITY_HEADERS: [&str; 11] = [
    "x-authentik-username",
    "x-authentik-groups",
    "x-authentik-email",
    "x-authentik-name",
    "x-authentik-uid",
    "x-authentik-jwt",
    "x-authentik-meta-jwks",
    "x-authentik-meta-outpost",
    "x-authentik-meta-provider",
    "x-authentik-meta-app",
    "x-authentik-meta-version",
];

/// The identity answers of recent checks, per (session or credential, provider): the JWT is
/// signed and the header values are built once, then copied into each answer while the
/// identity is unchanged and more than half the JWT's lifetime remains. Signing per request
/// would cost more than the rest of the check.
pub struct IdentityCache {
    entries: moka::sync::Cache<(u64, Uuid), Arc<PreparedIdentity>>,
    hasher: RandomState,
}

struct PreparedIdentity {
    /// The subject's cache key: the map is keyed by its hash, a hit must be exact.
    subject: String,
    /// Hash of everything the headers say.
    fingerprint: u64,
    iat: i64,
    exp: i64,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Default for IdentityCache {
    fn default() -> Self {
        IdentityCache {
            entries: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(std::time::Duration::from_secs(3600))
                .build(),
            hasher: RandomState::new(),
        }
    }
}

impl IdentityCache {
    fn key(&self, subject: &str, provider: Uuid) -> (u64, Uuid) {
        (self.hasher.hash_one(subject), provider)
    }

    fn get(&self, subject: &str, provider: Uuid, fingerprint: u64, now: i64) -> Option<Arc<PreparedIdentity>> {
        let c = self.entries.get(&self.key(subject, provider))?;
        let fresh = now >= c.iat && (c.exp - now) * 2 > c.exp - c.iat;
        (c.subject == subject && c.fingerprint == fingerprint && fresh).then_some(c)
    }

    fn insert(&self, provider: Uuid, prepared: Arc<PreparedIdentity>) {
        self.entries.insert(self.key(&prepared.subject, provider), prepared);
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(&format!("{PREFIX}/auth/caddy"), any(auth_caddy))
        .route(&format!("{PREFIX}/auth/traefik"), any(auth_caddy))
        .route(&format!("{PREFIX}/auth/nginx"), any(auth_nginx))
        .route(&format!("{PREFIX}/auth/envoy"), any(auth_envoy))
        .route(&format!("{PREFIX}/auth/envoy/"), any(auth_envoy))
        .route(&format!("{PREFIX}/auth/envoy/{{*rest}}"), any(auth_envoy))
        .route(&format!("{PREFIX}/start"), get(start))
        .route(&format!("{PREFIX}/callback"), get(callback))
        .route(&format!("{PREFIX}/sign_out"), get(sign_out))
        .route(&format!("{PREFIX}/ping"), any(ping))
        .route(&format!("{PREFIX}/jwks/"), get(jwks))
        .route(&format!("{PREFIX}/jwks"), get(jwks))
}

async fn ping() -> StatusCode {
    StatusCode::NO_CONTENT
}

async fn jwks(State(state): State<AppState>) -> WebResult<Response> {
    let keys = state.core.signing.jwks().await?;
    Ok(([(header::CACHE_CONTROL, "public, max-age=300")], axum::Json(keys)).into_response())
}

/// A forwarded header as text: absent is `Ok(None)`; unreadable or oversized is a 400 naming it.
pub(crate) fn forwarded<'a>(headers: &'a HeaderMap, name: &str) -> WebResult<Option<&'a str>> {
    let Some(v) = headers.get(name) else { return Ok(None) };
    if v.len() > MAX_HEADER {
        tracing::warn!(header = name, "forward auth: header too long");
        return Err(WebError::bad_request(format!("The {name} header is too long.")));
    }
    match v.to_str() {
        Ok(s) if s.trim().is_empty() => Ok(None),
        Ok(s) => Ok(Some(s.trim())),
        Err(_) => {
            tracing::warn!(header = name, "forward auth: header is not plain text");
            Err(WebError::bad_request(format!("The {name} header is not valid text.")))
        }
    }
}

pub(crate) fn required<'a>(headers: &'a HeaderMap, name: &str) -> WebResult<&'a str> {
    forwarded(headers, name)?.ok_or_else(|| {
        tracing::warn!(header = name, "forward auth: header missing; is the proxy configured as documented?");
        WebError::bad_request(format!("The {name} header is missing; the proxy must send it."))
    })
}

pub(crate) fn parse_url(raw: &str, header: &str) -> WebResult<Url> {
    Url::parse(raw).ok().filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some()).ok_or_else(|| {
        tracing::warn!(header, "forward auth: not a usable URL");
        WebError::bad_request(format!("The {header} header does not give a valid http(s) URL."))
    })
}

/// The original URL from Caddy's / Traefik's headers.
pub(crate) fn caddy_target(headers: &HeaderMap) -> WebResult<Url> {
    let proto = required(headers, "X-Forwarded-Proto")?;
    let host = required(headers, "X-Forwarded-Host")?;
    let uri = required(headers, "X-Forwarded-Uri")?;
    if !matches!(proto, "http" | "https") {
        return Err(WebError::bad_request("The X-Forwarded-Proto header must be http or https."));
    }
    if !uri.starts_with('/') || host.contains(['/', '@', '\\']) {
        return Err(WebError::bad_request("The X-Forwarded-Host or X-Forwarded-Uri header is malformed."));
    }
    parse_url(&format!("{proto}://{host}{uri}"), "X-Forwarded-Uri")
}

/// The original URL from nginx's headers: `X-Original-URI` (a path, with the host from `Host`)
/// or else `X-Original-URL` (absolute), as authentik's snippet sends it.
fn nginx_target(headers: &HeaderMap) -> WebResult<Url> {
    if let Some(url) = forwarded(headers, "X-Original-URL")? {
        if url.starts_with("http://") || url.starts_with("https://") {
            return parse_url(url, "X-Original-URL");
        }
    }
    if let Some(uri) = forwarded(headers, "X-Original-URI")? {
        let proto = forwarded(headers, "X-Forwarded-Proto")?.unwrap_or("http");
        let host = match forwarded(headers, "X-Forwarded-Host")? {
            Some(h) => h,
            None => required(headers, "Host")?,
        };
        if !uri.starts_with('/') || host.contains(['/', '@', '\\']) || !matches!(proto, "http" | "https") {
            return Err(WebError::bad_request("The X-Original-URI or Host header is malformed."));
        }
        return parse_url(&format!("{proto}://{host}{uri}"), "X-Original-URI");
    }
    tracing::warn!(header = "X-Original-URL", "forward auth: header missing; is the proxy configured as documented?");
    Err(WebError::bad_request("The X-Original-URL (or X-Original-URI) header is missing; the proxy must send it."))
}

/// Where Latchkey's own pages are reached: the configured external URL; else, in domain mode,
/// the provider's external host (authentik's outpost host is the auth host there); else this
/// request's origin.
pub(crate) fn login_base(state: &AppState, provider: &ProxyProvider, caller: &Caller) -> String {
    if let Some(url) = &state.config.external_url {
        return url.origin().ascii_serialization();
    }
    if provider.mode == ProxyMode::Domain {
        return provider.external_host.origin().ascii_serialization();
    }
    caller.origin.clone()
}

pub(crate) fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub(crate) fn header_value(s: &str) -> HeaderValue {
    // Names may be UTF-8 (sent as opaque bytes); control characters never are allowed.
    HeaderValue::from_bytes(s.as_bytes()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

// The checks take the request itself rather than a `HeaderMap` extractor, which would copy
// every header of every check.
async fn auth_caddy(State(state): State<AppState>, caller: Caller, req: Request) -> Response {
    let headers = req.headers();
    let target = match caddy_target(headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let method = forwarded(headers, "X-Forwarded-Method").ok().flatten().unwrap_or("GET").to_string();
    check(&state, &caller, headers, target, method, false).await.unwrap_or_else(IntoResponse::into_response)
}

async fn auth_nginx(State(state): State<AppState>, caller: Caller, req: Request) -> Response {
    let headers = req.headers();
    let target = match nginx_target(headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let method = forwarded(headers, "X-Original-Method").ok().flatten().unwrap_or("GET").to_string();
    check(&state, &caller, headers, target, method, true).await.unwrap_or_else(IntoResponse::into_response)
}

/// Envoy's `ext_authz` HTTP service with `path_prefix: /outpost.goauthentik.io/auth/envoy`: the
/// original request's method, path (appended to the prefix) and `Host` arrive as they are.
async fn auth_envoy(State(state): State<AppState>, caller: Caller, req: Request) -> Response {
    let headers = req.headers();
    let target = match envoy_target(req.uri(), headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    check(&state, &caller, headers, target, req.method().as_str().to_string(), false)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// The original URL of an `ext_authz` check: the path after `prefix`, the host from
/// `X-Forwarded-Host` or `Host`, the scheme from `X-Forwarded-Proto` (default http).
pub(crate) fn envoy_target_under(prefix: &str, uri: &Uri, headers: &HeaderMap) -> WebResult<Url> {
    let rest = uri.path().strip_prefix(prefix).unwrap_or("");
    let rest = format!("/{}", rest.trim_start_matches('/'));
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let proto = forwarded(headers, "X-Forwarded-Proto")?.unwrap_or("http");
    let host = match forwarded(headers, "X-Forwarded-Host")? {
        Some(h) => h,
        None => required(headers, "Host")?,
    };
    if !matches!(proto, "http" | "https") || host.contains(['/', '@', '\\']) {
        return Err(WebError::bad_request("The Host or X-Forwarded-Proto header is malformed."));
    }
    parse_url(&format!("{proto}://{host}{rest}{query}"), "Host")
}

fn envoy_target(uri: &Uri, headers: &HeaderMap) -> WebResult<Url> {
    envoy_target_under(&format!("{PREFIX}/auth/envoy"), uri, headers)
}

/// The provider protecting `target` and its decision for this caller: from either of the
/// session cookies (the proxy's own, or Latchkey's when it reaches the host), else from an
/// app password or access token in the `Authorization` header. Shared by the
/// authentik-compatible and the Authelia-compatible endpoints. `Err` carries a finished answer
/// (a refused credential: 401 or 429).
pub(crate) async fn verdict(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    target: &Url,
    method: String,
    nginx: bool,
) -> Result<(Arc<ProxyProvider>, Verdict), Response> {
    let Some(provider) = state.core.proxy.resolve(target).await.map_err(|e| WebError::from(e).into_response())? else {
        tracing::warn!(host = target.host_str().unwrap_or(""), "forward auth: no proxy provider for this host");
        return Err(WebError::not_found(format!(
            "No proxy provider protects {}; check the provider's external_host and cookie_domain.",
            target.host_str().unwrap_or("this host")
        ))
        .into_response());
    };
    // The proxy's own cookie first, then Latchkey's (which the `Caller` extractor already
    // validated). Both usually carry the same sealed value: validate only what differs.
    let proxy_cookie = caller.jar.get(&provider.cookie_name()).map(|c| c.value());
    let session = match proxy_cookie {
        Some(v) if Some(v) != caller.jar.get(SESSION_COOKIE).map(|c| c.value()) => state
            .core
            .sessions
            .validate(v)
            .await
            .map_err(|e| WebError::from(e).into_response())?
            .or_else(|| caller.session.clone()),
        _ => caller.session.clone(),
    };
    let req = ForwardedRequest {
        url: target.clone(),
        method,
        client_ip: caller.ip.map(|ip| ip.to_string()),
        user_agent: caller.user_agent.clone(),
    };
    let subject = match session {
        Some(s) => Some(Subject::Session(s)),
        // Unauthenticated paths and bypass rules answer before any credential is looked at.
        None if provider.intercept_header_auth && !state.core.proxy.bypassed(&provider, &req) => {
            crate::header_auth::credential(state, caller, headers, &provider, nginx).await?.map(Subject::Credential)
        }
        None => None,
    };
    let verdict =
        state.core.proxy.decide(&provider, &req, subject).await.map_err(|e| WebError::from(e).into_response())?;
    Ok((provider, verdict))
}

/// The text of a 403 for a request a rule or the application's policies refuse.
pub(crate) fn denial(provider: &ProxyProvider, subject: Option<&Subject>, messages: &[String]) -> WebError {
    let user = subject.map(|s| s.user().username.as_str()).unwrap_or("-");
    tracing::info!(user, app = %provider.app.slug, "forward auth: denied");
    let mut text = format!("You do not have access to {}.", provider.app.name);
    for m in messages.iter().filter(|m| !m.is_empty()) {
        text.push(' ');
        text.push_str(m);
    }
    WebError::forbidden(text)
}

async fn check(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    target: Url,
    method: String,
    nginx: bool,
) -> WebResult<Response> {
    let (provider, verdict) = match verdict(state, caller, headers, &target, method, nginx).await {
        Ok(v) => v,
        Err(answer) => return Ok(answer),
    };
    match verdict {
        Verdict::Anonymous => {
            // Empty identity headers: a proxy copying them overwrites anything the client forged.
            let mut out = StatusCode::OK.into_response();
            for h in IDENTITY_HEADERS {
                out.headers_mut().insert(HeaderName::from_static(h), HeaderValue::from_static(""));
            }
            Ok(out)
        }
        Verdict::LoginNeeded | Verdict::SecondFactorNeeded(_) if nginx => {
            Ok((StatusCode::UNAUTHORIZED, [(header::CACHE_CONTROL, "no-store")], "Login required.").into_response())
        }
        // `start` sends the browser through the login, or through the second factor.
        Verdict::LoginNeeded | Verdict::SecondFactorNeeded(_) => {
            let sealed = state.core.proxy.seal_state(&provider, &target);
            let base = login_base(state, &provider, caller);
            Ok(found(&format!("{base}{PREFIX}/start?state={}", encode(&sealed))))
        }
        Verdict::Denied { subject, messages } => Err(denial(&provider, subject.as_ref(), &messages)),
        Verdict::Allowed(subject) => identity(state, caller, &provider, &subject).await,
    }
}

/// 200 with the identity headers and a signed JWT.
async fn identity(
    state: &AppState,
    caller: &Caller,
    provider: &ProxyProvider,
    subject: &Subject,
) -> WebResult<Response> {
    let user = subject.user();
    let base = login_base(state, provider, caller);
    let cache = &state.identities;
    let fingerprint = cache.hasher.hash_one((
        &base,
        (&user.username, &user.email, &user.name, &user.groups),
        (&provider.name, &provider.outpost, &provider.app.slug, provider.token_validity),
    ));
    let now = state.core.proxy.now().timestamp();
    let prepared = match cache.get(subject.cache_key(), provider.id, fingerprint, now) {
        Some(p) => p,
        None => {
            let exp = now + provider.token_validity;
            let claims = json!({
                "iss": format!("{base}/application/o/{}/", provider.app.slug),
                "sub": user.id.to_string(),
                "aud": provider.app.slug,
                "iat": now,
                "exp": exp,
                "preferred_username": user.username,
                "email": user.email.clone().unwrap_or_default(),
                "name": user.name,
                "groups": user.groups,
            });
            let jwt = state.core.signing.sign(&claims).await?;
            let values = [
                user.username.clone(),
                user.groups.join("|"),
                user.email.clone().unwrap_or_default(),
                user.name.clone(),
                user.id.to_string(),
                jwt,
                format!("{base}{PREFIX}/jwks/"),
                provider.outpost.clone(),
                provider.name.clone(),
                provider.app.slug.clone(),
                format!("latchkey/{}", env!("CARGO_PKG_VERSION")),
            ];
            let headers = IDENTITY_HEADERS
                .iter()
                .zip(values)
                .map(|(h, v)| (HeaderName::from_static(h), header_value(&v)))
                .collect();
            let p = Arc::new(PreparedIdentity {
                subject: subject.cache_key().to_string(),
                fingerprint,
                iat: now,
                exp,
                headers,
            });
            cache.insert(provider.id, Arc::clone(&p));
            p
        }
    };
    let mut out = StatusCode::OK.into_response();
    let headers = out.headers_mut();
    // Room for these and the security headers the router adds, so the map never regrows.
    headers.reserve(prepared.headers.len() + 8);
    for (name, value) in &prepared.headers {
        headers.insert(name.clone(), value.clone());
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(out)
}

#[derive(Deserialize)]
pub struct StartQuery {
    rd: Option<String>,
    state: Option<String>,
    /// Set on the return from the second-factor flow.
    stepup: Option<String>,
}

/// The provider's second-factor flow, returning to `next` (a path on Latchkey's host or an
/// absolute URL the flow accepts).
pub(crate) fn stepup_url(provider: &ProxyProvider, next: &str) -> String {
    format!("/if/flow/{}/?next={}", provider.stepup_flow, encode(next))
}

/// The request's own URL as the proxy saw it (for `start` and `sign_out` served on the app host).
fn app_url(headers: &HeaderMap, caller: &Caller) -> Option<Url> {
    if let Ok(Some(url)) = forwarded(headers, "X-Original-URL") {
        if let Ok(u) = Url::parse(url) {
            return Some(u);
        }
    }
    let proto =
        forwarded(headers, "X-Forwarded-Proto").ok().flatten().unwrap_or(if caller.https { "https" } else { "http" });
    let host = forwarded(headers, "X-Forwarded-Host").ok().flatten().or(caller.host.as_deref())?;
    Url::parse(&format!("{proto}://{host}/")).ok()
}

async fn start(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Query(q): Query<StartQuery>,
) -> WebResult<Response> {
    let proxy = &state.core.proxy;
    if let Some(sealed) = q.state.as_deref() {
        // Phase 2, on Latchkey's host: log in if needed, then hand the session to the app host.
        let bad = || WebError::bad_request("This sign-in link is invalid or has expired; open the application again.");
        let st = proxy.open_state(sealed).ok_or_else(bad)?;
        let provider = proxy.provider(st.provider).await?.ok_or_else(bad)?;
        let rd = provider.safe_target(&st.rd).ok_or_else(bad)?;
        let (Some(session), Some(cookie)) = (&caller.session, caller.session_cookie()) else {
            return Ok(found(&login_url(&format!("{PREFIX}/start?state={}", encode(sealed)))));
        };
        let ip = caller.ip.map(|ip| ip.to_string());
        if !proxy.second_factor_satisfied(&provider, &rd, "GET", session, ip.as_deref()) {
            if q.stepup.is_some() {
                // Back from the second-factor flow without one: say so rather than loop.
                return Err(WebError::forbidden(format!(
                    "{} needs a second factor, and this sign-in did not provide one. Set up an authenticator in your settings and try again.",
                    provider.app.name
                )));
            }
            let back = format!("{PREFIX}/start?state={}&stepup=1", encode(sealed));
            return Ok(found(&stepup_url(&provider, &back)));
        }
        let code = proxy.seal_handoff(&provider, &cookie)?;
        let origin = rd.origin().ascii_serialization();
        return Ok(found(&format!("{origin}{PREFIX}/callback?state={}&code={}", encode(sealed), encode(&code))));
    }
    // Phase 1, on the app's host (nginx's error_page sends the browser here with `rd`).
    let here = app_url(&headers, &caller);
    let mut provider = match &here {
        Some(u) => proxy.resolve(u).await?,
        None => None,
    };
    if provider.is_none() {
        if let Some(rd) = q.rd.as_deref().and_then(|rd| Url::parse(rd).ok()) {
            provider = proxy.resolve(&rd).await?;
        }
    }
    let Some(provider) = provider else {
        return Err(WebError::bad_request("No proxy provider protects this host, so there is nothing to sign in to."));
    };
    let rd = provider.target_or_home(q.rd.as_deref());
    let sealed = proxy.seal_state(&provider, &rd);
    let base = login_base(&state, &provider, &caller);
    Ok(found(&format!("{base}{PREFIX}/start?state={}", encode(&sealed))))
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    state: Option<String>,
    code: Option<String>,
}

fn proxy_cookie(provider: &ProxyProvider, secure: bool, value: String) -> Cookie<'static> {
    let mut c = Cookie::new(provider.cookie_name(), value);
    c.set_http_only(true);
    c.set_same_site(SameSite::Lax);
    c.set_secure(secure);
    c.set_path("/");
    if provider.mode == ProxyMode::Domain {
        if let Some(d) = &provider.cookie_domain {
            c.set_domain(d.clone());
        }
    }
    c
}

async fn callback(
    State(state): State<AppState>,
    jar: CookieJar,
    Query(q): Query<CallbackQuery>,
) -> WebResult<Response> {
    let proxy = &state.core.proxy;
    let bad = || WebError::bad_request("This sign-in link is invalid or has expired; open the application again.");
    let st = q.state.as_deref().and_then(|s| proxy.open_state(s)).ok_or_else(bad)?;
    let provider: Arc<ProxyProvider> = proxy.provider(st.provider).await?.ok_or_else(bad)?;
    let rd = provider.safe_target(&st.rd).ok_or_else(bad)?;
    let cookie = q.code.as_deref().and_then(|c| proxy.open_handoff(&provider, c)).ok_or_else(bad)?;
    if state.core.sessions.validate(&cookie).await?.is_none() {
        return Err(bad());
    }
    let jar = jar.add(proxy_cookie(&provider, rd.scheme() == "https", cookie));
    Ok((jar, found(rd.as_str())).into_response())
}

async fn sign_out(State(state): State<AppState>, caller: Caller, headers: HeaderMap) -> WebResult<Response> {
    let provider = match app_url(&headers, &caller) {
        Some(u) => state.core.proxy.resolve(&u).await?,
        None => None,
    };
    let mut jar = caller.jar.clone();
    let mut values: Vec<String> = caller.session_cookie().into_iter().collect();
    if let Some(p) = &provider {
        if let Some(c) = caller.jar.get(&p.cookie_name()) {
            values.push(c.value().to_string());
        }
        let mut removal = proxy_cookie(p, caller.https, String::new());
        removal.make_removal();
        jar = jar.add(removal);
    }
    for v in values {
        if let Some(session) = state.core.sessions.revoke_cookie(&v).await? {
            let user_name = caller.session.as_ref().map(|s| s.user.username.clone());
            state
                .core
                .events
                .record_raw(
                    "logout",
                    Some(session.user_id),
                    user_name,
                    &caller.client(),
                    json!({ "session": session.id, "via": "forward_auth" }),
                )
                .await;
        }
    }
    jar = jar.add(caller.removal(SESSION_COOKIE));
    let to = match &provider {
        Some(p) => format!("{}{}", login_base(&state, p, &caller), login_url("/if/user/")),
        None => login_url("/if/user/"),
    };
    Ok((jar, found(&to)).into_response())
}
