//! `/api/v1/{applications,providers,outposts,flows,stages,policies,bindings}/`: the
//! configuration objects, edited through the core's `objects` service (which validates them
//! exactly as a blueprint entry). Each object has the blueprint entry's fields plus `id` and
//! `created_at`.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use latchkey_core::objects::{self, ObjectKind};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    expected_version, paginate, parse_id, with_etag, Admin, ApiResult, ErrorBody, JsonBody, ListParams, Pagination,
};
use crate::state::AppState;

/// An application: a tile in "My applications" and what access policies attach to.
#[derive(Serialize, ToSchema)]
pub struct ApplicationObject {
    pub id: Uuid,
    pub name: String,
    /// Unique; appears in URLs.
    pub slug: String,
    /// The provider's name, or `null` (a bookmark tile).
    pub provider: Option<String>,
    pub provider_id: Option<Uuid>,
    /// `blank://blank` hides the tile.
    pub launch_url: Option<String>,
    pub icon: Option<String>,
    pub description: String,
    pub group: Option<String>,
    /// `any` or `all`.
    pub policy_engine_mode: String,
    pub open_in_new_tab: bool,
    /// Groups bound to the application; when sent, exactly these.
    pub allowed_groups: Vec<String>,
    #[serde(serialize_with = "super::timestamp")]
    pub created_at: DateTime<Utc>,
}

/// A provider: `proxy` (forward auth), `oauth2` (OpenID Connect) or `ldap`. Fields of other
/// types are refused. An `oauth2` provider created without `client_id` (and, when
/// confidential, `client_secret`) gets generated ones.
#[derive(Serialize, ToSchema)]
pub struct ProviderObject {
    pub id: Uuid,
    pub name: String,
    /// `proxy`, `oauth2` or `ldap`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Flow slug (default `default-provider-authorization-implicit-consent`).
    pub authorization_flow: Option<String>,
    /// proxy: `forward_single` or `forward_domain`.
    pub mode: Option<String>,
    pub external_host: Option<String>,
    pub cookie_domain: Option<String>,
    pub internal_host: Option<String>,
    pub skip_path_regex: Option<String>,
    /// proxy: ordered access rules (`name`, `domain`, `resources`, `methods`, `networks`,
    /// `subject`, `policy`: bypass, one_factor, two_factor or deny).
    #[schema(value_type = Option<Vec<Object>>)]
    pub access_rules: Option<Value>,
    /// proxy: OAuth2 providers (name or client_id) whose access tokens pass as Bearer.
    pub jwt_federation_providers: Option<Vec<String>>,
    /// proxy: whether `Authorization: Basic/Bearer` is checked when there is no session.
    pub intercept_header_auth: Option<bool>,
    /// Seconds, or authentik's `minutes=5` when sent.
    #[schema(value_type = Option<Object>)]
    pub access_token_validity: Option<Value>,
    /// oauth2: `confidential` or `public`.
    pub client_type: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub redirect_uris: Option<Vec<String>>,
    pub signing_alg: Option<String>,
    pub sub_mode: Option<String>,
    pub scopes: Option<Vec<String>>,
    #[schema(value_type = Option<Object>)]
    pub refresh_token_validity: Option<Value>,
    /// oauth2: extra claims from CEL expressions (`name`, `expression`, optional `scope`).
    #[schema(value_type = Option<Vec<Object>>)]
    pub claims: Option<Value>,
    /// oauth2: where back-channel logout tokens are POSTed.
    pub backchannel_logout_uri: Option<String>,
    /// oauth2: the client's public keys (a JWKS: `{"keys": [...]}`, RSA ≥ 2048 bits, EC P-256/P-384
    /// or Ed25519; public parameters only) for `private_key_jwt` client authentication.
    #[schema(value_type = Option<Object>)]
    pub jwks: Option<Value>,
    /// oauth2: `client_secret_basic`, `client_secret_post`, `private_key_jwt` or `none`, the only
    /// method then accepted; unset: the secret either way, or `private_key_jwt` when `jwks` is set.
    pub token_endpoint_auth_method: Option<String>,
    /// ldap
    pub base_dn: Option<String>,
    pub bind_flow: Option<String>,
    pub search_group: Option<String>,
    pub mfa_support: Option<bool>,
    /// ldap: whether anonymous binds may search.
    pub anonymous_search: Option<bool>,
    /// Slug of the application using this provider (read-only).
    pub assigned_application: Option<String>,
    #[serde(serialize_with = "super::timestamp")]
    pub created_at: DateTime<Utc>,
}

/// An outpost and the providers it serves (`embedded` runs in this process).
#[derive(Serialize, ToSchema)]
pub struct OutpostObject {
    pub id: Uuid,
    pub name: String,
    /// `proxy` or `ldap`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Provider names.
    pub providers: Vec<String>,
    pub provider_ids: Vec<Uuid>,
    #[schema(value_type = Object)]
    pub config: Value,
    #[serde(serialize_with = "super::timestamp")]
    pub created_at: DateTime<Utc>,
}

/// A flow and its stages in order.
#[derive(Serialize, ToSchema)]
pub struct FlowObject {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub title: String,
    /// authentication, authorization, enrollment, recovery, invalidation, stage_configuration, unenrollment.
    pub designation: String,
    /// none, require_authenticated, require_unauthenticated, require_superuser.
    pub authentication: Option<String>,
    pub denied_action: Option<String>,
    pub policy_engine_mode: Option<String>,
    /// Stage names, or `{stage, evaluate_on_plan, re_evaluate_policies, policy_engine_mode}`.
    #[schema(value_type = Vec<Object>)]
    pub stages: Vec<Value>,
    #[serde(serialize_with = "super::timestamp")]
    pub created_at: DateTime<Utc>,
}

/// A configured stage.
#[derive(Serialize, ToSchema)]
pub struct StageObject {
    pub id: Uuid,
    pub name: String,
    /// The stage handler, e.g. `identification`, `password`, `user_login`.
    pub kind: String,
    #[schema(value_type = Object)]
    pub config: Value,
    #[serde(serialize_with = "super::timestamp")]
    pub created_at: DateTime<Utc>,
}

/// A reusable policy.
#[derive(Serialize, ToSchema)]
pub struct PolicyObject {
    pub id: Uuid,
    pub name: String,
    /// expression, password, password_expiry, reputation, user, group_membership.
    pub kind: String,
    #[schema(value_type = Object)]
    pub config: Value,
    pub execution_logging: bool,
    #[serde(serialize_with = "super::timestamp")]
    pub created_at: DateTime<Utc>,
}

/// A policy, user or group bound to a flow, a stage in a flow or an application.
#[derive(Serialize, ToSchema)]
pub struct BindingObject {
    pub id: Uuid,
    /// One of `{"flow": slug}`, `{"application": slug}`, `{"stage_binding": {"flow", "stage"}}`.
    #[schema(value_type = Object)]
    pub target: Value,
    pub policy: Option<String>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub order: i64,
    pub negate: bool,
    pub enabled: bool,
    pub timeout_ms: i64,
    pub failure_result: bool,
    #[serde(serialize_with = "super::timestamp")]
    pub created_at: DateTime<Utc>,
}

async fn list_of(state: &AppState, kind: ObjectKind, raw: Option<&str>) -> ApiResult<Response> {
    let params = ListParams::parse(raw, kind.ordering_fields())?;
    let page = objects::list(&state.core, kind, &params.query).await?;
    Ok(Json(paginate(&params.query, page)).into_response())
}

async fn create_of(state: &AppState, admin: &Admin, kind: ObjectKind, body: JsonBody) -> ApiResult<Response> {
    let view = objects::create(&state.core, kind, body.0, &admin.client).await?;
    Ok(with_etag(StatusCode::CREATED, &view))
}

async fn retrieve_of(state: &AppState, kind: ObjectKind, id: &str) -> ApiResult<Response> {
    let view = objects::get(&state.core, kind, parse_id(id, kind.noun())?).await?;
    Ok(with_etag(StatusCode::OK, &view))
}

async fn update_of(
    state: &AppState,
    admin: &Admin,
    kind: ObjectKind,
    id: &str,
    headers: &HeaderMap,
    mut body: JsonBody,
) -> ApiResult<Response> {
    let id = parse_id(id, kind.noun())?;
    let expected = expected_version(headers, &mut body);
    let view = objects::update(&state.core, kind, id, body.0, expected.as_deref(), &admin.client).await?;
    Ok(with_etag(StatusCode::OK, &view))
}

async fn destroy_of(state: &AppState, admin: &Admin, kind: ObjectKind, id: &str) -> ApiResult<StatusCode> {
    objects::delete(&state.core, kind, parse_id(id, kind.noun())?, &admin.client).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The five handlers of one kind, each documented for the OpenAPI schema.
macro_rules! object_api {
    ($module:ident, $kind:expr, $collection:literal, $item:literal, $tag:literal, $object:ident, $list:ident) => {
        #[derive(Serialize, ToSchema)]
        pub struct $list {
            pub pagination: Pagination,
            pub results: Vec<$object>,
        }

        pub mod $module {
            use super::*;

            /// List (search, ordering, page, page_size).
            #[utoipa::path(get, path = $collection, tag = $tag,
                params(("search" = Option<String>, Query), ("ordering" = Option<String>, Query),
                    ("page" = Option<u32>, Query), ("page_size" = Option<u32>, Query)),
                responses((status = 200, body = $list), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
            pub async fn list(State(state): State<AppState>, _admin: Admin, RawQuery(raw): RawQuery) -> ApiResult<Response> {
                list_of(&state, $kind, raw.as_deref()).await
            }

            /// Create.
            #[utoipa::path(post, path = $collection, tag = $tag, request_body(content = Object, description = "The object's fields, as in a blueprint entry"),
                responses((status = 201, body = $object), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
            pub async fn create(State(state): State<AppState>, admin: Admin, body: JsonBody) -> ApiResult<Response> {
                create_of(&state, &admin, $kind, body).await
            }

            /// Retrieve one.
            #[utoipa::path(get, path = $item, tag = $tag, params(("id" = Uuid, Path)),
                responses((status = 200, body = $object, headers(("ETag" = String))), (status = 404, body = ErrorBody)))]
            pub async fn retrieve(State(state): State<AppState>, _admin: Admin, Path(id): Path<String>) -> ApiResult<Response> {
                retrieve_of(&state, $kind, &id).await
            }

            /// Change some fields; `If-Match` (or `version`) refuses a stale edit with 409.
            #[utoipa::path(patch, path = $item, tag = $tag, params(("id" = Uuid, Path)),
                request_body(content = Object, description = "Fields to change"),
                responses((status = 200, body = $object), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
            pub async fn update(
                State(state): State<AppState>,
                admin: Admin,
                Path(id): Path<String>,
                headers: HeaderMap,
                body: JsonBody,
            ) -> ApiResult<Response> {
                update_of(&state, &admin, $kind, &id, &headers, body).await
            }

            /// Delete.
            #[utoipa::path(delete, path = $item, tag = $tag, params(("id" = Uuid, Path)),
                responses((status = 204), (status = 404, body = ErrorBody)))]
            pub async fn destroy(State(state): State<AppState>, admin: Admin, Path(id): Path<String>) -> ApiResult<StatusCode> {
                destroy_of(&state, &admin, $kind, &id).await
            }

            pub fn routes(r: Router<AppState>) -> Router<AppState> {
                let r = crate::both(r, $collection, get(list).post(create));
                crate::both(r, $item, get(retrieve).patch(update).delete(destroy))
            }
        }
    };
}

object_api!(
    applications,
    ObjectKind::Application,
    "/api/v1/applications/",
    "/api/v1/applications/{id}/",
    "applications",
    ApplicationObject,
    ApplicationList
);
object_api!(
    providers,
    ObjectKind::Provider,
    "/api/v1/providers/",
    "/api/v1/providers/{id}/",
    "providers",
    ProviderObject,
    ProviderList
);
object_api!(
    outposts,
    ObjectKind::Outpost,
    "/api/v1/outposts/",
    "/api/v1/outposts/{id}/",
    "outposts",
    OutpostObject,
    OutpostList
);
object_api!(flows, ObjectKind::Flow, "/api/v1/flows/", "/api/v1/flows/{id}/", "flows", FlowObject, FlowList);
object_api!(stages, ObjectKind::Stage, "/api/v1/stages/", "/api/v1/stages/{id}/", "stages", StageObject, StageList);
object_api!(
    policies,
    ObjectKind::Policy,
    "/api/v1/policies/",
    "/api/v1/policies/{id}/",
    "policies",
    PolicyObject,
    PolicyList
);
object_api!(
    bindings,
    ObjectKind::Binding,
    "/api/v1/bindings/",
    "/api/v1/bindings/{id}/",
    "bindings",
    BindingObject,
    BindingList
);

pub fn routes(r: Router<AppState>) -> Router<AppState> {
    let r = applications::routes(r);
    let r = providers::routes(r);
    let r = outposts::routes(r);
    let r = flows::routes(r);
    let r = stages::routes(r);
    let r = policies::routes(r);
    bindings::routes(r)
}
