//! Latchkey's HTTP adapter: thin handlers that translate HTTP to calls on the core.
//! One router per area, merged in [`router`].

pub mod admin;
pub mod api;
pub mod authelia;
pub mod error;
pub mod flows;
pub mod header_auth;
pub mod health;
pub mod meta;
pub mod metrics;
pub mod oidc;
pub mod outpost;
pub mod portal;
pub mod recovery;
pub mod request;
pub mod state;
pub mod templates;
pub mod ui;
pub mod user;

use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::routing::{get, MethodRouter};
use axum::Router;

pub use state::{AppState, WebConfig};

/// Bodies larger than this are refused with 413.
pub const MAX_BODY: usize = 64 * 1024;

/// Registers `path` (ending in `/`) and the same path without the slash: paths end with a
/// slash as authentik's do, and API clients that drop it get an answer, not a redirect.
fn both(router: Router<AppState>, path: &str, method: MethodRouter<AppState>) -> Router<AppState> {
    let bare = path.trim_end_matches('/');
    let router = router.route(path, method.clone());
    if bare.is_empty() || bare == path {
        router
    } else {
        router.route(bare, method)
    }
}

fn flow_routes() -> Router<AppState> {
    let r = Router::new();
    let r = both(r, "/api/v1/flows/executor/{slug}/", get(flows::executor_get).post(flows::executor_post));
    both(r, "/if/flow/{slug}/", get(flows::page_get).post(flows::page_post))
}

fn portal_routes() -> Router<AppState> {
    let r = Router::new().route("/", get(user::root));
    let r = both(r, "/recovery/use-token/{token}/", get(recovery::confirm).post(recovery::redeem));
    both(r, "/if/user/confirm-email/{token}/", get(recovery::email_confirm_page).post(recovery::email_confirm))
}

fn health_routes() -> Router<AppState> {
    let r = Router::new();
    let r = both(r, "/-/health/live/", get(health::live));
    both(r, "/-/health/ready/", get(health::ready))
}

async fn stylesheet() -> impl axum::response::IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=3600")],
        include_str!("../static/style.css"),
    )
}

async fn webauthn_script() -> impl axum::response::IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=3600")],
        include_str!("../static/webauthn.js"),
    )
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(api::routes(state.clone()))
        .merge(flow_routes())
        .merge(portal_routes())
        .merge(portal::routes())
        .merge(admin::routes())
        .merge(health_routes())
        .merge(outpost::routes())
        .merge(oidc::routes())
        .merge(authelia::routes())
        .route("/static/style.css", get(stylesheet))
        .route("/static/webauthn.js", get(webauthn_script))
        .fallback(flows::fallback)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        // One layer for what every answer gets (request id, security headers, metrics): each
        // layer costs every request a boxed future and a service clone.
        .layer(axum::middleware::from_fn(meta::middleware))
        .with_state(state)
}
