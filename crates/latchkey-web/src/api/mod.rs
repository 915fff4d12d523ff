//! The REST API under `/api/v1` (DESIGN.md, "HTTP paths"): thin handlers over the core's
//! directory, tokens, sessions, MFA, objects, events and settings.
//!
//! Shared here: authentication ([`Admin`]: a Bearer API token, or the session cookie plus a
//! CSRF header on unsafe methods), list parameters and authentik's pagination envelope,
//! JSON bodies (400 malformed, 413 too large, 422 field errors) and optimistic concurrency
//! (`ETag` out, `If-Match` or a `version` field in).

pub mod events;
pub mod groups;
pub mod objects;
pub mod openapi;
pub mod settings;
pub mod tokens;
pub mod users;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use chrono::{DateTime, Utc};
use latchkey_core::error::FieldErrors;
use latchkey_core::events::ClientInfo;
use latchkey_core::model::{ListQuery, Page};
use latchkey_core::CoreError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::WebError;
use crate::request::{Caller, SESSION_COOKIE};
use crate::state::AppState;

/// The CSRF cookie authentik's clients read and echo in a header.
pub const CSRF_COOKIE: &str = "authentik_csrf";
/// Headers accepted for the CSRF token: authentik's and Django's names.
const CSRF_HEADERS: &[&str] = &["x-authentik-csrf", "x-csrftoken"];
/// The largest page a list returns.
pub const MAX_PAGE_SIZE: u32 = 1000;
const DEFAULT_PAGE_SIZE: u32 = 20;

/// Writes a timestamp with milliseconds always present (`2026-01-01T00:00:00.000Z`): one
/// width for every value, so clients that compare the text order it as the time.
pub(crate) fn timestamp<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&t.format("%Y-%m-%dT%H:%M:%S%.3fZ"))
}

/// [`timestamp`] for an optional value (`null` when absent).
pub(crate) fn optional_timestamp<S: serde::Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => timestamp(t, s),
        None => s.serialize_none(),
    }
}

/// An API error: the web layer's JSON error, with field validation answered as 422.
#[derive(Debug)]
pub struct ApiError(pub WebError);

impl From<WebError> for ApiError {
    fn from(e: WebError) -> Self {
        ApiError(e)
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::Invalid { message, fields } => {
                ApiError(WebError { status: StatusCode::UNPROCESSABLE_ENTITY, code: "invalid", message, fields })
            }
            other => ApiError(WebError::from(other)),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unauthorized = self.0.status == StatusCode::UNAUTHORIZED;
        let mut response = self.0.into_response();
        if unauthorized {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

pub fn bad_request(field: &str, message: impl Into<String>) -> ApiError {
    let message = message.into();
    let mut e = WebError::bad_request(format!("{field}: {message}"));
    e.fields.insert(field.to_string(), vec![message]);
    ApiError(e)
}

pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::from(CoreError::invalid_field(field, message))
}

/// The error body every API error has.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable code: `invalid`, `unauthorized`, `forbidden`, `not_found`, `conflict`, `too_large`…
    pub error: String,
    pub message: String,
    /// Field name → messages (`non_field_errors` for the whole request).
    #[schema(value_type = Object)]
    pub fields: FieldErrors,
    pub request_id: String,
}

/// An administrator, authenticated by an API token or by a session (with CSRF on writes).
pub struct Admin {
    pub user_id: Uuid,
    pub username: String,
    /// Address and agent, with this administrator as the acting user of audit events.
    pub client: ClientInfo,
}

fn unauthorized(message: &str) -> ApiError {
    ApiError(WebError::new(StatusCode::UNAUTHORIZED, "unauthorized", message))
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let core = &state.core;
        let (user_id, username, is_superuser) = match parts.headers.get(header::AUTHORIZATION) {
            Some(value) => {
                let value = value.to_str().unwrap_or("").trim();
                let Some(secret) = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")) else {
                    return Err(unauthorized("The Authorization header must be 'Bearer <API token>'."));
                };
                let Some(user) = core.tokens.authenticate_api_token(secret.trim()).await? else {
                    return Err(unauthorized("The API token is invalid, expired or revoked."));
                };
                let is_superuser = core.directory.is_superuser(user.id).await?;
                (user.id, user.username, is_superuser)
            }
            None => {
                let Some(session) = caller.session.clone() else {
                    return Err(unauthorized("Authentication required: send a Bearer API token or log in."));
                };
                if !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
                    let cookie = caller.session_cookie().unwrap_or_default();
                    let sent = CSRF_HEADERS
                        .iter()
                        .find_map(|h| parts.headers.get(*h).and_then(|v| v.to_str().ok()))
                        .unwrap_or("");
                    if !core.keys.csrf.verify(cookie.as_bytes(), sent) {
                        return Err(ApiError(WebError::forbidden(
                            "CSRF check failed: send the authentik_csrf cookie's value in the X-authentik-CSRF header.",
                        )));
                    }
                }
                (session.user.id, session.user.username.clone(), session.user.is_superuser)
            }
        };
        if !is_superuser {
            return Err(ApiError(WebError::forbidden("This API needs a superuser.")));
        }
        let mut client = caller.client();
        client.actor = Some(username.clone());
        Ok(Admin { user_id, username, client })
    }
}

/// Gives a browser with a session the CSRF token its scripts echo on writes (authentik's
/// double-submit cookie; the token is bound to the session, so it cannot be forged).
pub async fn csrf_cookie(state: axum::extract::State<AppState>, request: Request, next: Next) -> Response {
    let jar = axum_extra::extract::cookie::CookieJar::from_headers(request.headers());
    let expected = jar.get(SESSION_COOKIE).map(|c| state.core.keys.csrf.sign(c.value().as_bytes()));
    let current = jar.get(CSRF_COOKIE).map(|c| c.value().to_string());
    let mut response = next.run(request).await;
    if let Some(token) = expected.filter(|t| Some(t) != current.as_ref()) {
        let cookie = format!("{CSRF_COOKIE}={token}; Path=/; SameSite=Lax");
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}

/// A JSON object body: not JSON → 400; too large → 413.
pub struct JsonBody(pub Value);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError(WebError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("The body is larger than {} bytes.", crate::MAX_BODY),
                ))
            } else {
                ApiError(WebError::bad_request(format!("The body could not be read: {e}")))
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(Value::Object(Default::default())));
        }
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError(WebError::bad_request(format!("The body is not valid JSON: {e}"))))?;
        if !value.is_object() {
            return Err(ApiError(WebError::bad_request("The body must be a JSON object.")));
        }
        Ok(JsonBody(value))
    }
}

impl JsonBody {
    /// Reads the body into `T`; a wrong type or an unknown field is a 422 naming the field.
    pub fn parse<T: DeserializeOwned>(&self) -> ApiResult<T> {
        serde_path_to_error::deserialize::<_, T>(self.0.clone()).map_err(|e| {
            ApiError::from(latchkey_core::objects::serde_field_error(&e.path().to_string(), &e.inner().to_string()))
        })
    }

    /// The `version` field, removed from the body.
    pub fn take_version(&mut self) -> Option<String> {
        self.0.as_object_mut().and_then(|m| m.remove("version")).and_then(|v| v.as_str().map(String::from))
    }
}

/// The version the client edited: `If-Match`, else the body's `version`.
pub fn expected_version(headers: &HeaderMap, body: &mut JsonBody) -> Option<String> {
    let from_body = body.take_version();
    headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().trim_start_matches("W/").trim_matches('"').to_string())
        .filter(|v| !v.is_empty() && v != "*")
        .or(from_body)
}

/// A JSON answer with the object's version as its `ETag`.
pub fn with_etag<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let version = latchkey_core::version::version_of(value);
    let mut response = (status, axum::Json(value)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

/// `?search=&ordering=&page=&page_size=` and any other parameters, checked.
pub struct ListParams {
    pub query: ListQuery,
    pub rest: Vec<(String, String)>,
}

impl ListParams {
    /// Parses the query string; `ordering` must name one of `orderable` (optionally `-`).
    pub fn parse(raw: Option<&str>, orderable: &[&str]) -> ApiResult<ListParams> {
        let mut query = ListQuery { page_size: DEFAULT_PAGE_SIZE, ..ListQuery::default() };
        let mut rest = Vec::new();
        for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "search" => query.search = Some(v.into_owned()).filter(|s| !s.trim().is_empty()),
                "ordering" => {
                    let field = v.trim().trim_start_matches('-');
                    if !field.is_empty() {
                        if !orderable.contains(&field) {
                            return Err(bad_request(
                                "ordering",
                                format!("'{v}' is not a field to order by; use one of: {}", orderable.join(", ")),
                            ));
                        }
                        query.ordering = Some(v.trim().to_string());
                    }
                }
                "page" => {
                    query.page = v
                        .parse::<u32>()
                        .ok()
                        .filter(|p| *p >= 1)
                        .ok_or_else(|| bad_request("page", "must be a whole number from 1"))?
                }
                "page_size" => {
                    query.page_size = v
                        .parse::<u32>()
                        .ok()
                        .filter(|p| (1..=MAX_PAGE_SIZE).contains(p))
                        .ok_or_else(|| bad_request("page_size", format!("must be from 1 to {MAX_PAGE_SIZE}")))?
                }
                _ => rest.push((k.into_owned(), v.into_owned())),
            }
        }
        Ok(ListParams { query, rest })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.rest.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }
}

/// authentik's pagination block: `next`/`previous` are page numbers, 0 when there is none.
#[derive(Serialize, ToSchema)]
pub struct Pagination {
    pub count: u64,
    pub current: u32,
    pub total_pages: u64,
    pub next: u64,
    pub previous: u64,
    pub start_index: u64,
    pub end_index: u64,
}

#[derive(Serialize)]
pub struct Paginated<T> {
    pub pagination: Pagination,
    pub results: Vec<T>,
}

pub fn paginate<T>(query: &ListQuery, page: Page<T>) -> Paginated<T> {
    let size = u64::from(query.page_size.max(1));
    let total_pages = page.total.div_ceil(size).max(1);
    let current = u64::from(query.page.max(1));
    let start = if page.items.is_empty() { 0 } else { query.offset() + 1 };
    Paginated {
        pagination: Pagination {
            count: page.total,
            current: query.page.max(1),
            total_pages,
            next: if current < total_pages { current + 1 } else { 0 },
            previous: current.saturating_sub(1),
            start_index: start,
            end_index: if start == 0 { 0 } else { start + page.items.len() as u64 - 1 },
        },
        results: page.items,
    }
}

pub fn parse_id(raw: &str, what: &str) -> ApiResult<Uuid> {
    raw.parse().map_err(|_| ApiError(WebError::not_found(format!("{what} {raw} not found"))))
}

/// Answers 404 under `/api/v1/` in JSON instead of the site's fallback.
async fn not_found() -> ApiError {
    ApiError(WebError::not_found("No such API endpoint."))
}

/// Every `/api/v1` route (the flow executor has its own, in `flows`).
pub fn routes(state: AppState) -> Router<AppState> {
    let r = Router::new();
    let r = users::routes(r);
    let r = groups::routes(r);
    let r = objects::routes(r);
    let r = tokens::routes(r);
    let r = events::routes(r);
    let r = settings::routes(r);
    let r = crate::both(r, "/api/v1/schema.json", axum::routing::get(openapi::schema));
    let r = crate::both(r, "/api/v1/", axum::routing::any(not_found));
    r.layer(axum::middleware::from_fn_with_state(state, csrf_cookie))
}
