//! OpenID Connect / OAuth 2 endpoints under `/application/o/`, laid out as authentik's are:
//! per-application discovery, JWKS and end-session; shared authorize, token, userinfo,
//! introspect and revoke endpoints. Protocol errors are RFC 6749-shaped JSON on the back
//! channel; on the front channel an unknown client or an unregistered `redirect_uri` gets an
//! error page (never a redirect), anything else goes back to the client as `?error=`.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use latchkey_core::flow::{completion_key, COMPLETION};
use latchkey_core::keys::random_secret;
use latchkey_core::oauth::assertion::SIGNING_ALGS;
use latchkey_core::oauth::{check_pkce, Client, ClientCredentials, ClientType, Grant, GrantError, OAuthError, CLAIMS};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use url::Url;

use crate::error::{WebError, WebResult};
use crate::flows::{found, login_url};
use crate::request::Caller;
use crate::state::AppState;

const PREFIX: &str = "/application/o";
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// Our own marker on the authorize URL the authorization flow returns to.
const RETURN_PARAM: &str = "lk_completion";
/// How confidential clients authenticate at the back-channel endpoints (public clients send
/// only their `client_id`).
const AUTH_METHODS: [&str; 3] = ["client_secret_basic", "client_secret_post", "private_key_jwt"];
/// Longest parameter value accepted.
const MAX_PARAM: usize = 4096;

fn both(router: Router<AppState>, path: &str, method: MethodRouter<AppState>) -> Router<AppState> {
    let bare = path.trim_end_matches('/');
    let router = router.route(path, method.clone());
    if bare == path {
        router
    } else {
        router.route(bare, method)
    }
}

pub fn routes() -> Router<AppState> {
    let r = Router::new();
    let r = both(r, &format!("{PREFIX}/{{slug}}/.well-known/openid-configuration"), get(discovery));
    let r = both(r, &format!("{PREFIX}/{{slug}}/jwks/"), get(jwks));
    let r = both(r, &format!("{PREFIX}/{{slug}}/end-session/"), get(end_session));
    let r = both(r, &format!("{PREFIX}/authorize/"), get(authorize));
    let r = both(r, &format!("{PREFIX}/token/"), axum::routing::post(token));
    let r = both(r, &format!("{PREFIX}/userinfo/"), get(userinfo).post(userinfo));
    let r = both(r, &format!("{PREFIX}/introspect/"), axum::routing::post(introspect));
    let r = both(r, &format!("{PREFIX}/device/"), axum::routing::post(device_authorization));
    let r = both(r, "/if/device/", get(device_page).post(device_submit));
    both(r, &format!("{PREFIX}/revoke/"), axum::routing::post(revoke))
}

/// Parameters of a query or form body; a repeated parameter is refused (RFC 6749 §3.1).
fn params(raw: &[u8]) -> Result<BTreeMap<String, String>, OAuthError> {
    let mut out = BTreeMap::new();
    for (k, v) in url::form_urlencoded::parse(raw) {
        if v.len() > MAX_PARAM || k.len() > 100 {
            return Err(OAuthError::invalid_request(format!("The parameter '{k}' is too long.")));
        }
        if v.is_empty() {
            continue;
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(OAuthError::invalid_request(format!("The parameter '{k}' is repeated.")));
        }
    }
    Ok(out)
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

fn oauth_error(e: OAuthError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut r = (status, Json(json!({ "error": e.error, "error_description": e.description }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"latchkey\""));
    }
    no_store(r)
}

fn grant_error(e: GrantError) -> Response {
    match e {
        GrantError::OAuth(e) => oauth_error(e),
        GrantError::Core(e) => WebError::from(e).into_response(),
    }
}

async fn client_for_slug(state: &AppState, slug: &str) -> WebResult<Arc<Client>> {
    state.core.oauth.client_by_slug(slug).await?.ok_or_else(|| {
        WebError::not_found(format!("No OAuth2 application '{}'.", slug.chars().take(100).collect::<String>()))
    })
}

async fn discovery(State(state): State<AppState>, caller: Caller, Path(slug): Path<String>) -> WebResult<Response> {
    let client = client_for_slug(&state, &slug).await?;
    let o = caller.origin.trim_end_matches('/');
    let body = json!({
        "issuer": client.issuer(o),
        "authorization_endpoint": format!("{o}{PREFIX}/authorize/"),
        "token_endpoint": format!("{o}{PREFIX}/token/"),
        "userinfo_endpoint": format!("{o}{PREFIX}/userinfo/"),
        "introspection_endpoint": format!("{o}{PREFIX}/introspect/"),
        "revocation_endpoint": format!("{o}{PREFIX}/revoke/"),
        "end_session_endpoint": format!("{o}{PREFIX}/{}/end-session/", client.app.slug),
        "jwks_uri": format!("{o}{PREFIX}/{}/jwks/", client.app.slug),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query", "form_post"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials", DEVICE_GRANT],
        "device_authorization_endpoint": format!("{o}{PREFIX}/device/"),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [client.alg_name()],
        "scopes_supported": client.scopes,
        "claims_supported": CLAIMS,
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": SIGNING_ALGS,
        "introspection_endpoint_auth_methods_supported": AUTH_METHODS,
        "introspection_endpoint_auth_signing_alg_values_supported": SIGNING_ALGS,
        "revocation_endpoint_auth_methods_supported": AUTH_METHODS,
        "revocation_endpoint_auth_signing_alg_values_supported": SIGNING_ALGS,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        "claims_parameter_supported": false,
        "prompt_values_supported": ["none", "login", "consent"],
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
    });
    Ok(([(header::CACHE_CONTROL, "public, max-age=300")], Json(body)).into_response())
}

async fn jwks(State(state): State<AppState>, Path(slug): Path<String>) -> WebResult<Response> {
    let client = client_for_slug(&state, &slug).await?;
    let keys = state.core.signing.jwks_for(client.alg).await?;
    Ok(([(header::CACHE_CONTROL, "public, max-age=300")], Json(keys)).into_response())
}

/// Sends an error back to the client's (already validated) redirect URI.
fn redirect_error(redirect_uri: &str, e: &OAuthError, st: Option<&String>, form_post: bool) -> Response {
    let mut pairs = vec![("error", e.error.to_string()), ("error_description", e.description.clone())];
    if let Some(s) = st {
        pairs.push(("state", s.clone()));
    }
    to_client(redirect_uri, &pairs, form_post)
}

/// The authorization response: query parameters on a redirect, or (`response_mode=form_post`)
/// an HTML form POSTed to the redirect URI, submitted by a script allowed by its hash alone
/// and by a button where scripts do not run.
fn to_client(redirect_uri: &str, pairs: &[(&str, String)], form_post: bool) -> Response {
    let mut url = match Url::parse(redirect_uri) {
        Ok(u) => u,
        Err(_) => return WebError::bad_request("The redirect_uri is not a URL.").into_response(),
    };
    if !form_post {
        url.query_pairs_mut().extend_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())));
        return no_store(found(url.as_str()));
    }
    let inputs: String = pairs
        .iter()
        .map(|(k, v)| format!("<input type=\"hidden\" name=\"{}\" value=\"{}\">", escape(k), escape(v)))
        .collect();
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Signing in…</title>\
         <link rel=\"stylesheet\" href=\"/static/style.css\"></head><body><main class=\"card\">\
         <form method=\"post\" action=\"{action}\">{inputs}<p>Returning to the application…</p>\
         <button type=\"submit\">Continue</button></form></main><script>{FORM_POST_SCRIPT}</script></body></html>",
        action = escape(url.as_str())
    );
    let origin = url.origin().ascii_serialization();
    let csp = format!(
        "default-src 'none'; style-src 'self'; script-src '{}'; form-action {origin}; base-uri 'none'; frame-ancestors 'none'",
        form_post_script_hash()
    );
    let mut r = axum::response::Html(page).into_response();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    no_store(r)
}

/// Submits the form_post page's form on load.
const FORM_POST_SCRIPT: &str = "document.forms[0].submit();";

/// The CSP source allowing exactly [`FORM_POST_SCRIPT`].
fn form_post_script_hash() -> String {
    use sha2::Digest;
    format!("sha256-{}", STANDARD.encode(sha2::Sha256::digest(FORM_POST_SCRIPT.as_bytes())))
}

fn encode_query(q: &BTreeMap<String, String>) -> String {
    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(q.iter()).finish()
}

async fn authorize(State(state): State<AppState>, caller: Caller, RawQuery(raw): RawQuery) -> Response {
    match authorize_inner(&state, &caller, raw.as_deref().unwrap_or("")).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn authorize_inner(state: &AppState, caller: &Caller, raw: &str) -> WebResult<Response> {
    let mut q = params(raw.as_bytes()).map_err(|e| WebError::bad_request(e.description))?;
    let returned = q.remove(RETURN_PARAM);
    let client_id = q.get("client_id").ok_or_else(|| WebError::bad_request("The client_id parameter is missing."))?;
    let client = state.core.oauth.client_by_id(client_id).await?.ok_or_else(|| {
        tracing::warn!(client_id = %client_id.chars().take(100).collect::<String>(), "authorize: unknown client");
        WebError::bad_request("This application is not known (unknown client_id).")
    })?;
    let redirect_uri = match q.get("redirect_uri") {
        Some(r) if client.redirect_allowed(r) => r.clone(),
        Some(_) => {
            tracing::warn!(client = %client.client_id, "authorize: redirect_uri not registered");
            return Err(WebError::bad_request(
                "The redirect_uri is not registered for this application; the administrator must add it exactly.",
            ));
        }
        None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
        None => return Err(WebError::bad_request("The redirect_uri parameter is missing.")),
    };
    let st = q.get("state");
    let form_post = match q.get("response_mode").map(String::as_str) {
        None | Some("query") => false,
        Some("form_post") => true,
        Some(_) => {
            let e = OAuthError::invalid_request("response_mode must be query or form_post.");
            return Ok(redirect_error(&redirect_uri, &e, st, false));
        }
    };
    let fail = |e: OAuthError| Ok(redirect_error(&redirect_uri, &e, st, form_post));
    match q.get("response_type").map(String::as_str) {
        Some("code") => {}
        Some(_) => return fail(OAuthError::new("unsupported_response_type", "Only response_type=code is supported.")),
        None => return fail(OAuthError::invalid_request("The response_type parameter is missing.")),
    }
    if q.contains_key("request") || q.contains_key("request_uri") {
        return fail(OAuthError::new("request_not_supported", "Request objects are not supported."));
    }
    let scopes = client.grantable(q.get("scope").map(String::as_str).unwrap_or(""));
    if !scopes.iter().any(|s| s == "openid") {
        return fail(OAuthError::new("invalid_scope", "The openid scope is required."));
    }
    if let Err(e) = check_pkce(
        &client,
        q.get("code_challenge").map(String::as_str),
        q.get("code_challenge_method").map(String::as_str),
    ) {
        return fail(e);
    }
    let prompt: Vec<&str> = q.get("prompt").map(|p| p.split_whitespace().collect()).unwrap_or_default();
    if let Some(bad) = prompt.iter().find(|p| !matches!(**p, "none" | "login" | "consent" | "select_account")) {
        return fail(OAuthError::invalid_request(format!("prompt={bad} is not supported.")));
    }
    if prompt.contains(&"none") && prompt.len() > 1 {
        return fail(OAuthError::invalid_request("prompt=none cannot be combined with other values."));
    }
    let max_age = match q.get("max_age").map(|m| m.parse::<i64>()) {
        Some(Ok(m)) if m >= 0 => Some(m),
        Some(_) => return fail(OAuthError::invalid_request("max_age must be a number of seconds.")),
        None => None,
    };
    let now = state.core.clock.now();
    let fresh_enough = |s: &latchkey_core::sessions::ActiveSession| {
        max_age.is_none_or(|m| (now - s.session.created_at).num_seconds() <= m)
    };
    let reauth = prompt.contains(&"login") && returned.is_none();
    let session = caller.session.clone().filter(|s| fresh_enough(s) && !reauth);
    let Some(session) = session else {
        if prompt.contains(&"none") {
            return fail(OAuthError::new("login_required", "The user is not logged in."));
        }
        // After the login, come back without prompt=login or max_age (or it would ask forever).
        let mut back = q.clone();
        back.remove("prompt");
        back.remove("max_age");
        let here = format!("{PREFIX}/authorize/?{}", encode_query(&back));
        let mut to = login_url(&here);
        // login_hint pre-fills the identification stage.
        if let Some(hint) = q.get("login_hint").filter(|h| h.len() <= 254 && !h.chars().any(char::is_control)) {
            to.push_str("&login_hint=");
            to.extend(url::form_urlencoded::byte_serialize(hint.as_bytes()));
        }
        return Ok(found(&to));
    };
    let user = state
        .core
        .store
        .get_user(session.user.id)
        .await
        .map_err(latchkey_core::CoreError::from_store)?
        .ok_or_else(|| WebError::forbidden("This account no longer exists."))?;
    let decision = state.core.access.application(&client.app, &user, caller.request_info().facts()).await?;
    if !decision.passing {
        tracing::info!(user = %user.username, app = %client.app.slug, "authorize: denied by policy");
        let mut text = format!("You do not have access to {}.", client.app.name);
        for m in decision.messages.iter().filter(|m| !m.is_empty()) {
            text.push(' ');
            text.push_str(m);
        }
        return Err(WebError::forbidden(text));
    }

    // The provider's authorization flow (consent…) must have run to its end for this request.
    let (flow_cookie, jar) = caller.flow_cookie();
    if let Some(flow_slug) = state.core.oauth.authorization_flow_slug(&client).await? {
        let done = match &returned {
            Some(r) => take_receipt(state, r, &flow_slug, &client, user.id).await?,
            None => false,
        };
        if !done {
            let marker = random_secret(24);
            let mut back = q.clone();
            back.insert(RETURN_PARAM.into(), marker.clone());
            let mut fq = BTreeMap::new();
            fq.insert("application".to_string(), client.app.slug.clone());
            fq.insert("permissions".to_string(), scopes.join(" "));
            fq.insert(COMPLETION.to_string(), marker.clone());
            fq.insert("next".to_string(), format!("{PREFIX}/authorize/?{}", encode_query(&back)));
            if prompt.contains(&"consent") {
                // Asks again even where consent was given before (OIDC Core §3.1.2.1).
                fq.insert(latchkey_core::flow::consent::FORCE.to_string(), "true".to_string());
            }
            let response = state
                .core
                .flows
                .get(&Caller::flow_key(&flow_cookie), &flow_slug, fq.clone(), &caller.request_info())
                .await?;
            match response.challenge.component.as_str() {
                "redirect" => {
                    if !take_receipt(state, &marker, &flow_slug, &client, user.id).await? {
                        return Err(WebError::forbidden("The authorization flow did not complete."));
                    }
                }
                "access_denied" => {
                    let msg = response.challenge.data.get("error").and_then(Value::as_str).unwrap_or("Access denied.");
                    return Err(WebError::forbidden(msg.to_string()));
                }
                "consent" if prompt.contains(&"none") => {
                    return fail(OAuthError::new("consent_required", "The user has not consented yet."));
                }
                _ if prompt.contains(&"none") => {
                    return fail(OAuthError::new("interaction_required", "The authorization flow needs the user."));
                }
                _ => {
                    // The user has something to do (consent…): show the flow, which returns here.
                    return Ok((jar, found(&format!("/if/flow/{flow_slug}/?{}", encode_query(&fq)))).into_response());
                }
            }
        }
    }
    let grant = Grant {
        client_id: client.client_id.clone(),
        scopes,
        nonce: q.get("nonce").cloned(),
        redirect_uri: q.get("redirect_uri").cloned(),
        code_challenge: q.get("code_challenge").cloned(),
        sid: Some(session.session.id.clone()),
        auth_time: session.session.created_at.timestamp(),
        amr: session.session.amr.clone(),
        family: None,
        issuer: client.issuer(&caller.origin),
    };
    let code = state.core.oauth.issue_code(user.id, &grant).await?;
    state
        .core
        .events
        .record(
            "authorize_application",
            Some(&user),
            &caller.client(),
            json!({ "application": client.app.slug, "scopes": grant.scopes }),
        )
        .await;
    let mut pairs = vec![("code", code)];
    if let Some(s) = st {
        pairs.push(("state", s.clone()));
    }
    Ok((jar, to_client(&redirect_uri, &pairs, form_post)).into_response())
}

/// Uses up the receipt of a completed authorization flow, if it is this user's for this app.
async fn take_receipt(
    state: &AppState,
    marker: &str,
    flow: &str,
    client: &Client,
    user: uuid::Uuid,
) -> WebResult<bool> {
    let key = completion_key(marker);
    let now = state.core.clock.now();
    let store = &state.core.store;
    let Some(record) = store.get_flow_state(&key, now).await.map_err(latchkey_core::CoreError::from_store)? else {
        return Ok(false);
    };
    store.delete_flow_state(&key).await.map_err(latchkey_core::CoreError::from_store)?;
    let d = &record.data;
    Ok(d["flow"] == flow && d["user"] == json!(user) && d["application"] == json!(client.app.slug))
}

/// The client a back-channel request authenticates as. This only reads the credentials off
/// the request (HTTP Basic, `client_secret`, `client_assertion`…); the core decides.
async fn client_auth(
    state: &AppState,
    caller: &Caller,
    endpoint: &str,
    headers: &HeaderMap,
    form: &BTreeMap<String, String>,
) -> Result<Arc<Client>, GrantError> {
    let basic = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
        let (scheme, rest) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("basic").then(|| rest.trim().to_string())
    });
    let basic = match basic {
        Some(b) => {
            let decoded = STANDARD
                .decode(b)
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .ok_or_else(OAuthError::invalid_client)?;
            let (id, secret) = decoded.split_once(':').ok_or_else(OAuthError::invalid_client)?;
            // RFC 6749 §2.3.1: both halves are form-urlencoded.
            let dec =
                |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.to_string());
            Some((dec(id).unwrap_or_default(), dec(secret).filter(|s| !s.is_empty())))
        }
        None => None,
    };
    let field = |k: &str| form.get(k).map(String::as_str);
    let creds = ClientCredentials {
        basic,
        client_id: field("client_id"),
        client_secret: field("client_secret"),
        client_assertion_type: field("client_assertion_type"),
        client_assertion: field("client_assertion"),
    };
    state.core.oauth.authenticate_client(&creds, &caller.origin, endpoint).await
}

async fn token(State(state): State<AppState>, caller: Caller, headers: HeaderMap, body: Bytes) -> Response {
    let form = match params(&body) {
        Ok(f) => f,
        Err(e) => return oauth_error(e),
    };
    let client = match client_auth(&state, &caller, "token", &headers, &form).await {
        Ok(c) => c,
        Err(e) => return grant_error(e),
    };
    let grant_type = form.get("grant_type").cloned().unwrap_or_default();
    let result = match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let Some(code) = form.get("code") else {
                return oauth_error(OAuthError::invalid_request("The code parameter is missing."));
            };
            state
                .core
                .oauth
                .exchange_code(
                    &client,
                    code,
                    form.get("redirect_uri").map(String::as_str),
                    form.get("code_verifier").map(String::as_str),
                )
                .await
        }
        Some("refresh_token") => {
            let Some(rt) = form.get("refresh_token") else {
                return oauth_error(OAuthError::invalid_request("The refresh_token parameter is missing."));
            };
            state.core.oauth.refresh(&client, rt, form.get("scope").map(String::as_str)).await
        }
        Some(DEVICE_GRANT) => {
            let Some(dc) = form.get("device_code") else {
                return oauth_error(OAuthError::invalid_request("The device_code parameter is missing."));
            };
            state.core.oauth.device_token(&client, dc).await
        }
        Some("client_credentials") => {
            let issuer = client.issuer(&caller.origin);
            state.core.oauth.client_credentials(&client, form.get("scope").map(String::as_str), &issuer).await
        }
        Some(_) => return oauth_error(OAuthError::new("unsupported_grant_type", "This grant type is not supported.")),
        None => return oauth_error(OAuthError::invalid_request("The grant_type parameter is missing.")),
    };
    match result {
        Ok(t) => {
            let (user_id, username) = t.user.clone().unzip();
            state
                .core
                .events
                .record_raw(
                    "token_issued",
                    user_id,
                    username,
                    &caller.client(),
                    json!({ "client_id": client.client_id, "application": client.app.slug, "grant_type": grant_type, "scope": t.scope, "refresh_token": t.refresh_token.is_some() }),
                )
                .await;
            no_store(Json(t).into_response())
        }
        Err(e) => grant_error(e),
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim().to_string())
}

async fn userinfo(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let unauthorized = || {
        let mut r = (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_token", "error_description": "The access token is missing, invalid or expired."})),
        )
            .into_response();
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
        r
    };
    let Some(token) = bearer(&headers) else { return unauthorized() };
    match state.core.oauth.userinfo(&token).await {
        Ok(Some(claims)) => no_store(Json(claims).into_response()),
        Ok(None) => unauthorized(),
        Err(e) => WebError::from(e).into_response(),
    }
}

async fn introspect(State(state): State<AppState>, caller: Caller, headers: HeaderMap, body: Bytes) -> Response {
    let form = match params(&body) {
        Ok(f) => f,
        Err(e) => return oauth_error(e),
    };
    let client = match client_auth(&state, &caller, "introspect", &headers, &form).await {
        Ok(c) if c.client_type == ClientType::Confidential => c,
        Ok(_) => return oauth_error(OAuthError::invalid_client()),
        Err(e) => return grant_error(e),
    };
    let Some(t) = form.get("token") else {
        return oauth_error(OAuthError::invalid_request("The token parameter is missing."));
    };
    match state.core.oauth.introspect(&client, t).await {
        Ok(v) => no_store(Json(v).into_response()),
        Err(e) => WebError::from(e).into_response(),
    }
}

async fn revoke(State(state): State<AppState>, caller: Caller, headers: HeaderMap, body: Bytes) -> Response {
    let form = match params(&body) {
        Ok(f) => f,
        Err(e) => return oauth_error(e),
    };
    let client = match client_auth(&state, &caller, "revoke", &headers, &form).await {
        Ok(c) => c,
        Err(e) => return grant_error(e),
    };
    let Some(t) = form.get("token") else {
        return oauth_error(OAuthError::invalid_request("The token parameter is missing."));
    };
    match state.core.oauth.revoke(&client, t).await {
        Ok(()) => no_store(StatusCode::OK.into_response()),
        Err(e) => WebError::from(e).into_response(),
    }
}

/// RP-initiated logout: ends the Latchkey session, then returns to a registered
/// `post_logout_redirect_uri` (with `state`) or to the login page.
async fn end_session(
    State(state): State<AppState>,
    caller: Caller,
    Path(slug): Path<String>,
    RawQuery(raw): RawQuery,
) -> WebResult<Response> {
    let client = client_for_slug(&state, &slug).await?;
    let q = params(raw.as_deref().unwrap_or("").as_bytes()).map_err(|e| WebError::bad_request(e.description))?;
    if let Some(cookie) = caller.session_cookie() {
        if let Some(session) = state.core.sessions.revoke_cookie(&cookie).await? {
            if let Err(e) = state.core.oauth.backchannel_logout(session.user_id, &session.id).await {
                tracing::warn!(error = %e, "back-channel logout could not be sent");
            }
            state
                .core
                .events
                .record_raw(
                    "logout",
                    Some(session.user_id),
                    caller.session.as_ref().map(|s| s.user.username.clone()),
                    &caller.client(),
                    json!({ "session": session.id, "via": "oidc_end_session", "application": client.app.slug }),
                )
                .await;
        }
    }
    let jar = caller.jar.clone().add(caller.removal(crate::request::SESSION_COOKIE));
    let to = match q.get("post_logout_redirect_uri") {
        Some(uri) if client.redirect_allowed(uri) => {
            let mut url = Url::parse(uri).map_err(|_| WebError::bad_request("Not a URL."))?;
            if let Some(s) = q.get("state") {
                url.query_pairs_mut().append_pair("state", s);
            }
            url.to_string()
        }
        Some(_) => {
            return Err(WebError::bad_request("The post_logout_redirect_uri is not registered for this application."))
        }
        None => login_url("/if/user/"),
    };
    Ok((jar, found(&to)).into_response())
}

/// RFC 8628 §3.1: a device asks for a user code.
async fn device_authorization(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match params(&body) {
        Ok(f) => f,
        Err(e) => return oauth_error(e),
    };
    let client = match client_auth(&state, &caller, "device", &headers, &form).await {
        Ok(c) => c,
        Err(e) => return grant_error(e),
    };
    match state.core.oauth.device_authorize(&client, form.get("scope").map(String::as_str)).await {
        Ok(d) => {
            let uri = format!("{}/if/device/", caller.origin.trim_end_matches('/'));
            let complete = format!("{uri}?code={}", d.user_code);
            no_store(
                Json(json!({
                    "device_code": d.device_code,
                    "user_code": d.user_code,
                    "verification_uri": uri,
                    "verification_uri_complete": complete,
                    "expires_in": d.expires_in,
                    "interval": d.interval,
                }))
                .into_response(),
            )
        }
        Err(e) => WebError::from(e).into_response(),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn device_html(title: &str, body: &str) -> Response {
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <link rel=\"stylesheet\" href=\"/static/style.css\"></head><body><main class=\"card\"><h1>{t}</h1>{body}</main></body></html>",
        t = escape(title)
    );
    let mut r = axum::response::Html(page).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The page where a logged-in user types the code their device shows.
async fn device_page(State(state): State<AppState>, caller: Caller, RawQuery(raw): RawQuery) -> WebResult<Response> {
    let q = params(raw.as_deref().unwrap_or("").as_bytes()).map_err(|e| WebError::bad_request(e.description))?;
    let code = latchkey_core::oauth::device::normalize_user_code(q.get("code").map(String::as_str).unwrap_or(""));
    if caller.session.is_none() {
        let here = if code.is_empty() { "/if/device/".to_string() } else { format!("/if/device/?code={code}") };
        return Ok(found(&login_url(&here)));
    }
    let (flow_cookie, jar) = caller.flow_cookie();
    let csrf = state.core.keys.csrf.sign(flow_cookie.as_bytes());
    let app = match state.core.oauth.device_client(&code).await? {
        Some(c) => format!("<p>Sign in to <strong>{}</strong> on your device?</p>", escape(&c.app.name)),
        None => String::new(),
    };
    let body = format!(
        "{app}<form method=\"post\" action=\"/if/device/\"><input type=\"hidden\" name=\"csrf_token\" value=\"{csrf}\">\
         <label>Code <input name=\"code\" value=\"{code}\" autocomplete=\"off\" required></label>\
         <button name=\"action\" value=\"approve\">Allow</button> <button name=\"action\" value=\"deny\">Deny</button></form>",
        csrf = escape(&csrf),
        code = escape(&code)
    );
    Ok((jar, device_html("Connect a device", &body)).into_response())
}

async fn device_submit(State(state): State<AppState>, caller: Caller, body: Bytes) -> WebResult<Response> {
    let form = params(&body).map_err(|e| WebError::bad_request(e.description))?;
    let Some(session) = caller.session.clone() else {
        return Ok(found(&login_url("/if/device/")));
    };
    let flow_cookie = caller.jar.get(crate::request::FLOW_COOKIE).map(|c| c.value().to_string());
    let token = form.get("csrf_token").map(String::as_str).unwrap_or("");
    if !flow_cookie.as_deref().is_some_and(|c| state.core.keys.csrf.verify(c.as_bytes(), token)) {
        return Err(WebError::forbidden(
            "The form expired or did not come from this site. Reload the page and try again.",
        ));
    }
    let code = form.get("code").map(String::as_str).unwrap_or("");
    let Some(client) = state.core.oauth.device_client(code).await? else {
        return Err(WebError::bad_request("This code is unknown, expired or already used."));
    };
    let user = state
        .core
        .store
        .get_user(session.user.id)
        .await
        .map_err(latchkey_core::CoreError::from_store)?
        .ok_or_else(|| WebError::forbidden("This account no longer exists."))?;
    let decision = state.core.access.application(&client.app, &user, caller.request_info().facts()).await?;
    let approved = form.get("action").map(String::as_str) == Some("approve") && decision.passing;
    let template = Grant {
        client_id: client.client_id.clone(),
        scopes: Vec::new(),
        nonce: None,
        redirect_uri: None,
        code_challenge: None,
        sid: Some(session.session.id.clone()),
        auth_time: session.session.created_at.timestamp(),
        amr: session.session.amr.clone(),
        family: None,
        issuer: client.issuer(&caller.origin),
    };
    if !state.core.oauth.device_decide(code, &user, approved, template).await? {
        return Err(WebError::bad_request("This code is unknown, expired or already used."));
    }
    if !decision.passing {
        return Err(WebError::forbidden(format!("You do not have access to {}.", client.app.name)));
    }
    let (title, text) = if approved {
        ("Device connected", "You can return to your device.")
    } else {
        ("Request denied", "The device was not connected.")
    };
    Ok(device_html(title, &format!("<p>{text}</p>")))
}
