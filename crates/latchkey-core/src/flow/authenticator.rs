//! Second-factor stages: enrolling a TOTP app (`authenticator_totp`) or recovery codes
//! (`authenticator_static`), and asking for a code after the password (`authenticator_validate`).

use async_trait::async_trait;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::{Challenge, PlannedStage, StageCx, StageHandler, Step};
use crate::error::{CoreError, Result};
use crate::model::{DeviceKind, User};
use crate::throttle::retry_after_secs;

/// The one answer to a wrong, expired or replayed code.
pub const INVALID_CODE: &str = "Invalid code.";
const PENDING_TOTP: &str = "authenticator_totp_device";
const PENDING_STATIC: &str = "authenticator_static_device";
const NOT_CONFIGURED: &str =
    "This account must use two-factor authentication, but has no authenticator set up. Ask an administrator.";

fn string_list(config: &Value, key: &str, default: &[&str]) -> Vec<String> {
    match config.get(key).and_then(Value::as_array) {
        Some(items) => items.iter().filter_map(Value::as_str).map(String::from).collect(),
        None => default.iter().map(|s| s.to_string()).collect(),
    }
}

fn answer_str<'a>(answer: &'a Map<String, Value>, field: &str) -> Option<&'a str> {
    answer.get(field).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

fn pending_device(cx: &StageCx<'_>, key: &str) -> Option<Uuid> {
    cx.state.data.get(key).and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// The user a setup stage enrolls: the flow's user, who must be logged in (stage configuration
/// flows) or have proven a factor earlier in this flow (enrollment forced at login).
async fn enrolling_user(cx: &StageCx<'_>) -> Result<Option<User>> {
    let Some(id) = cx.state.pending_user else {
        return Ok(None);
    };
    let by_session = cx.request.session.as_ref().is_some_and(|s| s.user.id == id);
    if !by_session && cx.state.amr.is_empty() {
        return Ok(None);
    }
    cx.services.store.get_user(id).await.map_err(CoreError::from_store)
}

const NO_USER: &str = "No user was authenticated in this flow.";

/// Enrolls a TOTP authenticator app: shows the secret (as text, `otpauth://` URL and QR code),
/// confirmed by one valid code.
pub struct AuthenticatorTotp;

impl AuthenticatorTotp {
    async fn challenge_for(cx: &mut StageCx<'_>, user: &User) -> Result<Challenge> {
        let mfa = &cx.services.mfa;
        let existing = match pending_device(cx, PENDING_TOTP) {
            Some(id) => mfa.get(id).await?.filter(|d| d.user_id == user.id && !d.confirmed),
            None => None,
        };
        let device = match existing {
            Some(d) => d,
            None => {
                let d = mfa.begin_totp(user, "Authenticator app").await?;
                cx.state.data.insert(PENDING_TOTP.into(), json!(d.id));
                d
            }
        };
        let setup = mfa.totp_setup(&device, &user.username)?;
        Ok(Challenge::new("authenticator_totp")
            .with("config_url", setup.config_url)
            .with("secret", setup.secret)
            .with("qr_svg", setup.qr_svg)
            .with("device_name", device.name))
    }
}

#[async_trait]
impl StageHandler for AuthenticatorTotp {
    fn kind(&self) -> &'static str {
        "authenticator_totp"
    }

    async fn challenge(&self, cx: &mut StageCx<'_>) -> Result<Step> {
        let Some(user) = enrolling_user(cx).await? else {
            return Ok(Step::Deny(NO_USER.into()));
        };
        Ok(Step::Show(Self::challenge_for(cx, &user).await?))
    }

    async fn submit(&self, cx: &mut StageCx<'_>, answer: &Map<String, Value>) -> Result<Step> {
        let Some(user) = enrolling_user(cx).await? else {
            return Ok(Step::Deny(NO_USER.into()));
        };
        let challenge = Self::challenge_for(cx, &user).await?;
        let Some(code) = answer_str(answer, "code") else {
            return Ok(Step::Malformed(challenge.error("code", "This field is required.")));
        };
        let name = answer_str(answer, "name").unwrap_or("");
        let Some(device_id) = pending_device(cx, PENDING_TOTP) else {
            return Ok(Step::Show(challenge.error("code", INVALID_CODE)));
        };
        if cx.services.mfa.confirm_totp(device_id, &user, code, name).await? {
            cx.state.data.remove(PENDING_TOTP);
            // A valid code from the new device proves possession of it, as a validation would.
            if !cx.state.amr.iter().any(|m| m == "otp") {
                cx.state.amr.push("otp".into());
            }
            return Ok(Step::Next);
        }
        Ok(Step::Show(challenge.error("code", INVALID_CODE)))
    }
}

/// Generates 10 single-use recovery codes, shown once; `{}` confirms they were stored (and
/// replaces any earlier set).
pub struct AuthenticatorStatic;

impl AuthenticatorStatic {
    async fn fresh(cx: &mut StageCx<'_>, user: &User) -> Result<Challenge> {
        let mfa = &cx.services.mfa;
        if let Some(old) = pending_device(cx, PENDING_STATIC) {
            if let Some(d) = mfa.get(old).await?.filter(|d| d.user_id == user.id && !d.confirmed) {
                cx.services.store.delete_device(d.id).await.map_err(CoreError::from_store)?;
            }
        }
        let (device, codes) = mfa.begin_static(user).await?;
        cx.state.data.insert(PENDING_STATIC.into(), json!(device.id));
        Ok(Challenge::new("authenticator_static").with("codes", codes))
    }
}

#[async_trait]
impl StageHandler for AuthenticatorStatic {
    fn kind(&self) -> &'static str {
        "authenticator_static"
    }

    async fn challenge(&self, cx: &mut StageCx<'_>) -> Result<Step> {
        let Some(user) = enrolling_user(cx).await? else {
            return Ok(Step::Deny(NO_USER.into()));
        };
        Ok(Step::Show(Self::fresh(cx, &user).await?))
    }

    async fn submit(&self, cx: &mut StageCx<'_>, _answer: &Map<String, Value>) -> Result<Step> {
        let Some(user) = enrolling_user(cx).await? else {
            return Ok(Step::Deny(NO_USER.into()));
        };
        let Some(device_id) = pending_device(cx, PENDING_STATIC) else {
            return Ok(Step::Show(Self::fresh(cx, &user).await?));
        };
        if cx.services.mfa.confirm_static(device_id, &user).await? {
            cx.state.data.remove(PENDING_STATIC);
            return Ok(Step::Next);
        }
        Ok(Step::Show(Self::fresh(cx, &user).await?))
    }
}

/// After the password: a user with a confirmed device must give a code from one of them.
/// Config: `device_classes` (default totp, static), `not_configured_action` (`skip`, `deny`,
/// `configure`) and `configure_stages` (`totp`, `static`) for `configure`.
pub struct AuthenticatorValidate;

impl AuthenticatorValidate {
    async fn user(cx: &StageCx<'_>) -> Result<Option<User>> {
        let Some(id) = cx.state.pending_user else {
            return Ok(None);
        };
        if cx.state.amr.is_empty() && cx.request.session.as_ref().is_none_or(|s| s.user.id != id) {
            return Ok(None);
        }
        cx.services.store.get_user(id).await.map_err(CoreError::from_store)
    }

    /// The classes the user has and this stage accepts.
    async fn classes(cx: &StageCx<'_>, user: &User) -> Result<Vec<DeviceKind>> {
        let allowed = string_list(cx.config, "device_classes", &["totp", "static"]);
        Ok(cx
            .services
            .mfa
            .configured_kinds(user.id)
            .await?
            .into_iter()
            .filter(|k| allowed.iter().any(|a| a == k.as_str()))
            .collect())
    }

    fn challenge_for(user: &User, classes: &[DeviceKind]) -> Challenge {
        Challenge::new("authenticator_validate")
            .with("device_classes", classes.iter().map(|k| k.as_str()).collect::<Vec<_>>())
            .with("pending_user", user.username.clone())
    }

    /// The throttle key of code attempts: apart from the password's, so that a correct
    /// password does not forgive wrong codes.
    fn login(user: &User) -> String {
        format!("mfa:{}", user.username)
    }

    fn already_validated(cx: &StageCx<'_>) -> bool {
        cx.state.amr.iter().any(|m| m == "otp")
    }
}

#[async_trait]
impl StageHandler for AuthenticatorValidate {
    fn kind(&self) -> &'static str {
        "authenticator_validate"
    }

    fn validate_config(&self, config: &Value) -> Result<()> {
        let action = config.get("not_configured_action").and_then(Value::as_str).unwrap_or("skip");
        if !["skip", "deny", "configure"].contains(&action) {
            return Err(CoreError::invalid_field(
                "not_configured_action",
                "not_configured_action must be skip, deny or configure",
            ));
        }
        for class in string_list(config, "device_classes", &["totp", "static"]) {
            if DeviceKind::parse(&class).is_none() {
                return Err(CoreError::invalid_field(
                    "device_classes",
                    "device_classes may list totp, static, webauthn",
                ));
            }
        }
        for stage in string_list(config, "configure_stages", &["totp"]) {
            if stage != "totp" && stage != "static" {
                return Err(CoreError::invalid_field("configure_stages", "configure_stages may list totp and static"));
            }
        }
        Ok(())
    }

    async fn challenge(&self, cx: &mut StageCx<'_>) -> Result<Step> {
        let Some(user) = Self::user(cx).await? else {
            return Ok(Step::Deny(NO_USER.into()));
        };
        if Self::already_validated(cx) {
            return Ok(Step::Next);
        }
        let classes = Self::classes(cx, &user).await?;
        if !classes.is_empty() {
            return Ok(Step::Show(Self::challenge_for(&user, &classes)));
        }
        match cx.config.get("not_configured_action").and_then(Value::as_str).unwrap_or("skip") {
            "deny" => Ok(Step::Deny(NOT_CONFIGURED.into())),
            "configure" => {
                // Enrollment right here, before the rest of the flow (and the login).
                let at = cx.state.index + 1;
                for (i, class) in string_list(cx.config, "configure_stages", &["totp"]).into_iter().enumerate() {
                    cx.state.plan.insert(
                        at + i,
                        PlannedStage {
                            binding_id: Uuid::nil(),
                            stage_id: Uuid::nil(),
                            name: format!("authenticator-configure-{class}"),
                            kind: format!("authenticator_{class}"),
                            config: json!({}),
                            re_evaluate: false,
                            binding_settings: json!({}),
                        },
                    );
                }
                cx.services
                    .events
                    .record(
                        "mfa_enrollment_required",
                        Some(&user),
                        &cx.request.client,
                        json!({ "flow": cx.state.flow_slug }),
                    )
                    .await;
                Ok(Step::Next)
            }
            _ => Ok(Step::Next),
        }
    }

    async fn submit(&self, cx: &mut StageCx<'_>, answer: &Map<String, Value>) -> Result<Step> {
        let Some(user) = Self::user(cx).await? else {
            return Ok(Step::Deny(NO_USER.into()));
        };
        let classes = Self::classes(cx, &user).await?;
        if classes.is_empty() {
            return self.challenge(cx).await;
        }
        let challenge = Self::challenge_for(&user, &classes);
        let Some(code) = answer_str(answer, "code") else {
            return Ok(Step::Malformed(challenge.error("code", "This field is required.")));
        };
        let login = Self::login(&user);
        let ip = cx.request.client.ip.clone();
        let s = cx.services;
        if let Some(wait) = s.throttle.check(&login, ip.as_deref()).await? {
            let secs = retry_after_secs(wait);
            cx.effects.retry_after = Some(secs);
            cx.effects.logins_failed += 1;
            return Ok(Step::Show(
                challenge.error("non_field_errors", &format!("Too many failed attempts. Try again in {secs} seconds.")),
            ));
        }
        if let Some(kind) = s.mfa.verify_code(&user, code).await? {
            s.throttle.success(&login).await?;
            if kind == DeviceKind::Static {
                s.events
                    .record(
                        "mfa_recovery_code_used",
                        Some(&user),
                        &cx.request.client,
                        json!({ "flow": cx.state.flow_slug }),
                    )
                    .await;
            }
            cx.state.amr.push("otp".into());
            if cx.state.amr.iter().any(|m| m == "pwd") {
                cx.state.amr.push("mfa".into());
            }
            return Ok(Step::Next);
        }
        cx.effects.logins_failed += 1;
        s.events
            .record_raw(
                "login_failed",
                Some(user.id),
                Some(user.username.clone()),
                &cx.request.client,
                json!({ "reason": "invalid_code", "flow": cx.state.flow_slug }),
            )
            .await;
        s.reputation.failure(&login, ip.as_deref()).await;
        if let Some(wait) = s.throttle.failure(&login, ip.as_deref()).await? {
            s.events
                .record_raw(
                    "login_throttled",
                    Some(user.id),
                    Some(login.clone()),
                    &cx.request.client,
                    json!({ "retry_after_seconds": retry_after_secs(wait) }),
                )
                .await;
        }
        Ok(Step::Show(challenge.error("non_field_errors", INVALID_CODE)))
    }
}
