//! The OpenAPI 3.1 document, generated from the handlers' annotations. A copy is committed
//! as `openapi/schema.json`; a test fails when the two differ, so the contract never drifts
//! unnoticed (regenerate with `LATCHKEY_UPDATE_OPENAPI=1 cargo nextest run -p latchkey-web openapi`).

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{events, groups, objects, settings, tokens, users};

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API token (`latchkey token create`, or POST /api/v1/tokens/)."))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "latchkey_session",
                "The login session; unsafe methods also need the X-authentik-CSRF header (value of the authentik_csrf cookie).",
            ))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Latchkey API", description = "Administration API of Latchkey. Lists take ?search=, ?ordering= (-field descends), ?page= and ?page_size=. Errors are {\"error\", \"message\", \"fields\"}."),
    modifiers(&Security),
    security(("bearer" = []), ("session" = [])),
    paths(
        users::list, users::create, users::retrieve, users::update, users::destroy, users::set_password,
        users::recovery_link, users::sessions, users::revoke_sessions, users::revoke_session, users::devices,
        users::remove_device,
        users::app_passwords,
        users::create_app_password,
        users::revoke_app_password,
        groups::list, groups::create, groups::retrieve, groups::update, groups::destroy, groups::members,
        groups::add_user, groups::remove_user,
        objects::applications::list, objects::applications::create, objects::applications::retrieve,
        objects::applications::update, objects::applications::destroy,
        objects::providers::list, objects::providers::create, objects::providers::retrieve,
        objects::providers::update, objects::providers::destroy,
        objects::outposts::list, objects::outposts::create, objects::outposts::retrieve,
        objects::outposts::update, objects::outposts::destroy,
        objects::flows::list, objects::flows::create, objects::flows::retrieve,
        objects::flows::update, objects::flows::destroy,
        objects::stages::list, objects::stages::create, objects::stages::retrieve,
        objects::stages::update, objects::stages::destroy,
        objects::policies::list, objects::policies::create, objects::policies::retrieve,
        objects::policies::update, objects::policies::destroy,
        objects::bindings::list, objects::bindings::create, objects::bindings::retrieve,
        objects::bindings::update, objects::bindings::destroy,
        tokens::list, tokens::create, tokens::retrieve, tokens::destroy,
        events::list,
        settings::retrieve, settings::update,
    ),
    components(schemas(super::ErrorBody, super::Pagination))
)]
pub struct ApiDoc;

/// The document as served and committed: pretty JSON with a final newline.
pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    // Handlers of different resources share names (`list`, `create`…); operation ids must be
    // unique, so each is prefixed with its resource (`users_list`).
    for item in doc.paths.paths.values_mut() {
        for op in
            [&mut item.get, &mut item.post, &mut item.patch, &mut item.put, &mut item.delete].into_iter().flatten()
        {
            let tag = op.tags.as_ref().and_then(|t| t.first()).cloned().unwrap_or_default();
            if let Some(id) = &op.operation_id {
                op.operation_id = Some(format!("{tag}_{id}"));
            }
        }
    }
    let mut text = doc.to_pretty_json().unwrap_or_else(|_| "{}".into());
    text.push('\n');
    text
}

/// `GET /api/v1/schema.json` (public, as authentik's schema is).
pub async fn schema() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document())
}

#[cfg(test)]
mod tests {
    #[test]
    fn openapi_schema_matches_the_committed_copy() {
        let committed_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi/schema.json");
        let generated = super::document();
        if std::env::var("LATCHKEY_UPDATE_OPENAPI").is_ok() {
            std::fs::write(committed_path, &generated).expect("write openapi/schema.json");
            return;
        }
        let committed = std::fs::read_to_string(committed_path).unwrap_or_default();
        assert!(
            committed == generated,
            "openapi/schema.json differs from the API the handlers define.\n\
             If the change is intended, regenerate it with:\n    \
             LATCHKEY_UPDATE_OPENAPI=1 cargo nextest run -p latchkey-web openapi\n\
             and commit the file."
        );
        let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        assert!(doc["paths"]["/api/v1/users/"]["get"].is_object());
    }
}
