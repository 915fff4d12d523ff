//! `consent`: the user agrees that an application receives some permissions; the grant is
//! remembered per user and application. `redirect`: ends the flow somewhere else.

use async_trait::async_trait;
use chrono::Duration;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::{Challenge, StageCx, StageHandler, Step};
use crate::error::{CoreError, Result};
use crate::model::{Application, ConsentGrant};

/// Flow-state keys through which whoever starts an authorization flow names the application
/// and the permissions (scopes) it asks for.
pub const APPLICATION: &str = "application";
pub const PERMISSIONS: &str = "permissions";
/// Query key by which an authorization request with `prompt=consent` asks again even where
/// consent was given before.
pub const FORCE: &str = "force_consent";

const MODES: &[&str] = &["always_require", "permanent", "expiring", "implicit"];

pub struct Consent;

impl Consent {
    fn permissions(cx: &StageCx<'_>) -> Vec<String> {
        cx.state
            .data
            .get(PERMISSIONS)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect())
            .unwrap_or_default()
    }

    async fn application(cx: &StageCx<'_>) -> Result<Option<Application>> {
        let Some(slug) = cx.state.data.get(APPLICATION).and_then(Value::as_str) else { return Ok(None) };
        cx.services.store.get_application_by_slug(slug).await.map_err(CoreError::from_store)
    }

    fn mode<'a>(cx: &'a StageCx<'_>) -> &'a str {
        cx.config.get("mode").and_then(Value::as_str).unwrap_or("always_require")
    }

    async fn record(cx: &mut StageCx<'_>, user_id: Uuid, app: &Application, permissions: Vec<String>) -> Result<()> {
        let now = cx.services.clock.now();
        let expires_at = match Self::mode(cx) {
            "expiring" => {
                let secs = cx.config.get("expires_in_seconds").and_then(Value::as_i64).unwrap_or(4 * 7 * 86400);
                Some(now + Duration::seconds(secs.max(1)))
            }
            _ => None,
        };
        let grant = ConsentGrant {
            id: Uuid::now_v7(),
            user_id,
            application_id: app.id,
            permissions,
            created_at: now,
            expires_at,
        };
        cx.services.store.put_consent(&grant).await.map_err(CoreError::from_store)?;
        let user = cx.services.store.get_user(user_id).await.map_err(CoreError::from_store)?;
        cx.services
            .events
            .record(
                "consent_given",
                user.as_ref(),
                &cx.request.client,
                json!({ "application": app.slug, "permissions": grant.permissions, "mode": Self::mode(cx) }),
            )
            .await;
        Ok(())
    }
}

#[async_trait]
impl StageHandler for Consent {
    fn kind(&self) -> &'static str {
        "consent"
    }

    fn validate_config(&self, config: &Value) -> Result<()> {
        let mode = config.get("mode").and_then(Value::as_str).unwrap_or("always_require");
        if !MODES.contains(&mode) {
            return Err(CoreError::invalid_field(
                "mode",
                format!("unknown consent mode '{mode}'; use one of {}", MODES.join(", ")),
            ));
        }
        Ok(())
    }

    async fn challenge(&self, cx: &mut StageCx<'_>) -> Result<Step> {
        let Some(app) = Self::application(cx).await? else { return Ok(Step::Next) };
        let Some(user_id) = cx.state.pending_user else {
            return Ok(Step::Deny("You need to log in first.".into()));
        };
        let permissions = Self::permissions(cx);
        let mode = Self::mode(cx);
        if mode == "implicit" {
            Self::record(cx, user_id, &app, permissions).await?;
            return Ok(Step::Next);
        }
        let forced = cx.state.data.get(FORCE).and_then(Value::as_bool).unwrap_or(false);
        if mode != "always_require" && !forced {
            let now = cx.services.clock.now();
            let grant = cx.services.store.get_consent(user_id, app.id, now).await.map_err(CoreError::from_store)?;
            if grant.is_some_and(|g| permissions.iter().all(|p| g.permissions.contains(p))) {
                return Ok(Step::Next);
            }
        }
        Ok(Step::Show(
            Challenge::new("consent")
                .with(
                    "application",
                    json!({ "name": app.name, "slug": app.slug, "icon": app.icon, "launch_url": app.launch_url }),
                )
                .with("permissions", permissions.iter().map(|p| json!({ "id": p, "name": p })).collect::<Vec<_>>())
                .with("header_text", format!("{} would like to access your account.", app.name)),
        ))
    }

    async fn submit(&self, cx: &mut StageCx<'_>, _answer: &Map<String, Value>) -> Result<Step> {
        let Some(app) = Self::application(cx).await? else { return Ok(Step::Next) };
        let Some(user_id) = cx.state.pending_user else {
            return Ok(Step::Deny("You need to log in first.".into()));
        };
        let permissions = Self::permissions(cx);
        if Self::mode(cx) == "always_require" {
            let user = cx.services.store.get_user(user_id).await.map_err(CoreError::from_store)?;
            cx.services
                .events
                .record(
                    "consent_given",
                    user.as_ref(),
                    &cx.request.client,
                    json!({ "application": app.slug, "permissions": permissions, "mode": "always_require" }),
                )
                .await;
        } else {
            Self::record(cx, user_id, &app, permissions).await?;
        }
        Ok(Step::Next)
    }
}

/// Ends the flow by sending the browser to a fixed URL or another flow.
pub struct Redirect;

impl Redirect {
    fn target(config: &Value) -> Option<String> {
        if let Some(slug) = config.get("to_flow").and_then(Value::as_str) {
            return Some(format!("/if/flow/{slug}/"));
        }
        config.get("to").and_then(Value::as_str).map(String::from)
    }
}

#[async_trait]
impl StageHandler for Redirect {
    fn kind(&self) -> &'static str {
        "redirect"
    }

    fn validate_config(&self, config: &Value) -> Result<()> {
        match Self::target(config) {
            Some(t)
                if t.starts_with('/') || url::Url::parse(&t).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) =>
            {
                Ok(())
            }
            _ => Err(CoreError::invalid_field(
                "to",
                "a redirect stage needs `to` (a URL or a path) or `to_flow` (a flow slug)",
            )),
        }
    }

    async fn challenge(&self, cx: &mut StageCx<'_>) -> Result<Step> {
        match Self::target(cx.config) {
            Some(to) => Ok(Step::Redirect(to)),
            None => Ok(Step::Deny("This redirect stage has no target.".into())),
        }
    }

    async fn submit(&self, cx: &mut StageCx<'_>, _answer: &Map<String, Value>) -> Result<Step> {
        self.challenge(cx).await
    }
}
