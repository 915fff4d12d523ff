//! The flow executor over HTTP: JSON at `/api/v1/flows/executor/<slug>/`, HTML forms at
//! `/if/flow/<slug>/`. Both hand the same answers to the same core executor.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Json;
use axum_extra::extract::CookieJar;
use latchkey_core::flow::{Effects, FlowResponse};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

use crate::error::{WebError, WebResult};
use crate::request::{Caller, REMEMBER_COOKIE, SESSION_COOKIE};
use crate::state::AppState;

fn parse_query(raw: Option<&str>) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()).into_owned().collect()
}

/// The executor's `?query=<url-encoded original query>`; plain parameters are accepted too.
fn executor_query(raw: Option<String>) -> BTreeMap<String, String> {
    let mut params = parse_query(raw.as_deref());
    match params.remove("query") {
        Some(inner) => parse_query(Some(&inner)),
        None => params,
    }
}

fn validate_slug(slug: &str) -> WebResult<()> {
    if slug.is_empty() || slug.len() > 100 || !slug.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(WebError::not_found(format!("flow '{}' not found", slug.chars().take(100).collect::<String>())));
    }
    Ok(())
}

/// Applies session cookie changes the flow asked for, and counts logins.
fn apply_effects(caller: &Caller, mut jar: CookieJar, effects: &Effects) -> CookieJar {
    if effects.clear_session {
        jar = jar.add(caller.removal(SESSION_COOKIE));
    }
    if let Some(value) = &effects.set_session {
        jar = jar.add(caller.cookie(SESSION_COOKIE, value.clone()));
    }
    if let Some((value, seconds)) = &effects.remember_device {
        let mut cookie = caller.cookie(REMEMBER_COOKIE, value.clone());
        cookie.set_max_age(time::Duration::seconds(*seconds));
        jar = jar.add(cookie);
    }
    if effects.logins_ok > 0 {
        metrics::counter!("latchkey_logins_total", "result" => "ok").increment(effects.logins_ok.into());
    }
    if effects.logins_failed > 0 {
        metrics::counter!("latchkey_logins_total", "result" => "failed").increment(effects.logins_failed.into());
    }
    jar
}

/// The status a challenge is answered with: 429 while throttled, 400 for a malformed answer.
fn status_of(response: &FlowResponse) -> StatusCode {
    if response.effects.retry_after.is_some() {
        StatusCode::TOO_MANY_REQUESTS
    } else if response.malformed {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    }
}

/// Adds `Retry-After` when the flow was throttled.
fn with_retry_after(mut out: Response, retry_after: Option<u64>) -> Response {
    if let Some(secs) = retry_after {
        out.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
    }
    out
}

fn json_response(caller: &Caller, jar: CookieJar, response: FlowResponse) -> Response {
    let jar = apply_effects(caller, jar, &response.effects);
    let status = status_of(&response);
    let retry = response.effects.retry_after;
    with_retry_after((status, jar, Json(response.challenge)).into_response(), retry)
}

/// The flow's current challenge for this browser (starting the flow if needed), with the
/// flow cookie and the jar that carries it.
async fn current_challenge(
    state: &AppState,
    caller: &Caller,
    slug: &str,
    query: BTreeMap<String, String>,
) -> WebResult<(String, CookieJar, FlowResponse)> {
    validate_slug(slug)?;
    let (flow_cookie, jar) = caller.flow_cookie();
    let response = state.core.flows.get(&Caller::flow_key(&flow_cookie), slug, query, &caller.request_info()).await?;
    Ok((flow_cookie, jar, response))
}

pub async fn executor_get(
    State(state): State<AppState>,
    caller: Caller,
    Path(slug): Path<String>,
    RawQuery(raw): RawQuery,
) -> WebResult<Response> {
    let (_, jar, response) = current_challenge(&state, &caller, &slug, executor_query(raw)).await?;
    Ok(json_response(&caller, jar, response))
}

pub async fn executor_post(
    State(state): State<AppState>,
    caller: Caller,
    Path(slug): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> WebResult<Response> {
    validate_slug(&slug)?;
    // A JSON content type cannot be sent cross-site without a CORS preflight, which we never
    // grant: that is what makes this cookie-keyed endpoint safe without a CSRF token.
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.starts_with("application/json") {
        return Err(WebError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Send the answer as JSON with Content-Type: application/json.",
        ));
    }
    let answer: Value = serde_json::from_slice(&body).map_err(|e| {
        WebError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("The body is not valid JSON: {e}."))
    })?;
    if !answer.is_object() {
        return Err(WebError::new(StatusCode::BAD_REQUEST, "invalid_json", "The answer must be a JSON object."));
    }
    let (flow_cookie, jar) = caller.flow_cookie();
    let response =
        state.core.flows.submit(&Caller::flow_key(&flow_cookie), &slug, answer, &caller.request_info()).await?;
    Ok(json_response(&caller, jar, response))
}

/// Renders a challenge as a page, or follows a redirect. `answers` is the submitted form
/// when answering a POST.
fn html_response(
    state: &AppState,
    caller: &Caller,
    jar: CookieJar,
    flow_cookie: &str,
    action: &str,
    response: FlowResponse,
    answers: Option<&Map<String, Value>>,
) -> WebResult<Response> {
    let jar = apply_effects(caller, jar, &response.effects);
    let status = status_of(&response);
    let retry = response.effects.retry_after;
    let challenge = response.challenge;
    if challenge.component == "redirect" {
        let to = challenge.data.get("to").and_then(Value::as_str).unwrap_or("/if/user/");
        // 303 after a form POST (the browser must GET the target), 302 otherwise.
        let redirect = if answers.is_some() { Redirect::to(to).into_response() } else { found(to) };
        return Ok((jar, redirect).into_response());
    }
    // Never echo secrets back into the page.
    let answers: Option<Map<String, Value>> = answers
        .map(|a| a.iter().filter(|(k, _)| !k.contains("password")).map(|(k, v)| (k.clone(), v.clone())).collect());
    let page = state.render(
        "flow.html",
        minijinja::context! {
            challenge => challenge,
            stage_template => state.templates.stage_template(&challenge.component),
            csrf_token => state.core.keys.csrf.sign(flow_cookie.as_bytes()),
            action => action,
            answers => answers,
        },
    )?;
    let status = if challenge.component == "access_denied" { StatusCode::FORBIDDEN } else { status };
    let page = (status, jar, [(header::CACHE_CONTROL, "no-store")], Html(page)).into_response();
    Ok(with_retry_after(page, retry))
}

fn page_action(slug: &str, raw: &Option<String>) -> String {
    match raw {
        Some(q) if !q.is_empty() => format!("/if/flow/{slug}/?{q}"),
        _ => format!("/if/flow/{slug}/"),
    }
}

pub async fn page_get(
    State(state): State<AppState>,
    caller: Caller,
    Path(slug): Path<String>,
    RawQuery(raw): RawQuery,
) -> WebResult<Response> {
    let (flow_cookie, jar, response) = current_challenge(&state, &caller, &slug, parse_query(raw.as_deref())).await?;
    html_response(&state, &caller, jar, &flow_cookie, &page_action(&slug, &raw), response, None)
}

pub async fn page_post(
    State(state): State<AppState>,
    caller: Caller,
    Path(slug): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> WebResult<Response> {
    validate_slug(&slug)?;
    let form = std::str::from_utf8(&body).map_err(|_| WebError::bad_request("The form is not valid UTF-8."))?;
    let mut answer: Map<String, Value> =
        url::form_urlencoded::parse(form.as_bytes()).into_owned().map(|(k, v)| (k, Value::String(v))).collect();
    let token = answer.remove("csrf_token").and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    // The CSRF token is bound to the browser's flow cookie: no cookie, no valid token.
    let flow_cookie = caller.jar.get(crate::request::FLOW_COOKIE).map(|c| c.value().to_string());
    let valid = flow_cookie.as_deref().is_some_and(|c| state.core.keys.csrf.verify(c.as_bytes(), &token));
    if !valid {
        return Err(WebError::forbidden(
            "The form expired or did not come from this site (CSRF check failed). Reload the page and try again.",
        ));
    }
    let flow_cookie = flow_cookie.unwrap_or_default();
    let jar = caller.jar.clone();
    let response = state
        .core
        .flows
        .submit(&Caller::flow_key(&flow_cookie), &slug, Value::Object(answer.clone()), &caller.request_info())
        .await?;
    let action = page_action(&slug, &raw);
    let refused = !response.challenge.errors.is_empty() || response.malformed;
    if refused || response.challenge.component == "redirect" || response.challenge.component == "access_denied" {
        return html_response(&state, &caller, jar, &flow_cookie, &action, response, Some(&answer));
    }
    // Post/redirect/get: a reload must not resubmit the form.
    let jar = apply_effects(&caller, jar, &response.effects);
    Ok((jar, Redirect::to(&action)).into_response())
}

/// A plain 302 Found (axum's `Redirect::to` is 303, meant for answers to POSTs).
pub fn found(to: &str) -> Response {
    match header::HeaderValue::from_str(to) {
        Ok(location) => (StatusCode::FOUND, [(header::LOCATION, location)]).into_response(),
        Err(_) => WebError::bad_request("invalid redirect target").into_response(),
    }
}

/// `?next=` for the login flow, pointing back at `path`.
pub fn login_url(path_and_query: &str) -> String {
    let next: String = url::form_urlencoded::byte_serialize(path_and_query.as_bytes()).collect();
    format!("/if/flow/{}/?next={next}", latchkey_core::flow::LOGIN_FLOW)
}

pub async fn fallback() -> WebError {
    WebError::not_found("There is nothing at this address.")
}
