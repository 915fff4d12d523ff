//! Per-request facts every layer may need without threading them through: the request id
//! (in every log line and error page) and whether the client wants HTML.

use axum::body::HttpBody;
use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;
use tracing::Instrument;

/// Headers every answer carries unless its handler set its own.
const SECURITY_HEADERS: [(HeaderName, &str); 4] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
         object-src 'none'; base-uri 'self'; frame-ancestors 'none'",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "same-origin"),
    (header::X_FRAME_OPTIONS, "DENY"),
];

#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub id: String,
    pub html: bool,
}

tokio::task_local! {
    static META: RequestMeta;
}

impl RequestMeta {
    /// The current request's meta; outside a request, an empty one.
    pub fn current() -> RequestMeta {
        META.try_with(Clone::clone).unwrap_or_default()
    }
}

/// Browsers ask for HTML; API paths always get JSON.
pub fn wants_html(req: &Request) -> bool {
    if req.uri().path().starts_with("/api/") {
        return false;
    }
    req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|accept| accept.contains("text/html"))
}

/// Around every request: its id (in the log span, the task-local meta and the `x-request-id`
/// answer header), the security headers, and the request metrics.
pub async fn middleware(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = crate::metrics::method_label(req.method());
    // The route pattern, never the raw path: unbounded label values would grow memory.
    let route = req.extensions().get::<MatchedPath>().cloned();
    // 62 random bits (the half of a v4 UUID that holds no version field), as 16 hex digits.
    let id = format!("{:016x}", uuid::Uuid::new_v4().as_u64_pair().1);
    let meta = RequestMeta { id: id.clone(), html: wants_html(&req) };
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    let mut response = META.scope(meta, next.run(req).instrument(span)).await;
    // They govern how a page is shown: an answer without a body (a forward-auth verdict, a
    // redirect) has nothing for them to govern, and forward auth is answered thousands of
    // times a second.
    let has_body = response.body().size_hint().exact() != Some(0);
    let headers = response.headers_mut();
    if has_body {
        for (name, value) in SECURITY_HEADERS {
            headers.entry(name).or_insert_with(|| HeaderValue::from_static(value));
        }
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        headers.insert("x-request-id", v);
    }
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    crate::metrics::record(route, method, response.status().as_u16(), start.elapsed().as_secs_f64());
    response
}
