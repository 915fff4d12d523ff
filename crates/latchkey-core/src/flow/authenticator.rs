//! Second-factor stages: enrolling a TOTP app (`authenticator_totp`), recovery codes
//! (`authenticator_static`) or a security key / passkey (`authenticator_webauthn`), and asking
//! for a second factor after the password (`authenticator_validate`).

use async_trait::async_trait;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::{Challenge, PlannedStage, StageCx, StageHandler, Step};
use crate::error::{CoreError, Result};
use crate::mfa::webauthn::{RegistrationSettings, WebauthnCheck};
use crate::model::{DeviceKind, User};
use crate::throttle::retry_after_secs;

/// The one answer to a wrong, expired or replayed code.
pub const INVALID_CODE: &str = "Invalid code.";
const PENDING_TOTP: &str = "authenticator_totp_device";
const PENDING_STATIC: &str = "authenticator_static_device";
const PENDING_WEBAUTHN_REGISTRATION: &str = "authenticator_webauthn_registration";
const PENDING_WEBAUTHN_ASSERTION: &str = "authenticator_validate_webauthn";
const SELECTED_CLASS: &str = "authenticator_validate_class";
/// The one answer to a WebAuthn assertion or registration that does not verify.
pub const INVALID_KEY: &str = "The security key or passkey was not accepted.";
const NO_RELYING_PARTY: &str =
    "Security keys and passkeys need HTTPS (or localhost): set external_url to the https:// address users see.";
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

/// A WebAuthn answer: the credential object (JSON executor) or its JSON text (HTML form).
/// `Err` with a reason when it is neither.
pub(crate) fn webauthn_answer(answer: &Map<String, Value>, field: &str) -> Option<std::result::Result<Value, String>> {
    match answer.get(field)? {
        Value::Null => None,
        Value::String(s) if s.trim().is_empty() => None,
        Value::String(s) => Some(
            serde_json::from_str::<Value>(s)
                .map_err(|e| format!("not a WebAuthn credential: the field is not JSON ({e})"))
                .and_then(|v| {
                    if v.is_object() {
                        Ok(v)
                    } else {
                        Err("not a WebAuthn credential: expected an object".into())
                    }
                }),
        ),
        v @ Value::Object(_) => Some(Ok(v.clone())),
        _ => Some(Err("not a WebAuthn credential: expected an object".into())),
    }
}

/// Registers a security key or passkey (named): the challenge carries the options for
/// `navigator.credentials.create`, the answer `{"response": {…attestation…}, "name": "…"}`.
/// Config: `user_verification`, `resident_key_requirement` (`required`, `preferred`,
/// `discouraged`; default `preferred`) and `authenticator_attachment`.
pub struct AuthenticatorWebauthn;

impl AuthenticatorWebauthn {
    async fn fresh(cx: &mut StageCx<'_>, user: &User) -> Result<Option<Challenge>> {
        let settings = RegistrationSettings::from_config(cx.config)?;
        let Some((options, state)) =
            cx.services.mfa.begin_webauthn_registration(&cx.request.origin, user, &settings).await?
        else {
            return Ok(None);
        };
        cx.state.data.insert(PENDING_WEBAUTHN_REGISTRATION.into(), state);
        Ok(Some(
            Challenge::new("authenticator_webauthn")
                .with("registration", options)
                .with("device_name", "Security key")
                .with("pending_user", user.username.clone()),
        ))
    }
}

#[async_trait]
impl StageHandler for AuthenticatorWebauthn {
    fn kind(&self) -> &'static str {
        "authenticator_webauthn"
    }

    fn validate_config(&self, config: &Value) -> Result<()> {
        RegistrationSettings::from_config(config).map(|_| ())
    }

    async fn challenge(&self, cx: &mut StageCx<'_>) -> Result<Step> {
        let Some(user) = enrolling_user(cx).await? else {
            return Ok(Step::Deny(NO_USER.into()));
        };
        Ok(match Self::fresh(cx, &user).await? {
            Some(challenge) => Step::Show(challenge),
            None => Step::Deny(NO_RELYING_PARTY.into()),
        })
    }

    async fn submit(&self, cx: &mut StageCx<'_>, answer: &Map<String, Value>) -> Result<Step> {
        let Some(user) = enrolling_user(cx).await? else {
            return Ok(Step::Deny(NO_USER.into()));
        };
        let state = cx.state.data.remove(PENDING_WEBAUTHN_REGISTRATION);
        let response = webauthn_answer(answer, "response");
        let name = answer_str(answer, "name").unwrap_or("").to_string();
        let Some(challenge) = Self::fresh(cx, &user).await? else {
            return Ok(Step::Deny(NO_RELYING_PARTY.into()));
        };
        let response = match response {
            None => return Ok(Step::Malformed(challenge.error("response", "This field is required."))),
            Some(Err(reason)) => return Ok(Step::Malformed(challenge.error("response", &reason))),
            Some(Ok(v)) => v,
        };
        let Some(state) = state else {
            return Ok(Step::Show(challenge.error("non_field_errors", INVALID_KEY)));
        };
        let mfa = &cx.services.mfa;
        match mfa
            .finish_webauthn_registration(&cx.request.origin, &user, &state, &response, &name, &cx.request.client)
            .await?
        {
            Ok(_) => {
                cx.state.data.remove(PENDING_WEBAUTHN_REGISTRATION);
                Ok(Step::Next)
            }
            Err(WebauthnCheck::Malformed(reason)) => Ok(Step::Malformed(challenge.error("response", &reason))),
            Err(_) => Ok(Step::Show(challenge.error("non_field_errors", INVALID_KEY))),
        }
    }
}

/// After the password: a user with a confirmed device must use one of them.
///
/// Config: `device_classes` (default totp, static, webauthn), `not_configured_action` (`skip`,
/// `deny`, `configure`), `configure_stages` (`totp`, `static`, `webauthn`) for `configure`, and
/// `remember_device_days` (0, the default, never remembers): a browser that passed the second
/// factor with "remember this browser" skips it for that many days, until the user signs out
/// everywhere or changes their password.
///
/// The challenge lists the classes the user has (`device_classes`); `{"device_class": "…"}`
/// picks one (`selected_class`). Answers: `{"code": "…"}` (TOTP or recovery code) or
/// `{"webauthn": {…assertion…}}` for the `webauthn` options shown; either may carry
/// `"remember_device": true`.
pub struct AuthenticatorValidate;

const ALL_CLASSES: &[&str] = &["totp", "static", "webauthn"];

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

    fn allowed(cx: &StageCx<'_>) -> Vec<DeviceKind> {
        string_list(cx.config, "device_classes", ALL_CLASSES).iter().filter_map(|c| DeviceKind::parse(c)).collect()
    }

    /// The classes the user has and this stage accepts.
    async fn classes(cx: &StageCx<'_>, user: &User) -> Result<Vec<DeviceKind>> {
        let allowed = Self::allowed(cx);
        Ok(cx.services.mfa.configured_kinds(user.id).await?.into_iter().filter(|k| allowed.contains(k)).collect())
    }

    fn remember_days(cx: &StageCx<'_>) -> i64 {
        cx.config.get("remember_device_days").and_then(Value::as_i64).unwrap_or(0).clamp(0, 365)
    }

    /// The challenge, with a fresh WebAuthn assertion challenge when the user has keys.
    async fn challenge_for(cx: &mut StageCx<'_>, user: &User, classes: &[DeviceKind]) -> Result<Challenge> {
        let selected = cx
            .state
            .data
            .get(SELECTED_CLASS)
            .and_then(Value::as_str)
            .and_then(DeviceKind::parse)
            .filter(|k| classes.contains(k))
            .or_else(|| (classes.len() == 1).then(|| classes[0]));
        let mut challenge = Challenge::new("authenticator_validate")
            .with("device_classes", classes.iter().map(|k| k.as_str()).collect::<Vec<_>>())
            .with("pending_user", user.username.clone())
            .with("remember_device_days", Self::remember_days(cx));
        if let Some(kind) = selected {
            challenge = challenge.with("selected_class", kind.as_str());
        }
        cx.state.data.remove(PENDING_WEBAUTHN_ASSERTION);
        if classes.contains(&DeviceKind::Webauthn) {
            if let Some((options, state)) =
                cx.services.mfa.begin_webauthn_authentication(&cx.request.origin, user).await?
            {
                cx.state.data.insert(PENDING_WEBAUTHN_ASSERTION.into(), state);
                challenge = challenge.with("webauthn", options);
            }
        }
        Ok(challenge)
    }

    /// The throttle key of second-factor attempts: apart from the password's, so that a
    /// correct password does not forgive wrong codes.
    fn login(user: &User) -> String {
        format!("mfa:{}", user.username)
    }

    fn already_validated(cx: &StageCx<'_>) -> bool {
        cx.state.amr.iter().any(|m| m == "otp" || m == "hwk" || m == "swk")
    }

    fn wants_remember(answer: &Map<String, Value>) -> bool {
        match answer.get("remember_device") {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => matches!(s.as_str(), "on" | "true" | "1" | "yes"),
            _ => false,
        }
    }

    /// A second factor passed: amr, throttle, and the remembered browser if asked for.
    async fn passed(cx: &mut StageCx<'_>, user: &User, method: &str, answer: &Map<String, Value>) -> Result<Step> {
        let s = cx.services;
        s.throttle.success(&Self::login(user)).await?;
        cx.state.amr.push(method.into());
        if cx.state.amr.iter().any(|m| m == "pwd") && !cx.state.amr.iter().any(|m| m == "mfa") {
            cx.state.amr.push("mfa".into());
        }
        let days = Self::remember_days(cx);
        if days > 0 && Self::wants_remember(answer) {
            let cookie = s.mfa.remember_browser(user, days).await?;
            cx.effects.remember_device = Some((cookie, days * 86_400));
            s.events.record("mfa_browser_remembered", Some(user), &cx.request.client, json!({ "days": days })).await;
        }
        cx.state.data.remove(PENDING_WEBAUTHN_ASSERTION);
        cx.state.data.remove(SELECTED_CLASS);
        Ok(Step::Next)
    }

    /// A failed second factor: audited, counted for throttling, one generic message.
    async fn failed(
        cx: &mut StageCx<'_>,
        user: &User,
        reason: &str,
        challenge: Challenge,
        message: &str,
    ) -> Result<Step> {
        let s = cx.services;
        let login = Self::login(user);
        let ip = cx.request.client.ip.clone();
        cx.effects.logins_failed += 1;
        s.events
            .record_raw(
                "login_failed",
                Some(user.id),
                Some(user.username.clone()),
                &cx.request.client,
                json!({ "reason": reason, "flow": cx.state.flow_slug }),
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
        Ok(Step::Show(challenge.error("non_field_errors", message)))
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
        for class in string_list(config, "device_classes", ALL_CLASSES) {
            if DeviceKind::parse(&class).is_none() {
                return Err(CoreError::invalid_field(
                    "device_classes",
                    "device_classes may list totp, static, webauthn",
                ));
            }
        }
        for stage in string_list(config, "configure_stages", &["totp"]) {
            if DeviceKind::parse(&stage).is_none() {
                return Err(CoreError::invalid_field(
                    "configure_stages",
                    "configure_stages may list totp, static and webauthn",
                ));
            }
        }
        match config.get("remember_device_days") {
            None | Some(Value::Null) => {}
            Some(v) if v.as_i64().is_some_and(|d| (0..=365).contains(&d)) => {}
            Some(_) => {
                return Err(CoreError::invalid_field(
                    "remember_device_days",
                    "remember_device_days must be a number of days from 0 to 365",
                ))
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
            if Self::remember_days(cx) > 0 {
                if let Some(cookie) = cx.request.remember_device.clone() {
                    if cx.services.mfa.is_remembered(&user, &cookie).await? {
                        cx.services
                            .events
                            .record(
                                "mfa_skipped_remembered_browser",
                                Some(&user),
                                &cx.request.client,
                                json!({ "flow": cx.state.flow_slug }),
                            )
                            .await;
                        return Ok(Step::Next);
                    }
                }
            }
            return Ok(Step::Show(Self::challenge_for(cx, &user, &classes).await?));
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
        if classes.is_empty() || Self::already_validated(cx) {
            return self.challenge(cx).await;
        }
        let assertion_state = cx.state.data.get(PENDING_WEBAUTHN_ASSERTION).cloned();
        let webauthn = webauthn_answer(answer, "webauthn");
        let code = answer_str(answer, "code").map(String::from);
        if webauthn.is_none() && code.is_none() {
            if let Some(class) = answer_str(answer, "device_class") {
                // Picking which kind of device to use.
                let Some(kind) = DeviceKind::parse(class).filter(|k| classes.contains(k)) else {
                    let challenge = Self::challenge_for(cx, &user, &classes).await?;
                    return Ok(Step::Malformed(
                        challenge.error("device_class", "Choose one of the listed device classes."),
                    ));
                };
                cx.state.data.insert(SELECTED_CLASS.into(), json!(kind.as_str()));
                return Ok(Step::Show(Self::challenge_for(cx, &user, &classes).await?));
            }
        }
        let challenge = Self::challenge_for(cx, &user, &classes).await?;
        let login = Self::login(&user);
        let s = cx.services;
        if let Some(wait) = s.throttle.check(&login, cx.request.client.ip.as_deref()).await? {
            let secs = retry_after_secs(wait);
            cx.effects.retry_after = Some(secs);
            cx.effects.logins_failed += 1;
            return Ok(Step::Show(
                challenge.error("non_field_errors", &format!("Too many failed attempts. Try again in {secs} seconds.")),
            ));
        }
        if let Some(webauthn) = webauthn {
            let response = match webauthn {
                Ok(v) => v,
                Err(reason) => return Ok(Step::Malformed(challenge.error("webauthn", &reason))),
            };
            if !classes.contains(&DeviceKind::Webauthn) {
                return Ok(Step::Malformed(challenge.error("webauthn", "Security keys are not accepted here.")));
            }
            let Some(state) = assertion_state else {
                return Self::failed(cx, &user, "invalid_webauthn", challenge, INVALID_KEY).await;
            };
            return match s.mfa.verify_webauthn(&cx.request.origin, &user, &state, &response, &cx.request.client).await?
            {
                WebauthnCheck::Verified { method, .. } => Self::passed(cx, &user, method, answer).await,
                WebauthnCheck::Malformed(reason) => Ok(Step::Malformed(challenge.error("webauthn", &reason))),
                WebauthnCheck::Refused => Self::failed(cx, &user, "invalid_webauthn", challenge, INVALID_KEY).await,
            };
        }
        let Some(code) = code else {
            return Ok(Step::Malformed(challenge.error("code", "This field is required.")));
        };
        let code_kinds: Vec<DeviceKind> = classes.iter().copied().filter(|k| *k != DeviceKind::Webauthn).collect();
        if let Some(kind) = s.mfa.verify_code_of(&user, &code, &code_kinds).await? {
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
            return Self::passed(cx, &user, "otp", answer).await;
        }
        Self::failed(cx, &user, "invalid_code", challenge, INVALID_CODE).await
    }
}
