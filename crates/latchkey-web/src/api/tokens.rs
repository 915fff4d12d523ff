//! `/api/v1/tokens/`: API tokens. The secret is returned once, when the token is created.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use latchkey_core::model::{Token, TokenKind};
use latchkey_core::objects::page_values;
use latchkey_core::CoreError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{paginate, parse_id, Admin, ApiResult, ErrorBody, JsonBody, ListParams, Pagination};
use crate::state::AppState;

pub const ORDERING: &[&str] = &["created_at", "expires_at", "user", "description"];

#[derive(Serialize, ToSchema)]
pub struct TokenOut {
    pub id: Uuid,
    pub user_id: Option<Uuid>,
    /// The owner's username.
    pub user: Option<String>,
    pub description: String,
    #[serde(serialize_with = "super::timestamp")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "super::optional_timestamp")]
    pub expires_at: Option<DateTime<Utc>>,
    pub expired: bool,
}

#[derive(Serialize, ToSchema)]
pub struct TokenCreated {
    #[serde(flatten)]
    pub token: TokenOut,
    /// The bearer secret (`lk_api_…`); shown only in this answer.
    pub key: String,
}

#[derive(Serialize, ToSchema)]
pub struct TokenList {
    pub pagination: Pagination,
    pub results: Vec<TokenOut>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    /// The owner's id; default: the caller.
    pub user: Option<Uuid>,
    #[serde(default)]
    pub description: String,
    /// Seconds until it expires; default: never.
    pub expires_in: Option<i64>,
}

fn token_out(t: Token, users: &HashMap<Uuid, String>, now: DateTime<Utc>) -> TokenOut {
    TokenOut {
        id: t.id,
        user_id: t.user_id,
        user: t.user_id.and_then(|u| users.get(&u).cloned()),
        description: t.description,
        created_at: t.created_at,
        expired: t.expires_at.is_some_and(|e| e <= now),
        expires_at: t.expires_at,
    }
}

async fn usernames(state: &AppState, tokens: &[Token]) -> ApiResult<HashMap<Uuid, String>> {
    let mut out = HashMap::new();
    for id in tokens.iter().filter_map(|t| t.user_id) {
        if let std::collections::hash_map::Entry::Vacant(e) = out.entry(id) {
            if let Some(u) = state.core.store.get_user(id).await.map_err(CoreError::from_store)? {
                e.insert(u.username);
            }
        }
    }
    Ok(out)
}

async fn api_tokens(state: &AppState) -> ApiResult<(Vec<TokenOut>, ())> {
    let tokens: Vec<Token> =
        state.core.tokens.list(None).await?.into_iter().filter(|t| t.kind == TokenKind::Api).collect();
    let users = usernames(state, &tokens).await?;
    let now = state.core.clock.now();
    Ok((tokens.into_iter().map(|t| token_out(t, &users, now)).collect(), ()))
}

/// List API tokens (never their secrets).
#[utoipa::path(get, path = "/api/v1/tokens/", tag = "tokens",
    params(("search" = Option<String>, Query, description = "Substring of description or username"), ("ordering" = Option<String>, Query),
        ("page" = Option<u32>, Query), ("page_size" = Option<u32>, Query), ("user" = Option<String>, Query, description = "Owner's username")),
    responses((status = 200, body = TokenList), (status = 400, body = ErrorBody)))]
pub async fn list(State(state): State<AppState>, _admin: Admin, RawQuery(raw): RawQuery) -> ApiResult<Response> {
    let params = ListParams::parse(raw.as_deref(), ORDERING)?;
    let (tokens, ()) = api_tokens(&state).await?;
    let owner = params.get("user").map(str::to_lowercase);
    let values: Vec<serde_json::Value> = tokens
        .into_iter()
        .filter(|t| owner.as_ref().is_none_or(|o| t.user.as_deref().map(str::to_lowercase).as_ref() == Some(o)))
        .filter_map(|t| serde_json::to_value(t).ok())
        .collect();
    let page = page_values(values, &params.query, &["description", "user"], "-created_at");
    Ok(Json(paginate(&params.query, page)).into_response())
}

/// Create an API token; the answer's `key` is the only time the secret is shown.
#[utoipa::path(post, path = "/api/v1/tokens/", tag = "tokens", request_body = TokenCreate,
    responses((status = 201, body = TokenCreated), (status = 422, body = ErrorBody)))]
pub async fn create(State(state): State<AppState>, admin: Admin, body: JsonBody) -> ApiResult<Response> {
    let input: TokenCreate = body.parse()?;
    if input.description.chars().count() > 200 {
        return Err(super::invalid("description", "at most 200 characters"));
    }
    let validity = match input.expires_in {
        Some(s) if s < 60 => return Err(super::invalid("expires_in", "must be at least 60 seconds")),
        Some(s) if s > 10 * 365 * 24 * 3600 => return Err(super::invalid("expires_in", "must be at most 10 years")),
        Some(s) => Some(chrono::Duration::seconds(s)),
        None => None,
    };
    let owner_id = input.user.unwrap_or(admin.user_id);
    let owner = state
        .core
        .store
        .get_user(owner_id)
        .await
        .map_err(CoreError::from_store)?
        .ok_or_else(|| super::invalid("user", format!("user {owner_id} does not exist")))?;
    let (key, token) = state.core.tokens.create_api_token(&owner, validity, &input.description, &admin.client).await?;
    let users: HashMap<Uuid, String> = [(owner.id, owner.username.clone())].into_iter().collect();
    let out = TokenCreated { token: token_out(token, &users, state.core.clock.now()), key };
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// One API token.
#[utoipa::path(get, path = "/api/v1/tokens/{id}/", tag = "tokens", params(("id" = Uuid, Path)),
    responses((status = 200, body = TokenOut), (status = 404, body = ErrorBody)))]
pub async fn retrieve(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<TokenOut>> {
    let id = parse_id(&id, "token")?;
    let (tokens, ()) = api_tokens(&state).await?;
    let found = tokens.into_iter().find(|t| t.id == id).ok_or_else(|| CoreError::NotFound(format!("token {id}")))?;
    Ok(Json(found))
}

/// Revoke an API token.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}/", tag = "tokens", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn destroy(State(state): State<AppState>, admin: Admin, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let id = parse_id(&id, "token")?;
    state.core.tokens.delete_api_token(id, &admin.client).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub fn routes(r: Router<AppState>) -> Router<AppState> {
    let r = crate::both(r, "/api/v1/tokens/", get(list).post(create));
    crate::both(r, "/api/v1/tokens/{id}/", get(retrieve).delete(destroy))
}
