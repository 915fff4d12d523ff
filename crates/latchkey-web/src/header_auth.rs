//! `Authorization: Basic` (app passwords) and `Bearer` (OAuth access tokens) on the forward-auth
//! endpoints: reading the header, asking the core, and the 401 / 429 answers.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use latchkey_core::header_auth::{CredentialIdentity, HeaderAuthResult, Presented};
use latchkey_core::proxy::ProxyProvider;
use std::sync::Arc;

use crate::error::WebError;
use crate::request::Caller;
use crate::state::AppState;

/// Longest accepted `Authorization` value (a JWT access token with many groups fits easily).
const MAX_AUTHORIZATION: usize = 16 * 1024;

/// What the header carried, decoded.
enum Sent {
    Basic {
        username: String,
        secret: String,
    },
    Bearer(String),
    /// A Basic or Bearer header that cannot be read.
    Garbled(&'static str),
}

impl Sent {
    fn scheme(&self) -> &'static str {
        match self {
            Sent::Basic { .. } => "Basic",
            Sent::Bearer(_) => "Bearer",
            Sent::Garbled(s) => s,
        }
    }
}

/// `None` when there is no `Authorization` header or it uses another scheme (left to the app).
fn sent(headers: &HeaderMap) -> Option<Sent> {
    let raw = headers.get(header::AUTHORIZATION)?;
    let text = match raw.to_str() {
        Ok(t) if raw.len() <= MAX_AUTHORIZATION => t.trim(),
        _ => return Some(Sent::Garbled("Basic")),
    };
    let (scheme, value) = text.split_once(' ').unwrap_or((text, ""));
    let value = value.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = STANDARD.decode(value).ok().and_then(|b| String::from_utf8(b).ok());
        return Some(match decoded.as_deref().and_then(|d| d.split_once(':')) {
            Some((u, p)) if !u.is_empty() && !p.is_empty() => {
                Sent::Basic { username: u.to_string(), secret: p.to_string() }
            }
            _ => Sent::Garbled("Basic"),
        });
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(if value.is_empty() { Sent::Garbled("Bearer") } else { Sent::Bearer(value.to_string()) });
    }
    None
}

/// The credential in the request's `Authorization` header, if it carries one for us:
/// `Ok(None)` without one, `Err(response)` when it is refused (401 with `WWW-Authenticate`, or
/// 429 with `Retry-After`; `nginx` endpoints get 401 for throttling too, as nginx's
/// `auth_request` passes nothing else through).
pub(crate) async fn credential(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    provider: &ProxyProvider,
    nginx: bool,
) -> Result<Option<Arc<CredentialIdentity>>, Response> {
    let Some(sent) = sent(headers) else { return Ok(None) };
    let presented = match &sent {
        Sent::Basic { username, secret } => Presented::Basic { username, secret },
        Sent::Bearer(token) => Presented::Bearer(token),
        Sent::Garbled(scheme) => return Err(unauthorized(provider, scheme, "The Authorization header is malformed.")),
    };
    let result = state
        .core
        .header_auth
        .verify(presented, &caller.client())
        .await
        .map_err(|e| WebError::from(e).into_response())?;
    match result {
        HeaderAuthResult::Valid(identity) => Ok(Some(identity)),
        HeaderAuthResult::Invalid => {
            let what = if sent.scheme() == "Basic" { "username or app password" } else { "access token" };
            Err(unauthorized(provider, sent.scheme(), &format!("Invalid {what}.")))
        }
        HeaderAuthResult::Throttled(secs) => {
            let message = format!("Too many failed attempts. Try again in {secs} seconds.");
            let status = if nginx { StatusCode::UNAUTHORIZED } else { StatusCode::TOO_MANY_REQUESTS };
            let mut out = (status, message).into_response();
            out.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            out.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Err(out)
        }
    }
}

/// 401 with the challenge a client of this scheme expects.
fn unauthorized(provider: &ProxyProvider, scheme: &str, message: &str) -> Response {
    let realm = provider.app.name.replace(['"', '\\'], "");
    let challenge = if scheme == "Bearer" {
        format!("Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{message}\"")
    } else {
        format!("Basic realm=\"{realm}\", charset=\"UTF-8\"")
    };
    let mut out = (StatusCode::UNAUTHORIZED, message.to_string()).into_response();
    let value =
        HeaderValue::from_str(&challenge).unwrap_or_else(|_| HeaderValue::from_static("Basic realm=\"latchkey\""));
    out.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    out.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    out
}
