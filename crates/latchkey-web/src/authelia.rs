//! Authelia-compatible forward auth, for proxies configured from Authelia's documentation:
//! `/api/authz/forward-auth` (Caddy, Traefik), `/api/authz/auth-request` (nginx),
//! `/api/authz/ext-authz/*` (Envoy) and the legacy `/api/verify`.
//!
//! The decision is the one the authentik-compatible endpoints make ([`outpost::verdict`]);
//! only the wire format differs, following Authelia's semantics:
//! - not logged in: 302 (GET, HEAD, OPTIONS) or 303 (other methods) to the login page with
//!   `next` (the original URL), `rd` and `rm`; 401 instead for XHR and for requests that do not
//!   accept HTML; `auth-request` always answers 401 with the login URL in `Location`, which
//!   nginx's `error_page 401 =302 $redirection_url` sends the browser to;
//! - logged in, refused by the application's policies: 403;
//! - allowed: 200 with `Remote-User`, `Remote-Groups` (comma-separated), `Remote-Email`,
//!   `Remote-Name` (empty on unauthenticated paths, so forged values are overwritten).
//!
//! Getting the session back to the protected host: when Latchkey lives under the provider's
//! `cookie_domain` (domain mode, Authelia's usual layout) its session cookie is set on that
//! domain, reaches the app and is accepted here; `next` is then the original URL itself.
//! Otherwise `next` goes through the outpost's one-time hand-off (`start`/`callback`), which
//! needs `/outpost.goauthentik.io/` routed to Latchkey on the app's host.

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use latchkey_core::proxy::{ProxyProvider, Verdict};
use serde::Deserialize;
use url::Url;

use crate::error::{WebError, WebResult};
use crate::flows::login_url;
use crate::outpost::{
    caddy_target, denial, encode, envoy_target_under, forwarded, header_value, login_base, parse_url, required,
    stepup_url, verdict,
};
use crate::request::Caller;
use crate::state::AppState;

/// `Remote-User`, `Remote-Groups`, `Remote-Email`, `Remote-Name` (HTTP/1.1 writes names in
/// lower case; proxies match them case-insensitively).
const IDENTITY_HEADERS: [&str; 4] = ["remote-user", "remote-groups", "remote-email", "remote-name"];
const EXT_AUTHZ: &str = "/api/authz/ext-authz";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/authz/forward-auth", any(forward_auth))
        .route("/api/authz/forward-auth/", any(forward_auth))
        .route("/api/authz/auth-request", any(auth_request))
        .route("/api/authz/auth-request/", any(auth_request))
        .route("/api/verify", any(verify))
        .route("/api/verify/", any(verify))
        .route(EXT_AUTHZ, any(ext_authz))
        .route(&format!("{EXT_AUTHZ}/"), any(ext_authz))
        .route(&format!("{EXT_AUTHZ}/{{*rest}}"), any(ext_authz))
}

/// How an endpoint answers a browser that must log in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LoginAnswer {
    /// 302/303 to the portal, or 401 for XHR and non-HTML clients.
    Redirect,
    /// 401 with the portal in `Location` (nginx's `auth_request`).
    Unauthorized,
}

fn method_or(headers: &HeaderMap, name: &str, fallback: &Method) -> WebResult<String> {
    let m = forwarded(headers, name)?.unwrap_or(fallback.as_str());
    if m.len() > 32 || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(WebError::bad_request(format!("The {name} header is not an HTTP method.")));
    }
    Ok(m.to_ascii_uppercase())
}

// The checks take the request itself rather than a `HeaderMap` extractor, which would copy
// every header of every check.
async fn forward_auth(State(state): State<AppState>, caller: Caller, req: Request) -> Response {
    let (method, headers) = (req.method(), req.headers());
    let run = async {
        let target = caddy_target(headers)?;
        let method = method_or(headers, "X-Forwarded-Method", method)?;
        answer(&state, &caller, headers, target, method, LoginAnswer::Redirect).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

async fn auth_request(State(state): State<AppState>, caller: Caller, req: Request) -> Response {
    let (method, headers) = (req.method(), req.headers());
    let run = async {
        let target = parse_url(required(headers, "X-Original-URL")?, "X-Original-URL")?;
        let method = method_or(headers, "X-Original-Method", method)?;
        answer(&state, &caller, headers, target, method, LoginAnswer::Unauthorized).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Deserialize)]
pub struct VerifyQuery {
    rd: Option<String>,
}

/// The legacy endpoint: the original URL from `X-Original-URL` or the `X-Forwarded-*` headers;
/// with `rd` (the portal's address) a browser is redirected, without it answered 401.
async fn verify(
    State(state): State<AppState>,
    caller: Caller,
    method: Method,
    headers: HeaderMap,
    Query(q): Query<VerifyQuery>,
) -> Response {
    let run = async {
        let (target, method) = match forwarded(&headers, "X-Original-URL")? {
            Some(url) => (parse_url(url, "X-Original-URL")?, method_or(&headers, "X-Original-Method", &method)?),
            None => (caddy_target(&headers)?, method_or(&headers, "X-Forwarded-Method", &method)?),
        };
        let mode = if q.rd.is_some() { LoginAnswer::Redirect } else { LoginAnswer::Unauthorized };
        answer(&state, &caller, &headers, target, method, mode).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// Envoy's `ext_authz` (HTTP service): the original request arrives as is, its path appended
/// to `/api/authz/ext-authz`, its host in `Host`.
async fn ext_authz(State(state): State<AppState>, caller: Caller, req: Request) -> Response {
    // Borrowed parts, not `&req`: the body inside the request is not `Sync`.
    let (method, uri, headers) = (req.method(), req.uri(), req.headers());
    let run = async {
        let target = envoy_target_under(EXT_AUTHZ, uri, headers)?;
        answer(&state, &caller, headers, target, method.as_str().to_string(), LoginAnswer::Redirect).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// Whether the client wants a page: not XHR, and HTML acceptable (a missing Accept counts).
fn wants_html(headers: &HeaderMap) -> bool {
    let xhr = headers
        .get("X-Requested-With")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("XMLHttpRequest"));
    let accepts = match headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(a) => {
            let a = a.to_ascii_lowercase();
            a.trim().is_empty() || a.contains("text/html") || a.contains("text/*") || a.contains("*/*")
        }
    };
    !xhr && accepts
}

/// The login page's URL for `target`: `next` brings the browser back (directly when the
/// session cookie reaches the target's host, else through the outpost's hand-off), `rd` and
/// `rm` as Authelia's portal gets them.
fn portal_url(
    state: &AppState,
    caller: &Caller,
    provider: &ProxyProvider,
    target: &Url,
    method: &str,
    stepup: bool,
) -> String {
    let base = login_base(state, provider, caller);
    let login = Url::parse(&base).ok();
    let login_host = login.as_ref().and_then(|u| u.host_str()).map(str::to_ascii_lowercase);
    let same_host = login_host.is_some() && login_host.as_deref() == target.host_str();
    let shared = login
        .as_ref()
        .and_then(|u| u.host_str().map(|h| format!("{h}:{}", u.port_or_known_default().unwrap_or(80))))
        .is_some_and(|h| provider.shares_cookie_with(&h));
    let next = if same_host || shared {
        target.to_string()
    } else {
        let sealed = state.core.proxy.seal_state(provider, target);
        format!("{base}/outpost.goauthentik.io/start?state={}", encode(&sealed))
    };
    // A logged-in user who lacks the second factor a rule wants gives it in the step-up flow.
    let page = if stepup { stepup_url(provider, &next) } else { login_url(&next) };
    format!("{base}{page}&rd={}&rm={}", encode(target.as_str()), encode(method))
}

async fn answer(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    target: Url,
    method: String,
    mode: LoginAnswer,
) -> WebResult<Response> {
    let nginx = mode == LoginAnswer::Unauthorized;
    let (provider, verdict) = match verdict(state, caller, headers, &target, method.clone(), nginx).await {
        Ok(v) => v,
        Err(answer) => return Ok(answer),
    };
    let mut out = match verdict {
        Verdict::Anonymous => {
            let mut out = StatusCode::OK.into_response();
            for h in IDENTITY_HEADERS {
                out.headers_mut().insert(HeaderName::from_static(h), HeaderValue::from_static(""));
            }
            out
        }
        Verdict::Allowed(subject) => {
            let user = subject.user();
            let values = [
                user.username.clone(),
                user.groups.join(","),
                user.email.clone().unwrap_or_default(),
                user.name.clone(),
            ];
            let mut out = StatusCode::OK.into_response();
            for (h, v) in IDENTITY_HEADERS.iter().zip(values) {
                out.headers_mut().insert(HeaderName::from_static(h), header_value(&v));
            }
            out
        }
        Verdict::Denied { subject, messages } => return Err(denial(&provider, subject.as_ref(), &messages)),
        Verdict::LoginNeeded | Verdict::SecondFactorNeeded(_) => {
            let stepup = matches!(verdict, Verdict::SecondFactorNeeded(_));
            let portal = portal_url(state, caller, &provider, &target, &method, stepup);
            let location = HeaderValue::from_str(&portal)
                .map_err(|_| WebError::bad_request("The original URL cannot be used in a redirect."))?;
            let status = if mode == LoginAnswer::Unauthorized || !wants_html(headers) {
                StatusCode::UNAUTHORIZED
            } else if matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS") {
                StatusCode::FOUND
            } else {
                StatusCode::SEE_OTHER
            };
            let mut out = (status, "Login required.").into_response();
            if status != StatusCode::UNAUTHORIZED || mode == LoginAnswer::Unauthorized {
                out.headers_mut().insert(header::LOCATION, location);
            }
            out
        }
    };
    out.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(out)
}
