//! `/api/v1/users/`: the directory's users, with password, sessions, MFA devices,
//! recovery links, app passwords and group membership.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use latchkey_core::directory::UserInput;
use latchkey_core::model::{AuthenticatorDevice, Page, Session, User, UserKind};
use latchkey_core::version::check_version;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{expected_version, paginate, parse_id, with_etag, Admin, ApiResult, JsonBody, ListParams, Paginated};
use crate::state::AppState;

pub const ORDERING: &[&str] = &["username", "name", "email", "created_at", "last_login"];

#[derive(Serialize, ToSchema)]
pub struct UserOut {
    pub id: Uuid,
    pub username: String,
    pub name: String,
    pub email: Option<String>,
    pub is_active: bool,
    /// `internal` or `service_account`.
    #[serde(rename = "type")]
    pub kind: String,
    /// In a superuser group, directly or through nesting.
    pub is_superuser: bool,
    /// Names of the groups the user is directly a member of.
    pub groups: Vec<String>,
    #[schema(value_type = Object)]
    pub attributes: Value,
    pub uid_number: i64,
    #[serde(serialize_with = "super::timestamp")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "super::optional_timestamp")]
    pub last_login: Option<DateTime<Utc>>,
    #[serde(serialize_with = "super::optional_timestamp")]
    pub password_changed_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
pub struct UserList {
    pub pagination: super::Pagination,
    pub results: Vec<UserOut>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserCreate {
    pub username: String,
    pub name: Option<String>,
    pub email: Option<String>,
    /// Plain text; hashed with argon2id.
    pub password: Option<String>,
    /// Group names.
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(rename = "type")]
    #[schema(value_type = Option<String>)]
    pub kind: Option<UserKind>,
    pub is_active: Option<bool>,
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<Value>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    pub username: Option<String>,
    pub name: Option<String>,
    /// `null` removes the address.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub email: Option<Option<String>>,
    pub is_active: Option<bool>,
    #[serde(rename = "type")]
    #[schema(value_type = Option<String>)]
    pub kind: Option<UserKind>,
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<Value>,
    /// When given, exactly these groups (names) are the user's direct groups.
    pub groups: Option<Vec<String>>,
    /// The version (`ETag`) the edit started from; `If-Match` works too.
    pub version: Option<String>,
}

fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPassword {
    pub password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoveryRequest {
    /// Seconds the link stays valid (default 3600, at most 7 days).
    pub expires_in: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct RecoveryLink {
    pub link: String,
    #[serde(serialize_with = "super::timestamp")]
    pub expires_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct SessionOut {
    pub id: String,
    #[serde(serialize_with = "super::timestamp")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "super::timestamp")]
    pub last_seen: DateTime<Utc>,
    #[serde(serialize_with = "super::timestamp")]
    pub expires_at: DateTime<Utc>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub amr: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DeviceOut {
    pub id: Uuid,
    /// `totp`, `static` or `webauthn`.
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub confirmed: bool,
    #[serde(serialize_with = "super::timestamp")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "super::optional_timestamp")]
    pub last_used_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
pub struct Revoked {
    /// How many were ended.
    pub revoked: u64,
}

fn session_out(s: Session) -> SessionOut {
    SessionOut {
        id: s.id,
        created_at: s.created_at,
        last_seen: s.last_seen,
        expires_at: s.expires_at,
        client_ip: s.client_ip,
        user_agent: s.user_agent,
        amr: s.amr,
    }
}

fn device_out(d: AuthenticatorDevice) -> DeviceOut {
    DeviceOut {
        id: d.id,
        kind: d.kind.as_str().into(),
        name: d.name,
        confirmed: d.confirmed,
        created_at: d.created_at,
        last_used_at: d.last_used_at,
    }
}

/// Views of users: group names and the superuser flag from one copy of the group tree.
async fn views(state: &AppState, users: Vec<User>) -> ApiResult<Vec<UserOut>> {
    let core = &state.core;
    let tree = core.groups.tree().await.map_err(latchkey_core::CoreError::from_store)?;
    let mut out = Vec::with_capacity(users.len());
    for u in users {
        let ids = core.store.direct_group_ids(u.id).await.map_err(latchkey_core::CoreError::from_store)?;
        let mut groups: Vec<String> = ids.iter().filter_map(|id| tree.by_id.get(id)).map(|g| g.name.clone()).collect();
        groups.sort();
        let is_superuser = tree.with_ancestors(&ids).iter().any(|g| g.is_superuser);
        out.push(UserOut {
            id: u.id,
            username: u.username,
            name: u.name,
            email: u.email,
            is_active: u.is_active,
            kind: u.kind.as_str().into(),
            is_superuser,
            groups,
            attributes: u.attributes,
            uid_number: u.uid_number,
            created_at: u.created_at,
            last_login: u.last_login,
            password_changed_at: u.password_changed_at,
        });
    }
    Ok(out)
}

async fn view(state: &AppState, user: User) -> ApiResult<UserOut> {
    Ok(views(state, vec![user]).await?.remove(0))
}

async fn load(state: &AppState, id: &str) -> ApiResult<User> {
    Ok(state.core.directory.get_user(parse_id(id, "user")?).await?)
}

/// List users.
#[utoipa::path(get, path = "/api/v1/users/", tag = "users",
    params(
        ("search" = Option<String>, Query, description = "Substring of username, name or email"),
        ("ordering" = Option<String>, Query, description = "username, name, email, created_at, last_login; -field descends"),
        ("page" = Option<u32>, Query), ("page_size" = Option<u32>, Query),
    ),
    responses((status = 200, body = UserList), (status = 400, body = super::ErrorBody), (status = 401, body = super::ErrorBody), (status = 403, body = super::ErrorBody)))]
pub async fn list(State(state): State<AppState>, _admin: Admin, RawQuery(raw): RawQuery) -> ApiResult<Response> {
    let params = ListParams::parse(raw.as_deref(), ORDERING)?;
    let page = state.core.directory.list_users(&params.query).await?;
    let results = views(&state, page.items).await?;
    let body: Paginated<UserOut> = paginate(&params.query, Page { items: results, total: page.total });
    Ok(Json(body).into_response())
}

/// Create a user.
#[utoipa::path(post, path = "/api/v1/users/", tag = "users", request_body = UserCreate,
    responses((status = 201, body = UserOut), (status = 409, body = super::ErrorBody), (status = 422, body = super::ErrorBody)))]
pub async fn create(State(state): State<AppState>, admin: Admin, body: JsonBody) -> ApiResult<Response> {
    let input: UserCreate = body.parse()?;
    let attributes = input.attributes.clone();
    if attributes.as_ref().is_some_and(|a| !a.is_object()) {
        return Err(super::invalid("attributes", "must be a JSON object"));
    }
    let core = &state.core;
    let mut user = core
        .directory
        .create_user(
            UserInput {
                username: input.username,
                name: input.name,
                email: input.email,
                password: input.password,
                groups: input.groups,
                kind: input.kind,
                is_active: input.is_active,
            },
            &admin.client,
        )
        .await?;
    if let Some(a) = attributes {
        user.attributes = a;
        core.directory.update_user(&user, &admin.client).await?;
    }
    Ok(with_etag(StatusCode::CREATED, &view(&state, user).await?))
}

/// One user.
#[utoipa::path(get, path = "/api/v1/users/{id}/", tag = "users", params(("id" = Uuid, Path)),
    responses((status = 200, body = UserOut, headers(("ETag" = String))), (status = 404, body = super::ErrorBody)))]
pub async fn retrieve(State(state): State<AppState>, _admin: Admin, Path(id): Path<String>) -> ApiResult<Response> {
    let user = load(&state, &id).await?;
    Ok(with_etag(StatusCode::OK, &view(&state, user).await?))
}

/// Change a user; `If-Match` (or `version`) refuses a stale edit with 409.
#[utoipa::path(patch, path = "/api/v1/users/{id}/", tag = "users", params(("id" = Uuid, Path)), request_body = UserPatch,
    responses((status = 200, body = UserOut), (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody), (status = 422, body = super::ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    headers: HeaderMap,
    mut body: JsonBody,
) -> ApiResult<Response> {
    let expected = expected_version(&headers, &mut body);
    let patch: UserPatch = body.parse()?;
    let mut user = load(&state, &id).await?;
    let current = view(&state, user.clone()).await?;
    check_version(&current, expected.as_deref())?;
    let dir = &state.core.directory;
    if let Some(v) = patch.username {
        user.username = v;
    }
    if let Some(v) = patch.name {
        user.name = v;
    }
    if let Some(v) = patch.email {
        user.email = v.map(|e| e.trim().to_string()).filter(|e| !e.is_empty());
    }
    if let Some(v) = patch.is_active {
        user.is_active = v;
    }
    if let Some(v) = patch.kind {
        user.kind = v;
    }
    if let Some(v) = patch.attributes {
        if !v.is_object() {
            return Err(super::invalid("attributes", "must be a JSON object"));
        }
        user.attributes = v;
    }
    if let Some(groups) = &patch.groups {
        // Resolve every name first, so a typo changes nothing.
        for g in groups {
            dir.require_group(g).await.map_err(|_| super::invalid("groups", format!("group '{g}' does not exist")))?;
        }
    }
    dir.update_user(&user, &admin.client).await?;
    if let Some(groups) = patch.groups {
        let wanted: Vec<String> = groups.iter().map(|g| g.to_lowercase()).collect();
        for g in &groups {
            if !current.groups.iter().any(|c| c.eq_ignore_ascii_case(g)) {
                dir.add_member(g, &user.username, &admin.client).await?;
            }
        }
        for g in &current.groups {
            if !wanted.contains(&g.to_lowercase()) {
                dir.remove_member(g, &user.username, &admin.client).await?;
            }
        }
    }
    let user = load(&state, &id).await?;
    Ok(with_etag(StatusCode::OK, &view(&state, user).await?))
}

/// Delete a user (refused with 409 for the last active superuser).
#[utoipa::path(delete, path = "/api/v1/users/{id}/", tag = "users", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
pub async fn destroy(State(state): State<AppState>, admin: Admin, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let user = load(&state, &id).await?;
    state.core.directory.delete_user(&user.username, &admin.client).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Set a user's password (ends their sessions).
#[utoipa::path(post, path = "/api/v1/users/{id}/set_password/", tag = "users", params(("id" = Uuid, Path)), request_body = SetPassword,
    responses((status = 204), (status = 404, body = super::ErrorBody), (status = 422, body = super::ErrorBody)))]
pub async fn set_password(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    body: JsonBody,
) -> ApiResult<StatusCode> {
    let input: SetPassword = body.parse()?;
    let user = load(&state, &id).await?;
    state.core.directory.set_password(&user, &input.password, &admin.client).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A one-time login link for the user.
#[utoipa::path(post, path = "/api/v1/users/{id}/recovery_link/", tag = "users", params(("id" = Uuid, Path)), request_body = RecoveryRequest,
    responses((status = 201, body = RecoveryLink), (status = 404, body = super::ErrorBody), (status = 422, body = super::ErrorBody)))]
pub async fn recovery_link(
    State(state): State<AppState>,
    admin: Admin,
    caller: crate::request::Caller,
    Path(id): Path<String>,
    body: JsonBody,
) -> ApiResult<Response> {
    let input: RecoveryRequest = body.parse()?;
    let seconds = input.expires_in.unwrap_or(3600);
    if !(60..=7 * 24 * 3600).contains(&seconds) {
        return Err(super::invalid("expires_in", "must be from 60 seconds to 7 days"));
    }
    let user = load(&state, &id).await?;
    let validity = chrono::Duration::seconds(seconds);
    let expires_at = state.core.clock.now() + validity;
    let token = state.core.tokens.create_recovery_token(&user, validity, &admin.client).await?;
    let link = format!("{}/recovery/use-token/{token}/", caller.origin);
    Ok((StatusCode::CREATED, Json(RecoveryLink { link, expires_at })).into_response())
}

/// The user's sessions.
#[utoipa::path(get, path = "/api/v1/users/{id}/sessions/", tag = "users", params(("id" = Uuid, Path)),
    responses((status = 200, body = Vec<SessionOut>), (status = 404, body = super::ErrorBody)))]
pub async fn sessions(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<SessionOut>>> {
    let user = load(&state, &id).await?;
    Ok(Json(state.core.sessions.list(Some(user.id)).await?.into_iter().map(session_out).collect()))
}

/// End every session of the user.
#[utoipa::path(delete, path = "/api/v1/users/{id}/sessions/", tag = "users", params(("id" = Uuid, Path)),
    responses((status = 200, body = Revoked), (status = 404, body = super::ErrorBody)))]
pub async fn revoke_sessions(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Revoked>> {
    let user = load(&state, &id).await?;
    let revoked = state.core.sessions.revoke_user(user.id).await?;
    state
        .core
        .events
        .record("sessions_revoked", Some(&user), &admin.client, serde_json::json!({ "count": revoked }))
        .await;
    Ok(Json(Revoked { revoked }))
}

/// End one session of the user.
#[utoipa::path(delete, path = "/api/v1/users/{id}/sessions/{session_id}/", tag = "users",
    params(("id" = Uuid, Path), ("session_id" = String, Path)),
    responses((status = 204), (status = 404, body = super::ErrorBody)))]
pub async fn revoke_session(
    State(state): State<AppState>,
    admin: Admin,
    Path((id, session_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let user = load(&state, &id).await?;
    let sessions = state.core.sessions.list(Some(user.id)).await?;
    let session = sessions
        .into_iter()
        .find(|s| s.id == session_id)
        .ok_or_else(|| super::ApiError(crate::error::WebError::not_found(format!("session {session_id} not found"))))?;
    state.core.sessions.revoke(&session.key_hash).await?;
    state
        .core
        .events
        .record("session_revoked", Some(&user), &admin.client, serde_json::json!({ "session": session.id }))
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The user's MFA devices.
#[utoipa::path(get, path = "/api/v1/users/{id}/devices/", tag = "users", params(("id" = Uuid, Path)),
    responses((status = 200, body = Vec<DeviceOut>), (status = 404, body = super::ErrorBody)))]
pub async fn devices(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<DeviceOut>>> {
    let user = load(&state, &id).await?;
    Ok(Json(state.core.mfa.list(user.id).await?.into_iter().map(device_out).collect()))
}

/// Remove one of the user's MFA devices.
#[utoipa::path(delete, path = "/api/v1/users/{id}/devices/{device_id}/", tag = "users",
    params(("id" = Uuid, Path), ("device_id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = super::ErrorBody)))]
pub async fn remove_device(
    State(state): State<AppState>,
    admin: Admin,
    Path((id, device_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let user = load(&state, &id).await?;
    let device_id = parse_id(&device_id, "device")?;
    state.core.mfa.remove(&user, device_id, &admin.client).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct AppPasswordOut {
    pub id: Uuid,
    pub name: String,
    /// Slugs of the applications it opens; `null`: every application the user may use.
    pub applications: Option<Vec<String>>,
    #[serde(serialize_with = "super::timestamp")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "super::optional_timestamp")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "super::optional_timestamp")]
    pub last_used_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppPasswordCreate {
    pub name: String,
    /// Application slugs; empty or absent: every application.
    #[serde(default)]
    pub applications: Vec<String>,
    /// Validity such as `90d`, `12h`; absent: never expires.
    pub expires: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AppPasswordCreated {
    #[serde(flatten)]
    pub app_password: AppPasswordOut,
    /// The secret, shown only in this answer.
    pub secret: String,
}

async fn app_password_out(state: &AppState, p: latchkey_core::app_passwords::AppPassword) -> ApiResult<AppPasswordOut> {
    let applications = state.core.app_passwords.scope_slugs(&p).await?;
    Ok(AppPasswordOut {
        id: p.id,
        name: p.name,
        applications,
        created_at: p.created_at,
        expires_at: p.expires_at,
        last_used_at: p.last_used_at,
    })
}

/// The user's app passwords (for Basic authentication through forward auth).
#[utoipa::path(get, path = "/api/v1/users/{id}/app_passwords/", tag = "users", params(("id" = Uuid, Path)),
    responses((status = 200, body = Vec<AppPasswordOut>), (status = 404, body = super::ErrorBody)))]
pub async fn app_passwords(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<AppPasswordOut>>> {
    let user = load(&state, &id).await?;
    let mut out = Vec::new();
    for p in state.core.app_passwords.list(&user).await? {
        out.push(app_password_out(&state, p).await?);
    }
    Ok(Json(out))
}

/// Create an app password for the user; the secret is in this answer only.
#[utoipa::path(post, path = "/api/v1/users/{id}/app_passwords/", tag = "users", params(("id" = Uuid, Path)),
    request_body = AppPasswordCreate,
    responses((status = 201, body = AppPasswordCreated), (status = 404, body = super::ErrorBody),
        (status = 409, body = super::ErrorBody), (status = 422, body = super::ErrorBody)))]
pub async fn create_app_password(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    body: JsonBody,
) -> ApiResult<Response> {
    let input: AppPasswordCreate = body.parse()?;
    let user = load(&state, &id).await?;
    let expires_in = match input.expires.as_deref() {
        None => None,
        Some(text) => Some(latchkey_core::app_passwords::parse_expiry(text).ok_or_else(|| {
            latchkey_core::CoreError::invalid_field(
                "expires",
                format!("'{text}' is not a validity such as 90d or 12h."),
            )
        })?),
    };
    let applications = state.core.app_passwords.applications_by_slug(&input.applications).await?;
    let new = latchkey_core::app_passwords::NewAppPassword { name: input.name, applications, expires_in };
    let (secret, record) = state.core.app_passwords.create(&user, new, &admin.client).await?;
    let created = AppPasswordCreated { app_password: app_password_out(&state, record).await?, secret };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// Revoke one of the user's app passwords.
#[utoipa::path(delete, path = "/api/v1/users/{id}/app_passwords/{app_password_id}/", tag = "users",
    params(("id" = Uuid, Path), ("app_password_id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = super::ErrorBody)))]
pub async fn revoke_app_password(
    State(state): State<AppState>,
    admin: Admin,
    Path((id, password_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let user = load(&state, &id).await?;
    let password_id = parse_id(&password_id, "app password")?;
    state.core.app_passwords.revoke_id(&user, password_id, &admin.client).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub fn routes(r: Router<AppState>) -> Router<AppState> {
    let both = crate::both;
    let r = both(r, "/api/v1/users/", get(list).post(create));
    let r = both(r, "/api/v1/users/{id}/", get(retrieve).patch(update).delete(destroy));
    let r = both(r, "/api/v1/users/{id}/set_password/", post(set_password));
    let r = both(r, "/api/v1/users/{id}/recovery_link/", post(recovery_link));
    let r = both(r, "/api/v1/users/{id}/sessions/", get(sessions).delete(revoke_sessions));
    let r = both(r, "/api/v1/users/{id}/sessions/{session_id}/", delete(revoke_session));
    let r = both(r, "/api/v1/users/{id}/devices/", get(devices));
    let r = both(r, "/api/v1/users/{id}/devices/{device_id}/", delete(remove_device));
    let r = both(r, "/api/v1/users/{id}/app_passwords/", get(app_passwords).post(create_app_password));
    both(r, "/api/v1/users/{id}/app_passwords/{app_password_id}/", delete(revoke_app_password))
}
