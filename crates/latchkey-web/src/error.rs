//! One error type for the HTTP layer and the one table mapping errors to status codes.
//! Errors render as JSON (`{"error", "message", "fields", "request_id"}`) or as an HTML page,
//! by what the request accepts.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use latchkey_core::error::FieldErrors;
use latchkey_core::{CoreError, StoreError};
use serde_json::json;

use crate::meta::RequestMeta;

#[derive(Debug)]
pub struct WebError {
    pub status: StatusCode,
    /// Machine-readable code, e.g. `not_found`.
    pub code: &'static str,
    /// One sentence for people.
    pub message: String,
    pub fields: FieldErrors,
}

impl WebError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        WebError { status, code, message: message.into(), fields: FieldErrors::new() }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
}

impl From<CoreError> for WebError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::Invalid { message, fields } => {
                WebError { status: StatusCode::BAD_REQUEST, code: "invalid", message, fields }
            }
            CoreError::NotFound(what) => WebError::not_found(format!("{what} not found")),
            CoreError::Conflict(msg) => WebError::new(StatusCode::CONFLICT, "conflict", msg),
            CoreError::Forbidden(msg) => WebError::forbidden(msg),
            CoreError::Store(StoreError::Unavailable(reason)) => {
                tracing::warn!(%reason, "store unavailable");
                WebError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "The database is unavailable; try again shortly.",
                )
            }
            CoreError::Store(StoreError::NotFound(what)) => WebError::not_found(format!("{what} not found")),
            CoreError::Store(StoreError::Conflict(msg)) => WebError::new(StatusCode::CONFLICT, "conflict", msg),
            other => {
                tracing::error!(error = %other, "request failed");
                WebError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Something went wrong on our side.")
            }
        }
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let meta = RequestMeta::current();
        if meta.html {
            let page = crate::templates::render_error(self.status, &self.message, &meta.id);
            return (self.status, Html(page)).into_response();
        }
        let body = json!({
            "error": self.code,
            "message": self.message,
            "fields": self.fields,
            "request_id": meta.id,
        });
        (self.status, axum::Json(body)).into_response()
    }
}

pub type WebResult<T> = Result<T, WebError>;
