//! System settings an administrator changes at run time (REST API `settings`, admin
//! interface): branding, avatars, default flows, what users may change about themselves.
//! Kept as one JSON document under the settings key `system`; other settings rows (signing
//! keys…) are never exposed here.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{CoreError, FieldErrors, Result};
use crate::events::ClientInfo;
use crate::version::check_version;
use crate::Core;

pub const SETTINGS_KEY: &str = "system";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SystemSettings {
    /// Shown in page titles and headers.
    pub branding_title: String,
    /// URL or path of the logo; empty: the built-in one.
    pub branding_logo: String,
    /// URL or path of the favicon; empty: the built-in one.
    pub branding_favicon: String,
    /// `none`, `initials` or `gravatar`; unset: the `avatars` configuration key decides.
    pub avatars: Option<String>,
    /// Flows used where nothing more specific is configured (slugs).
    pub default_authentication_flow: String,
    pub default_invalidation_flow: String,
    pub default_recovery_flow: String,
    pub default_enrollment_flow: String,
    pub default_user_settings_flow: String,
    /// Whether users may change their own display name and email address.
    pub default_user_change_name: bool,
    pub default_user_change_email: bool,
    /// Audit events older than this many days may be removed.
    pub event_retention_days: u32,
}

impl Default for SystemSettings {
    fn default() -> Self {
        SystemSettings {
            branding_title: "Latchkey".into(),
            branding_logo: String::new(),
            branding_favicon: String::new(),
            avatars: None,
            default_authentication_flow: "default-authentication-flow".into(),
            default_invalidation_flow: "default-invalidation-flow".into(),
            default_recovery_flow: "default-recovery-flow".into(),
            default_enrollment_flow: "default-enrollment-flow".into(),
            default_user_settings_flow: "default-user-settings-flow".into(),
            default_user_change_name: true,
            default_user_change_email: true,
            event_retention_days: 365,
        }
    }
}

impl SystemSettings {
    /// The avatar mode in force: the stored choice, else the configured default.
    pub fn avatar_mode<'a>(&'a self, configured: &'a str) -> &'a str {
        self.avatars.as_deref().unwrap_or(configured)
    }
}

const FLOW_FIELDS: &[&str] = &[
    "default_authentication_flow",
    "default_invalidation_flow",
    "default_recovery_flow",
    "default_enrollment_flow",
    "default_user_settings_flow",
];

/// The current settings (defaults for anything never set), read from the store; pages that
/// only show them use the in-memory copy in `core.catalog`.
pub async fn get(core: &Core) -> Result<SystemSettings> {
    read(core.store.as_ref()).await
}

pub(crate) async fn read(store: &dyn crate::store::Store) -> Result<SystemSettings> {
    let stored = store.get_setting(SETTINGS_KEY).await.map_err(CoreError::from_store)?;
    Ok(stored.and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default())
}

fn field_error(field: &str, message: impl Into<String>) -> CoreError {
    let message = message.into();
    let mut fields = FieldErrors::new();
    fields.insert(field.to_string(), vec![message.clone()]);
    CoreError::Invalid { message: format!("{field}: {message}"), fields }
}

async fn validate(core: &Core, s: &SystemSettings) -> Result<()> {
    if s.branding_title.trim().is_empty() || s.branding_title.chars().count() > 100 {
        return Err(field_error("branding_title", "must be 1 to 100 characters"));
    }
    for (field, value) in [("branding_logo", &s.branding_logo), ("branding_favicon", &s.branding_favicon)] {
        let ok = value.is_empty()
            || value.starts_with('/')
            || url::Url::parse(value).is_ok_and(|u| matches!(u.scheme(), "http" | "https" | "data"));
        if !ok || value.len() > 2048 {
            return Err(field_error(field, "must be a path starting with / or an http(s) URL"));
        }
    }
    if let Some(a) = &s.avatars {
        if !matches!(a.as_str(), "none" | "initials" | "gravatar") {
            return Err(field_error("avatars", "must be one of none, initials, gravatar"));
        }
    }
    let as_json = serde_json::to_value(s).unwrap_or_default();
    for field in FLOW_FIELDS {
        let slug = as_json.get(*field).and_then(Value::as_str).unwrap_or("");
        if core.store.get_flow_by_slug(slug).await.map_err(CoreError::from_store)?.is_none() {
            return Err(field_error(field, format!("flow '{slug}' does not exist")));
        }
    }
    if s.event_retention_days == 0 {
        return Err(field_error("event_retention_days", "must be at least 1"));
    }
    Ok(())
}

/// Applies a partial update (fields sent replace the current ones). `expected` is the version
/// the client edited; a stale one is a `Conflict`.
pub async fn update(core: &Core, patch: Value, expected: Option<&str>, client: &ClientInfo) -> Result<SystemSettings> {
    let Value::Object(patch) = patch else {
        return Err(CoreError::invalid("The body must be a JSON object."));
    };
    let current = get(core).await?;
    check_version(&current, expected)?;
    let mut merged: Map<String, Value> = match serde_json::to_value(&current) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    if let Some(unknown) = patch.keys().find(|k| k.as_str() != "version" && !merged.contains_key(*k)) {
        return Err(field_error(unknown, "not a setting"));
    }
    let changed: Vec<String> = patch.keys().filter(|k| k.as_str() != "version").cloned().collect();
    for (k, v) in patch {
        if k != "version" {
            merged.insert(k, v);
        }
    }
    let next: SystemSettings = serde_path_to_error::deserialize(Value::Object(merged))
        .map_err(|e| crate::objects::serde_field_error(&e.path().to_string(), &e.inner().to_string()))?;
    validate(core, &next).await?;
    let value = serde_json::to_value(&next).map_err(|e| CoreError::Internal(e.to_string()))?;
    core.store.set_setting(SETTINGS_KEY, &value).await.map_err(CoreError::from_store)?;
    core.config_changed();
    core.events.record_raw("settings_changed", None, None, client, json!({ "fields": changed })).await;
    Ok(next)
}
