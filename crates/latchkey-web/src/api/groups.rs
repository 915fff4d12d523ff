//! `/api/v1/groups/`: groups, their nesting (`parent`) and members.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use latchkey_core::model::{Group, Page};
use latchkey_core::version::check_version;
use latchkey_core::CoreError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{expected_version, paginate, parse_id, with_etag, Admin, ApiResult, JsonBody, ListParams};
use crate::state::AppState;

pub const ORDERING: &[&str] = &["name", "created_at"];

#[derive(Serialize, ToSchema)]
pub struct GroupOut {
    pub id: Uuid,
    pub name: String,
    /// The parent group's id; `null` for a top-level group.
    pub parent: Option<Uuid>,
    pub parent_name: Option<String>,
    /// Members (and members of groups nested below) are superusers.
    pub is_superuser: bool,
    #[schema(value_type = Object)]
    pub attributes: Value,
    pub gid_number: i64,
    #[serde(serialize_with = "super::timestamp")]
    pub created_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct GroupList {
    pub pagination: super::Pagination,
    pub results: Vec<GroupOut>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupCreate {
    pub name: String,
    /// The parent group's id.
    pub parent: Option<Uuid>,
    #[serde(default)]
    pub is_superuser: bool,
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<Value>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupPatch {
    pub name: Option<String>,
    /// `null` makes the group top-level.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Uuid>)]
    pub parent: Option<Option<Uuid>>,
    pub is_superuser: Option<bool>,
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<Value>,
    pub version: Option<String>,
}

fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A user to add or remove: `pk` as authentik's `add_user` takes it.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberRef {
    pub pk: Uuid,
}

#[derive(Serialize, ToSchema)]
pub struct MemberOut {
    pub id: Uuid,
    pub username: String,
    pub name: String,
    pub is_active: bool,
}

fn group_out(g: Group, tree: &latchkey_core::groups::Tree) -> GroupOut {
    GroupOut {
        parent_name: g.parent_id.and_then(|p| tree.by_id.get(&p)).map(|p| p.name.clone()),
        id: g.id,
        name: g.name,
        parent: g.parent_id,
        is_superuser: g.is_superuser,
        attributes: g.attributes,
        gid_number: g.gid_number,
        created_at: g.created_at,
    }
}

async fn tree(state: &AppState) -> ApiResult<std::sync::Arc<latchkey_core::groups::Tree>> {
    Ok(state.core.groups.tree().await.map_err(CoreError::from_store)?)
}

async fn load(state: &AppState, id: &str) -> ApiResult<Group> {
    let id = parse_id(id, "group")?;
    Ok(state
        .core
        .store
        .get_group(id)
        .await
        .map_err(CoreError::from_store)?
        .ok_or_else(|| CoreError::NotFound(format!("group {id}")))?)
}

/// List groups.
#[utoipa::path(get, path = "/api/v1/groups/", tag = "groups",
    params(("search" = Option<String>, Query), ("ordering" = Option<String>, Query, description = "name, created_at"),
        ("page" = Option<u32>, Query), ("page_size" = Option<u32>, Query)),
    responses((status = 200, body = GroupList), (status = 400, body = super::ErrorBody)))]
pub async fn list(State(state): State<AppState>, _admin: Admin, RawQuery(raw): RawQuery) -> ApiResult<Response> {
    let params = ListParams::parse(raw.as_deref(), ORDERING)?;
    let page = state.core.directory.list_groups(&params.query).await?;
    let tree = tree(&state).await?;
    let items = page.items.into_iter().map(|g| group_out(g, &tree)).collect();
    Ok(Json(paginate(&params.query, Page { items, total: page.total })).into_response())
}

/// Create a group.
#[utoipa::path(post, path = "/api/v1/groups/", tag = "groups", request_body = GroupCreate,
    responses((status = 201, body = GroupOut), (status = 409, body = super::ErrorBody), (status = 422, body = super::ErrorBody)))]
pub async fn create(State(state): State<AppState>, admin: Admin, body: JsonBody) -> ApiResult<Response> {
    let input: GroupCreate = body.parse()?;
    if input.attributes.as_ref().is_some_and(|a| !a.is_object()) {
        return Err(super::invalid("attributes", "must be a JSON object"));
    }
    let dir = &state.core.directory;
    let parent = match input.parent {
        Some(id) => Some(
            state
                .core
                .store
                .get_group(id)
                .await
                .map_err(CoreError::from_store)?
                .ok_or_else(|| super::invalid("parent", format!("group {id} does not exist")))?
                .name,
        ),
        None => None,
    };
    let mut group = dir.create_group(&input.name, parent.as_deref(), input.is_superuser, &admin.client).await?;
    if let Some(a) = input.attributes {
        group.attributes = a;
        dir.update_group(&group, &admin.client).await?;
    }
    let tree = tree(&state).await?;
    Ok(with_etag(StatusCode::CREATED, &group_out(group, &tree)))
}

/// One group.
#[utoipa::path(get, path = "/api/v1/groups/{id}/", tag = "groups", params(("id" = Uuid, Path)),
    responses((status = 200, body = GroupOut, headers(("ETag" = String))), (status = 404, body = super::ErrorBody)))]
pub async fn retrieve(State(state): State<AppState>, _admin: Admin, Path(id): Path<String>) -> ApiResult<Response> {
    let group = load(&state, &id).await?;
    let tree = tree(&state).await?;
    Ok(with_etag(StatusCode::OK, &group_out(group, &tree)))
}

/// Change a group (name, parent, superuser flag, attributes).
#[utoipa::path(patch, path = "/api/v1/groups/{id}/", tag = "groups", params(("id" = Uuid, Path)), request_body = GroupPatch,
    responses((status = 200, body = GroupOut), (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody), (status = 422, body = super::ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    headers: HeaderMap,
    mut body: JsonBody,
) -> ApiResult<Response> {
    let expected = expected_version(&headers, &mut body);
    let patch: GroupPatch = body.parse()?;
    let mut group = load(&state, &id).await?;
    check_version(&group_out(group.clone(), &*tree(&state).await?), expected.as_deref())?;
    if let Some(v) = patch.name {
        group.name = v;
    }
    if let Some(v) = patch.parent {
        group.parent_id = v;
    }
    if let Some(v) = patch.is_superuser {
        group.is_superuser = v;
    }
    if let Some(v) = patch.attributes {
        if !v.is_object() {
            return Err(super::invalid("attributes", "must be a JSON object"));
        }
        group.attributes = v;
    }
    state.core.directory.update_group(&group, &admin.client).await?;
    let group = load(&state, &id).await?;
    Ok(with_etag(StatusCode::OK, &group_out(group, &*tree(&state).await?)))
}

/// Delete a group; its children become top-level.
#[utoipa::path(delete, path = "/api/v1/groups/{id}/", tag = "groups", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
pub async fn destroy(State(state): State<AppState>, admin: Admin, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let group = load(&state, &id).await?;
    state.core.directory.delete_group(&group.name, &admin.client).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Direct members of the group.
#[utoipa::path(get, path = "/api/v1/groups/{id}/members/", tag = "groups", params(("id" = Uuid, Path)),
    responses((status = 200, body = Vec<MemberOut>), (status = 404, body = super::ErrorBody)))]
pub async fn members(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<MemberOut>>> {
    let group = load(&state, &id).await?;
    let store = &state.core.store;
    let mut out = Vec::new();
    for uid in store.direct_member_ids(group.id).await.map_err(CoreError::from_store)? {
        if let Some(u) = store.get_user(uid).await.map_err(CoreError::from_store)? {
            out.push(MemberOut { id: u.id, username: u.username, name: u.name, is_active: u.is_active });
        }
    }
    out.sort_by_key(|a| a.username.to_lowercase());
    Ok(Json(out))
}

async fn member_change(state: &AppState, admin: &Admin, id: &str, body: JsonBody, add: bool) -> ApiResult<StatusCode> {
    let input: MemberRef = body.parse()?;
    let group = load(state, id).await?;
    let user = state
        .core
        .store
        .get_user(input.pk)
        .await
        .map_err(CoreError::from_store)?
        .ok_or_else(|| super::invalid("pk", format!("user {} does not exist", input.pk)))?;
    let dir = &state.core.directory;
    if add {
        dir.add_member(&group.name, &user.username, &admin.client).await?;
    } else {
        dir.remove_member(&group.name, &user.username, &admin.client).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Add a user to the group.
#[utoipa::path(post, path = "/api/v1/groups/{id}/add_user/", tag = "groups", params(("id" = Uuid, Path)), request_body = MemberRef,
    responses((status = 204), (status = 404, body = super::ErrorBody), (status = 422, body = super::ErrorBody)))]
pub async fn add_user(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    body: JsonBody,
) -> ApiResult<StatusCode> {
    member_change(&state, &admin, &id, body, true).await
}

/// Remove a user from the group (refused with 409 for the last superuser).
#[utoipa::path(post, path = "/api/v1/groups/{id}/remove_user/", tag = "groups", params(("id" = Uuid, Path)), request_body = MemberRef,
    responses((status = 204), (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
pub async fn remove_user(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    body: JsonBody,
) -> ApiResult<StatusCode> {
    member_change(&state, &admin, &id, body, false).await
}

pub fn routes(r: Router<AppState>) -> Router<AppState> {
    let both = crate::both;
    let r = both(r, "/api/v1/groups/", get(list).post(create));
    let r = both(r, "/api/v1/groups/{id}/", get(retrieve).patch(update).delete(destroy));
    let r = both(r, "/api/v1/groups/{id}/members/", get(members));
    let r = both(r, "/api/v1/groups/{id}/add_user/", post(add_user));
    both(r, "/api/v1/groups/{id}/remove_user/", post(remove_user))
}
