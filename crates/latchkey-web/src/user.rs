//! `/`: sends visitors to the portal or to the login flow (the portal itself is `portal.rs`).

use axum::response::Response;

use crate::flows::{found, login_url};
use crate::request::Caller;

pub async fn root(caller: Caller) -> Response {
    if caller.session.is_some() {
        found("/if/user/")
    } else {
        found(&login_url("/if/user/"))
    }
}
