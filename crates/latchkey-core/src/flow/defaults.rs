//! The default objects every instance has: the `admins` group and the built-in flows.
//! Created on first start; existing ones (possibly edited by an admin) are left alone.

use chrono::Utc;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::directory::ADMINS_GROUP;
use crate::error::{CoreError, Result};
use crate::model::{Flow, FlowDesignation, FlowStageBinding, NewGroup, Outpost, Policy, Stage};
use crate::store::Store;

struct DefaultFlow {
    slug: &'static str,
    name: &'static str,
    title: &'static str,
    designation: FlowDesignation,
    settings: Value,
    /// (stage name, kind, config)
    stages: Vec<(&'static str, &'static str, Value)>,
}

fn default_flows() -> Vec<DefaultFlow> {
    vec![
        DefaultFlow {
            slug: "initial-setup",
            name: "Initial setup",
            title: "Welcome to Latchkey!",
            designation: FlowDesignation::StageConfiguration,
            settings: json!({ "authentication": "none" }),
            stages: vec![
                ("initial-setup-prompt", "initial_setup", json!({})),
                ("initial-setup-login", "user_login", json!({})),
            ],
        },
        DefaultFlow {
            slug: "default-authentication-flow",
            name: "Default authentication flow",
            title: "Welcome to Latchkey!",
            designation: FlowDesignation::Authentication,
            settings: json!({ "authentication": "none" }),
            stages: vec![
                (
                    "default-authentication-identification",
                    "identification",
                    json!({ "user_fields": ["username", "email"], "password_fields": true, "passkey_login": true, "recovery_flow": "default-recovery-flow" }),
                ),
                (
                    "default-authentication-mfa-validation",
                    "authenticator_validate",
                    json!({ "device_classes": ["totp", "static", "webauthn"], "not_configured_action": "skip", "remember_device_days": 0 }),
                ),
                ("default-authentication-login", "user_login", json!({})),
            ],
        },
        // Forward auth sends a user logged in with one factor here when an access rule wants
        // two: a code from their authenticator, or enrolling one if they have none.
        DefaultFlow {
            slug: crate::proxy::DEFAULT_STEPUP_FLOW,
            name: "Second factor for protected applications",
            title: "Confirm it is you",
            designation: FlowDesignation::StageConfiguration,
            settings: json!({ "authentication": "require_authenticated" }),
            stages: vec![
                (
                    "default-authentication-stepup-validation",
                    "authenticator_validate",
                    json!({ "device_classes": ["totp", "static"], "not_configured_action": "configure", "configure_stages": ["totp"] }),
                ),
                ("default-authentication-stepup-login", "user_login", json!({})),
            ],
        },
        DefaultFlow {
            slug: "default-provider-authorization-explicit-consent",
            name: "Authorize application (explicit consent)",
            title: "Authorize application",
            designation: FlowDesignation::Authorization,
            settings: json!({ "authentication": "require_authenticated" }),
            stages: vec![("default-provider-authorization-consent", "consent", json!({ "mode": "permanent" }))],
        },
        DefaultFlow {
            slug: "default-provider-authorization-implicit-consent",
            name: "Authorize application (implicit consent)",
            title: "Authorize application",
            designation: FlowDesignation::Authorization,
            settings: json!({ "authentication": "require_authenticated" }),
            stages: vec![("default-provider-authorization-implicit-consent", "consent", json!({ "mode": "implicit" }))],
        },
        DefaultFlow {
            slug: "default-user-settings-flow",
            name: "User settings",
            title: "Update your info",
            designation: FlowDesignation::StageConfiguration,
            settings: json!({ "authentication": "require_authenticated" }),
            stages: vec![
                (
                    "default-user-settings-prompt",
                    "prompt",
                    json!({ "fields": [
                        { "name": "username", "label": "Username", "type": "username", "required": true },
                        { "name": "name", "label": "Name", "type": "text", "required": true },
                        { "name": "email", "label": "Email", "type": "email", "required": true },
                    ], "primary_action": "Save" }),
                ),
                (
                    "default-user-settings-write",
                    "user_write",
                    json!({ "user_creation_mode": "never_create", "confirm_email_change": true }),
                ),
            ],
        },
        DefaultFlow {
            slug: "default-password-change",
            name: "Change password",
            title: "Change your password",
            designation: FlowDesignation::StageConfiguration,
            settings: json!({ "authentication": "require_authenticated" }),
            stages: vec![
                ("default-password-change-current", "password", json!({})),
                (
                    "default-password-change-prompt",
                    "prompt",
                    json!({ "fields": [
                        { "name": "password", "label": "New password", "type": "password", "required": true },
                        { "name": "password_repeat", "label": "New password (repeat)", "type": "password", "required": true },
                    ], "validation_policies": [DEFAULT_PASSWORD_POLICY], "primary_action": "Change password" }),
                ),
                ("default-password-change-write", "user_write", json!({ "user_creation_mode": "never_create" })),
            ],
        },
        DefaultFlow {
            slug: "default-recovery-flow",
            name: "Password recovery",
            title: "Reset your password",
            designation: FlowDesignation::Recovery,
            settings: json!({ "authentication": "none" }),
            stages: vec![
                (
                    "default-recovery-identification",
                    "identification",
                    json!({ "user_fields": ["username", "email"], "password_fields": false, "primary_action": "Send link" }),
                ),
                (
                    "default-recovery-email",
                    "email",
                    json!({ "template": "recovery", "subject": "Reset your password", "token_expiry_minutes": 30, "max_per_hour": 3 }),
                ),
                (
                    "default-recovery-new-password",
                    "prompt",
                    json!({ "fields": [
                        { "name": "password", "label": "New password", "type": "password", "required": true },
                        { "name": "password_repeat", "label": "New password (repeat)", "type": "password", "required": true },
                    ], "validation_policies": [DEFAULT_PASSWORD_POLICY], "primary_action": "Set password" }),
                ),
                ("default-recovery-write", "user_write", json!({ "user_creation_mode": "never_create" })),
                // A new password is not a second factor: users with devices still give a code.
                (
                    "default-recovery-mfa-validation",
                    "authenticator_validate",
                    json!({ "device_classes": ["totp", "static", "webauthn"], "not_configured_action": "skip" }),
                ),
                ("default-recovery-login", "user_login", json!({})),
            ],
        },
        DefaultFlow {
            slug: "default-enrollment-flow",
            name: "Enrollment",
            title: "Create your account",
            designation: FlowDesignation::Enrollment,
            settings: json!({ "authentication": "require_unauthenticated" }),
            stages: vec![
                (
                    "default-enrollment-invitation",
                    "invitation",
                    // Self-registration is off: only invitation links open this flow.
                    json!({ "allow_without_invitation": false, "email_domains": [], "require_approval": false, "verify_email": false }),
                ),
                (
                    "default-enrollment-prompt",
                    "prompt",
                    json!({ "fields": [
                        { "name": "username", "label": "Username", "type": "username", "required": true },
                        { "name": "name", "label": "Name", "type": "text", "required": true },
                        { "name": "email", "label": "Email", "type": "email", "required": true },
                        { "name": "password", "label": "Password", "type": "password", "required": true },
                        { "name": "password_repeat", "label": "Password (repeat)", "type": "password", "required": true },
                    ], "validation_policies": [DEFAULT_PASSWORD_POLICY], "primary_action": "Create account" }),
                ),
                ("default-enrollment-write", "user_write", json!({ "user_creation_mode": "always_create" })),
                (
                    "default-enrollment-email-verification",
                    "email",
                    json!({ "template": "verification", "subject": "Confirm your email address", "only_when": "verify_email", "mark_verified": true, "token_expiry_minutes": 1440 }),
                ),
                ("default-enrollment-login", "user_login", json!({})),
            ],
        },
        DefaultFlow {
            slug: "default-authenticator-totp-setup",
            name: "Set up an authenticator app",
            title: "Set up an authenticator app",
            designation: FlowDesignation::StageConfiguration,
            settings: json!({ "authentication": "require_authenticated" }),
            stages: vec![("default-authenticator-totp-setup", "authenticator_totp", json!({}))],
        },
        DefaultFlow {
            slug: "default-authenticator-static-setup",
            name: "Set up recovery codes",
            title: "Your recovery codes",
            designation: FlowDesignation::StageConfiguration,
            settings: json!({ "authentication": "require_authenticated" }),
            stages: vec![("default-authenticator-static-setup", "authenticator_static", json!({}))],
        },
        DefaultFlow {
            slug: "default-authenticator-webauthn-setup",
            name: "Set up a security key or passkey",
            title: "Set up a security key or passkey",
            designation: FlowDesignation::StageConfiguration,
            settings: json!({ "authentication": "require_authenticated" }),
            stages: vec![(
                "default-authenticator-webauthn-setup",
                "authenticator_webauthn",
                json!({ "user_verification": "preferred", "resident_key_requirement": "preferred" }),
            )],
        },
        DefaultFlow {
            slug: "default-invalidation-flow",
            name: "Default invalidation flow",
            title: "Logging out",
            designation: FlowDesignation::Invalidation,
            settings: json!({ "authentication": "none" }),
            stages: vec![("default-invalidation-logout", "user_logout", json!({}))],
        },
    ]
}

/// The outpost that runs inside this process and serves forward auth and LDAP.
pub const EMBEDDED_OUTPOST: &str = "embedded";

/// The password rules new passwords are checked against by default.
pub const DEFAULT_PASSWORD_POLICY: &str = "default-password-policy";

/// Creates whatever default object is missing. Safe to run at every start and concurrently
/// from several instances (upserts by unique name and slug).
pub async fn ensure_defaults(store: &dyn Store) -> Result<()> {
    let e = CoreError::from_store;
    if store.get_group_by_name(ADMINS_GROUP).await.map_err(e)?.is_none() {
        let created = store
            .create_group(NewGroup {
                id: Uuid::now_v7(),
                name: ADMINS_GROUP.into(),
                parent_id: None,
                is_superuser: true,
                attributes: json!({}),
                created_at: Utc::now(),
            })
            .await;
        // Another instance may have created it at the same moment.
        match created {
            Ok(_) | Err(crate::StoreError::Conflict(_)) => {}
            Err(other) => return Err(e(other)),
        }
    }
    if store.get_policy_by_name(DEFAULT_PASSWORD_POLICY).await.map_err(e)?.is_none() {
        store
            .upsert_policy(&Policy {
                id: Uuid::now_v7(),
                name: DEFAULT_PASSWORD_POLICY.into(),
                kind: "password".into(),
                config: json!({ "length_min": 8, "zxcvbn_score_threshold": 2 }),
                execution_logging: false,
                created_at: Utc::now(),
            })
            .await
            .map_err(e)?;
    }
    if store.get_outpost_by_name(EMBEDDED_OUTPOST).await.map_err(e)?.is_none() {
        store
            .upsert_outpost(&Outpost {
                id: Uuid::now_v7(),
                name: EMBEDDED_OUTPOST.into(),
                kind: "proxy".into(),
                provider_ids: Vec::new(),
                config: json!({ "embedded": true }),
                created_at: Utc::now(),
            })
            .await
            .map_err(e)?;
    }
    for def in default_flows() {
        if store.get_flow_by_slug(def.slug).await.map_err(e)?.is_some() {
            continue;
        }
        let flow = store
            .upsert_flow(&Flow {
                id: Uuid::now_v7(),
                slug: def.slug.into(),
                name: def.name.into(),
                title: def.title.into(),
                designation: def.designation,
                settings: def.settings,
                created_at: Utc::now(),
            })
            .await
            .map_err(e)?;
        for (i, (name, kind, config)) in def.stages.into_iter().enumerate() {
            let stage = match store.get_stage_by_name(name).await.map_err(e)? {
                Some(s) => s,
                None => store
                    .upsert_stage(&Stage {
                        id: Uuid::now_v7(),
                        name: name.into(),
                        kind: kind.into(),
                        config,
                        created_at: Utc::now(),
                    })
                    .await
                    .map_err(e)?,
            };
            store
                .upsert_binding(&FlowStageBinding {
                    id: Uuid::now_v7(),
                    flow_id: flow.id,
                    stage_id: stage.id,
                    order: (i as i64 + 1) * 10,
                    settings: json!({}),
                })
                .await
                .map_err(e)?;
        }
    }
    Ok(())
}
