//! `/if/user/`: the user portal (for now: who is logged in).

use axum::extract::{OriginalUri, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

use crate::error::WebResult;
use crate::flows::{found, login_url};
use crate::request::Caller;
use crate::state::AppState;

pub async fn portal(
    State(state): State<AppState>,
    caller: Caller,
    OriginalUri(uri): OriginalUri,
) -> WebResult<Response> {
    let Some(active) = caller.session.as_ref() else {
        let here = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/if/user/");
        return Ok(found(&login_url(here)));
    };
    let user = &active.user;
    let page = state.render(
        "user.html",
        minijinja::context! {
            user => minijinja::context! {
                username => user.username, name => user.name, email => user.email,
                groups => user.groups, is_superuser => user.is_superuser,
            },
            session => minijinja::context! {
                created_at => active.session.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
                client_ip => active.session.client_ip,
            },
        },
    )?;
    Ok(([(header::CACHE_CONTROL, "no-store")], Html(page)).into_response())
}

pub async fn root(caller: Caller) -> Response {
    if caller.session.is_some() {
        found("/if/user/")
    } else {
        found(&login_url("/if/user/"))
    }
}
