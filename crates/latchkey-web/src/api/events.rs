//! `/api/v1/events/`: the audit log, read-only, newest first.

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use latchkey_core::model::{Event, EventFilter, Page};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{bad_request, paginate, Admin, ApiResult, ErrorBody, ListParams, Pagination};
use crate::state::AppState;

pub const ORDERING: &[&str] = &["created_at", "action", "username"];

#[derive(Serialize, ToSchema)]
pub struct EventOut {
    pub id: Uuid,
    #[serde(serialize_with = "super::timestamp")]
    pub created_at: DateTime<Utc>,
    /// e.g. `login`, `login_failed`, `user_created`, `model_updated`.
    pub action: String,
    /// Whom the event is about.
    pub user_id: Option<Uuid>,
    pub username: Option<String>,
    pub client_ip: Option<String>,
    /// Details; `actor` names the administrator who made a change.
    #[schema(value_type = Object)]
    pub context: Value,
}

#[derive(Serialize, ToSchema)]
pub struct EventList {
    pub pagination: Pagination,
    pub results: Vec<EventOut>,
}

fn event_out(e: Event) -> EventOut {
    EventOut {
        id: e.id,
        created_at: e.created_at,
        action: e.action,
        user_id: e.user_id,
        username: e.username,
        client_ip: e.client_ip,
        context: e.context,
    }
}

fn time(params: &ListParams, key: &str) -> ApiResult<Option<DateTime<Utc>>> {
    params
        .get(key)
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| bad_request(key, format!("'{v}' is not an RFC 3339 time such as 2026-01-31T12:00:00Z")))
        })
        .transpose()
}

/// List audit events, filtered by action, user, application and time.
#[utoipa::path(get, path = "/api/v1/events/", tag = "events",
    params(("search" = Option<String>, Query, description = "Substring of action, username or client address"),
        ("ordering" = Option<String>, Query, description = "created_at (default -created_at), action, username"),
        ("page" = Option<u32>, Query), ("page_size" = Option<u32>, Query),
        ("action" = Option<String>, Query), ("username" = Option<String>, Query),
        ("user" = Option<Uuid>, Query, description = "The user's id"),
        ("application" = Option<String>, Query, description = "Application slug named in the event"),
        ("since" = Option<String>, Query, description = "RFC 3339, inclusive"), ("until" = Option<String>, Query, description = "RFC 3339, exclusive")),
    responses((status = 200, body = EventList), (status = 400, body = ErrorBody)))]
pub async fn list(State(state): State<AppState>, _admin: Admin, RawQuery(raw): RawQuery) -> ApiResult<Response> {
    let params = ListParams::parse(raw.as_deref(), ORDERING)?;
    let user_id = params
        .get("user")
        .map(|v| v.parse::<Uuid>().map_err(|_| bad_request("user", format!("'{v}' is not a user id"))))
        .transpose()?;
    let filter = EventFilter {
        action: params.get("action").map(String::from),
        user_id,
        username: params.get("username").map(String::from),
        since: time(&params, "since")?,
        until: time(&params, "until")?,
        application: params.get("application").map(String::from),
    };
    let page =
        state.core.store.list_events(&filter, &params.query).await.map_err(latchkey_core::CoreError::from_store)?;
    let items = page.items.into_iter().map(event_out).collect();
    Ok(Json(paginate(&params.query, Page { items, total: page.total })).into_response())
}

pub fn routes(r: Router<AppState>) -> Router<AppState> {
    crate::both(r, "/api/v1/events/", get(list))
}
