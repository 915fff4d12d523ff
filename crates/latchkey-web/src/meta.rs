//! Per-request facts every layer may need without threading them through: the request id
//! (in every log line and error page) and whether the client wants HTML.

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

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

pub async fn middleware(req: Request, next: Next) -> Response {
    // 62 random bits (the half of a v4 UUID that holds no version field), as 16 hex digits.
    let id = format!("{:016x}", uuid::Uuid::new_v4().as_u64_pair().1);
    let meta = RequestMeta { id: id.clone(), html: wants_html(&req) };
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    let mut response = META.scope(meta, next.run(req).instrument(span)).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}
