//! `/recovery/use-token/<token>/`: a one-time login link made by `latchkey recovery-link`.
//! Showing the page never uses the token (mail scanners prefetch links); pressing the
//! button does.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Redirect, Response};
use latchkey_core::model::TokenKind;
use serde_json::json;

use crate::error::{WebError, WebResult};
use crate::request::{Caller, FLOW_COOKIE, SESSION_COOKIE};
use crate::state::AppState;

const INVALID: &str = "This recovery link is invalid, expired or already used.";

pub async fn confirm(State(state): State<AppState>, caller: Caller, Path(token): Path<String>) -> WebResult<Response> {
    let core = &state.core;
    let Some(found) = core.tokens.find(TokenKind::Recovery, &token).await? else {
        return Err(WebError::not_found(INVALID));
    };
    let Some(user) = found.user_id.map(|id| core.directory.get_user(id)) else {
        return Err(WebError::not_found(INVALID));
    };
    let user = user.await?;
    let (flow_cookie, jar) = caller.flow_cookie();
    let page = state.render(
        "recovery.html",
        minijinja::context! {
            username => user.username,
            action => format!("/recovery/use-token/{token}/"),
            csrf_token => core.keys.csrf.sign(flow_cookie.as_bytes()),
        },
    )?;
    Ok((jar, [(header::CACHE_CONTROL, "no-store")], Html(page)).into_response())
}

const EMAIL_LINK_INVALID: &str =
    "This confirmation link is invalid, expired or already used. Change your email again to get a new one.";

/// `/if/user/confirm-email/<token>/`: showing the page changes nothing; the button does.
pub async fn email_confirm_page(
    State(state): State<AppState>,
    caller: Caller,
    Path(token): Path<String>,
) -> WebResult<Response> {
    let services = state.core.flows.services();
    let Some((_, user, email)) = latchkey_core::flow::email::pending_email_change(services, &token).await? else {
        return Err(WebError::not_found(EMAIL_LINK_INVALID));
    };
    let (flow_cookie, jar) = caller.flow_cookie();
    let page = state.render(
        "confirm_email.html",
        minijinja::context! {
            username => user.username,
            email => email,
            action => format!("/if/user/confirm-email/{token}/"),
            csrf_token => state.core.keys.csrf.sign(flow_cookie.as_bytes()),
        },
    )?;
    Ok((jar, [(header::CACHE_CONTROL, "no-store")], Html(page)).into_response())
}

pub async fn email_confirm(
    State(state): State<AppState>,
    caller: Caller,
    Path(token): Path<String>,
    body: Bytes,
) -> WebResult<Response> {
    check_form_csrf(&state, &caller, &body)?;
    let services = state.core.flows.services();
    let Some(user) = latchkey_core::flow::email::confirm_email_change(services, &token, &caller.client()).await? else {
        return Err(WebError::not_found(EMAIL_LINK_INVALID));
    };
    let page = state.render(
        "confirm_email.html",
        minijinja::context! { done => true, email => user.email, username => user.username },
    )?;
    Ok(([(header::CACHE_CONTROL, "no-store")], Html(page)).into_response())
}

/// Refuses a form POST whose CSRF token is not bound to this browser's flow cookie.
fn check_form_csrf(state: &AppState, caller: &Caller, body: &[u8]) -> WebResult<()> {
    let form: std::collections::HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let token = form.get("csrf_token").map(String::as_str).unwrap_or("");
    let ok = caller.jar.get(FLOW_COOKIE).is_some_and(|c| state.core.keys.csrf.verify(c.value().as_bytes(), token));
    if ok {
        Ok(())
    } else {
        Err(WebError::forbidden("The form expired or did not come from this site (CSRF check failed)."))
    }
}

pub async fn redeem(
    State(state): State<AppState>,
    caller: Caller,
    Path(token): Path<String>,
    body: Bytes,
) -> WebResult<Response> {
    check_form_csrf(&state, &caller, &body)?;
    let core = &state.core;
    let Some(found) = core.tokens.find(TokenKind::Recovery, &token).await? else {
        return Err(WebError::not_found(INVALID));
    };
    let Some(user_id) = found.user_id else { return Err(WebError::not_found(INVALID)) };
    let user = core.directory.get_user(user_id).await?;
    if !user.is_active {
        return Err(WebError::forbidden("This account is disabled."));
    }
    if !core.tokens.consume(&found).await? {
        return Err(WebError::not_found(INVALID));
    }
    if let Some(old) = caller.session_cookie() {
        core.sessions.revoke_cookie(&old).await?;
    }
    let client = caller.client();
    let (cookie, session) = core.sessions.create(&user, vec!["recovery".into()], &client).await?;
    core.directory.record_login(&user).await?;
    core.events
        .record(
            "login",
            Some(&user),
            &client,
            json!({ "method": "recovery_link", "token_id": found.id, "session": session.id }),
        )
        .await;
    let jar = caller.jar.clone().add(caller.cookie(SESSION_COOKIE, cookie));
    Ok((jar, Redirect::to("/if/user/")).into_response())
}
