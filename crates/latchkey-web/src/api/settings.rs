//! `/api/v1/settings/`: system settings (branding, avatars, default flows, self-service).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use latchkey_core::system_settings;
use serde::Serialize;
use utoipa::ToSchema;

use super::{expected_version, with_etag, Admin, ApiResult, ErrorBody, JsonBody};
use crate::state::AppState;

/// The system settings.
#[derive(Serialize, ToSchema)]
pub struct SettingsOut {
    pub branding_title: String,
    pub branding_logo: String,
    pub branding_favicon: String,
    /// `none`, `initials`, `gravatar`, or `null` to follow the `avatars` configuration key.
    pub avatars: Option<String>,
    pub default_authentication_flow: String,
    pub default_invalidation_flow: String,
    pub default_recovery_flow: String,
    pub default_enrollment_flow: String,
    pub default_user_settings_flow: String,
    pub default_user_change_name: bool,
    pub default_user_change_email: bool,
    pub event_retention_days: u32,
}

/// Read the settings.
#[utoipa::path(get, path = "/api/v1/settings/", tag = "settings",
    responses((status = 200, body = SettingsOut, headers(("ETag" = String))), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn retrieve(State(state): State<AppState>, _admin: Admin) -> ApiResult<Response> {
    Ok(with_etag(StatusCode::OK, &system_settings::get(&state.core).await?))
}

/// Change some settings; `If-Match` (or `version`) refuses a stale edit with 409.
#[utoipa::path(patch, path = "/api/v1/settings/", tag = "settings", request_body(content = Object, description = "Settings to change"),
    responses((status = 200, body = SettingsOut), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    mut body: JsonBody,
) -> ApiResult<Response> {
    let expected = expected_version(&headers, &mut body);
    let next = system_settings::update(&state.core, body.0, expected.as_deref(), &admin.client).await?;
    Ok(with_etag(StatusCode::OK, &next))
}

pub fn routes(r: Router<AppState>) -> Router<AppState> {
    crate::both(r, "/api/v1/settings/", get(retrieve).patch(update))
}
