//! The built-in stages: identification, password, user_login, user_logout, deny and the
//! first-run setup prompt.

use async_trait::async_trait;
use serde_json::{json, Map, Value};
use std::sync::Arc;

use super::{Challenge, StageCx, StageHandler, Step};
use crate::directory::{validate_email, validate_username, UserInput, ADMINS_GROUP};
use crate::error::{CoreError, Result};
use crate::model::{FlowDesignation, TokenKind, User};
use crate::throttle::retry_after_secs;

pub fn builtin() -> Vec<Arc<dyn StageHandler>> {
    vec![
        Arc::new(Identification),
        Arc::new(Password),
        Arc::new(UserLogin),
        Arc::new(UserLogout),
        Arc::new(Deny),
        Arc::new(InitialSetup),
        Arc::new(super::prompt::Prompt),
        Arc::new(super::prompt::UserWrite),
        Arc::new(super::consent::Consent),
        Arc::new(super::consent::Redirect),
        Arc::new(super::email::Email),
        Arc::new(super::enrollment::InvitationStage),
        Arc::new(super::authenticator::AuthenticatorTotp),
        Arc::new(super::authenticator::AuthenticatorStatic),
        Arc::new(super::authenticator::AuthenticatorValidate),
        Arc::new(super::authenticator::AuthenticatorWebauthn),
    ]
}

/// The one answer to any failed credential check: it must not tell whether the account exists.
pub const INVALID_CREDENTIALS: &str = "Invalid username or password.";
pub const THROTTLED: &str = "Too many failed attempts.";
const REQUIRED: &str = "This field is required.";

/// A required string field of an answer, or the challenge to show with the error.
fn required_str<'a>(answer: &'a Map<String, Value>, field: &str, challenge: &Challenge) -> Result<&'a str, Step> {
    match answer.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            Err(Step::Malformed(challenge.clone().error(field, REQUIRED)))
        }
        Some(_) => Err(Step::Malformed(challenge.clone().error(field, "This field must be a string."))),
    }
}

fn optional_str<'a>(answer: &'a Map<String, Value>, field: &str) -> Option<&'a str> {
    answer.get(field).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

fn string_list(config: &Value, key: &str, default: &[&str]) -> Vec<String> {
    match config.get(key).and_then(Value::as_array) {
        Some(items) => items.iter().filter_map(Value::as_str).map(String::from).collect(),
        None => default.iter().map(|s| s.to_string()).collect(),
    }
}

/// Records a failed login (and counts it for throttling) and answers with the uniform error.
async fn login_failed(
    cx: &mut StageCx<'_>,
    login: &str,
    user: Option<&User>,
    reason: &str,
    challenge: Challenge,
) -> Result<Step> {
    let s = cx.services;
    let ip = cx.request.client.ip.clone();
    cx.effects.logins_failed += 1;
    s.events
        .record_raw(
            "login_failed",
            user.map(|u| u.id),
            Some(login.to_string()),
            &cx.request.client,
            json!({ "reason": reason, "flow": cx.state.flow_slug }),
        )
        .await;
    s.reputation.failure(login, ip.as_deref()).await;
    if let Some(wait) = s.throttle.failure(login, ip.as_deref()).await? {
        s.events
            .record_raw(
                "login_throttled",
                user.map(|u| u.id),
                Some(login.to_string()),
                &cx.request.client,
                json!({ "retry_after_seconds": retry_after_secs(wait) }),
            )
            .await;
    }
    Ok(Step::Show(challenge.error("non_field_errors", INVALID_CREDENTIALS)))
}

/// The answer while a login is throttled: it says when to retry, and verifies nothing.
async fn throttled(cx: &mut StageCx<'_>, login: &str, wait: chrono::Duration, challenge: Challenge) -> Step {
    let secs = retry_after_secs(wait);
    cx.effects.retry_after = Some(secs);
    cx.effects.logins_failed += 1;
    cx.services
        .events
        .record_raw(
            "login_failed",
            None,
            Some(login.to_string()),
            &cx.request.client,
            json!({ "reason": "throttled", "flow": cx.state.flow_slug, "retry_after_seconds": secs }),
        )
        .await;
    Step::Show(challenge.error("non_field_errors", &format!("{THROTTLED} Try again in {secs} seconds.")))
}

/// A successful password check: forgive the account, raise reputation.
async fn login_succeeded(cx: &mut StageCx<'_>, login: &str) -> Result<()> {
    cx.services.throttle.success(login).await?;
    cx.services.reputation.success(login, cx.request.client.ip.as_deref()).await;
    Ok(())
}

/// Asks who the user is, optionally with the password on the same step, or takes a passkey.
pub struct Identification;

/// Where the identification stage keeps its passwordless ceremony state.
const PASSKEY_STATE: &str = "identification_passkey";

impl Identification {
    fn challenge_for(config: &Value) -> Challenge {
        let mut c = Challenge::new("identification")
            .with("user_fields", string_list(config, "user_fields", &["username", "email"]))
            .with("password_fields", config.get("password_fields").and_then(Value::as_bool).unwrap_or(false))
            .with("primary_action", config.get("primary_action").and_then(Value::as_str).unwrap_or("Log in"));
        for (key, field) in [("recovery_flow", "recovery_url"), ("enrollment_flow", "enroll_url")] {
            if let Some(slug) = config.get(key).and_then(Value::as_str) {
                c = c.with(field, format!("/if/flow/{slug}/"));
            }
        }
        c
    }

    /// With `passkey_login: true`, a fresh challenge for passwordless login with a passkey
    /// (discoverable credential; offered by browsers as autofill on the username field).
    fn with_passkey(cx: &mut StageCx<'_>, challenge: Challenge) -> Result<Challenge> {
        cx.state.data.remove(PASSKEY_STATE);
        if !cx.config.get("passkey_login").and_then(Value::as_bool).unwrap_or(false) {
            return Ok(challenge);
        }
        let Some((options, state)) = cx.services.mfa.begin_passwordless(&cx.request.origin)? else {
            return Ok(challenge);
        };
        cx.state.data.insert(PASSKEY_STATE.into(), state);
        Ok(challenge.with("passkey_challenge", options))
    }

    /// `{"passkey": {…assertion…}}`: the passkey names and authenticates its user; with user
    /// verification it is both factors at once.
    async fn passkey_login(
        cx: &mut StageCx<'_>,
        state: Option<Value>,
        passkey: std::result::Result<Value, String>,
        challenge: Challenge,
    ) -> Result<Step> {
        use crate::mfa::webauthn::PasswordlessCheck;
        let response = match passkey {
            Ok(v) => v,
            Err(reason) => return Ok(Step::Malformed(challenge.error("passkey", &reason))),
        };
        if !challenge.data.contains_key("passkey_challenge") {
            return Ok(Step::Malformed(challenge.error("passkey", "Passkey login is not enabled here.")));
        }
        let ip = cx.request.client.ip.clone();
        // Throttled per address: the account is not known before the passkey is checked (a
        // key shared by everyone would let one attacker lock out every passkey login).
        let throttle_key = format!("passkey:{}", ip.as_deref().unwrap_or("-"));
        let throttle_key = throttle_key.as_str();
        if let Some(wait) = cx.services.throttle.check(throttle_key, ip.as_deref()).await? {
            return Ok(throttled(cx, throttle_key, wait, challenge).await);
        }
        let outcome = match &state {
            Some(state) => {
                cx.services.mfa.verify_passwordless(&cx.request.origin, state, &response, &cx.request.client).await?
            }
            None => PasswordlessCheck::Refused,
        };
        match outcome {
            PasswordlessCheck::Verified { user, method, .. } => {
                cx.services.throttle.success(throttle_key).await?;
                cx.services.reputation.success(&user.username, ip.as_deref()).await;
                cx.state.pending_user = Some(user.id);
                cx.state.pending_login = Some(user.username.clone());
                cx.state.amr.push(method.into());
                // User verification (PIN, biometrics) was required: two factors in one.
                cx.state.amr.push("mfa".into());
                Ok(Step::Next)
            }
            PasswordlessCheck::Malformed(reason) => Ok(Step::Malformed(challenge.error("passkey", &reason))),
            PasswordlessCheck::Refused => {
                let s = cx.services;
                cx.effects.logins_failed += 1;
                s.events
                    .record_raw(
                        "login_failed",
                        None,
                        None,
                        &cx.request.client,
                        json!({ "reason": "invalid_passkey", "flow": cx.state.flow_slug }),
                    )
                    .await;
                s.throttle.failure(throttle_key, ip.as_deref()).await?;
                Ok(Step::Show(challenge.error("non_field_errors", super::authenticator::INVALID_KEY)))
            }
        }
    }

    /// The account `login` names, honouring which identifiers this stage accepts.
    async fn lookup(cx: &StageCx<'_>, login: &str) -> Result<Option<User>> {
        let fields = string_list(cx.config, "user_fields", &["username", "email"]);
        let Some(user) = cx.services.directory.find_by_login(login).await? else {
            return Ok(None);
        };
        let by_username = user.username.to_lowercase() == login.trim().to_lowercase();
        let allowed = (by_username && fields.iter().any(|f| f == "username"))
            || (!by_username && fields.iter().any(|f| f == "email"));
        // Service accounts authenticate with tokens only.
        Ok((allowed && user.kind == crate::model::UserKind::Internal).then_some(user))
    }
}

#[async_trait]
impl StageHandler for Identification {
    fn kind(&self) -> &'static str {
        "identification"
    }

    fn validate_config(&self, config: &Value) -> Result<()> {
        let fields = string_list(config, "user_fields", &["username", "email"]);
        if fields.is_empty() || fields.iter().any(|f| f != "username" && f != "email") {
            return Err(CoreError::invalid_field("user_fields", "user_fields must list username and/or email"));
        }
        Ok(())
    }

    async fn challenge(&self, cx: &mut StageCx<'_>) -> Result<Step> {
        let challenge = Self::with_passkey(cx, Self::challenge_for(cx.config))?;
        // An OIDC login_hint, passed along by the authorize endpoint, pre-fills the field.
        match cx.state.query.get("login_hint").filter(|h| h.len() <= 254 && !h.chars().any(char::is_control)) {
            Some(hint) => Ok(Step::Show(challenge.with("pending_user_identifier", hint.clone()))),
            None => Ok(Step::Show(challenge)),
        }
    }

    async fn submit(&self, cx: &mut StageCx<'_>, answer: &Map<String, Value>) -> Result<Step> {
        let passkey_state = cx.state.data.remove(PASSKEY_STATE);
        let challenge = Self::with_passkey(cx, Self::challenge_for(cx.config))?;
        if let Some(passkey) = super::authenticator::webauthn_answer(answer, "passkey") {
            return Self::passkey_login(cx, passkey_state, passkey, challenge).await;
        }
        let with_password = challenge.data.get("password_fields").and_then(Value::as_bool).unwrap_or(false);
        let login = match required_str(answer, "uid_field", &challenge) {
            Ok(l) => l.trim().to_string(),
            Err(step) => return Ok(step),
        };
        let challenge = challenge.with("pending_user_identifier", login.clone());
        if !with_password {
            let user = Self::lookup(cx, &login).await?;
            cx.state.pending_user = user.map(|u| u.id);
            cx.state.pending_login = Some(login);
            return Ok(Step::Next);
        }
        let password = match required_str(answer, "password", &challenge) {
            Ok(p) => p,
            Err(step) => return Ok(step),
        };
        if let Some(wait) = cx.services.throttle.check(&login, cx.request.client.ip.as_deref()).await? {
            return Ok(throttled(cx, &login, wait, challenge).await);
        }
        let user = Self::lookup(cx, &login).await?;
        if cx.services.directory.check_password(user.as_ref(), password).await? {
            if let Some(user) = user {
                login_succeeded(cx, &login).await?;
                cx.state.pending_user = Some(user.id);
                cx.state.pending_login = Some(login);
                cx.state.amr.push("pwd".into());
                return Ok(Step::Next);
            }
        }
        let reason = if user.is_some() { "invalid_password" } else { "unknown_user" };
        login_failed(cx, &login, user.as_ref(), reason, challenge).await
    }
}

/// Asks for the password of the identified user.
pub struct Password;

#[async_trait]
impl StageHandler for Password {
    fn kind(&self) -> &'static str {
        "password"
    }

    async fn challenge(&self, cx: &mut StageCx<'_>) -> Result<Step> {
        let Some(login) = cx.state.pending_login.clone() else {
            return Ok(Step::Deny("No user was identified before the password step.".into()));
        };
        Ok(Step::Show(Challenge::new("password").with("pending_user", login)))
    }

    async fn submit(&self, cx: &mut StageCx<'_>, answer: &Map<String, Value>) -> Result<Step> {
        let Some(login) = cx.state.pending_login.clone() else {
            return Ok(Step::Deny("No user was identified before the password step.".into()));
        };
        let challenge = Challenge::new("password").with("pending_user", login.clone());
        let password = match required_str(answer, "password", &challenge) {
            Ok(p) => p,
            Err(step) => return Ok(step),
        };
        if let Some(wait) = cx.services.throttle.check(&login, cx.request.client.ip.as_deref()).await? {
            return Ok(throttled(cx, &login, wait, challenge).await);
        }
        let user = match cx.state.pending_user {
            Some(id) => cx.services.store.get_user(id).await.map_err(CoreError::from_store)?,
            None => None,
        };
        if cx.services.directory.check_password(user.as_ref(), password).await? {
            login_succeeded(cx, &login).await?;
            cx.state.amr.push("pwd".into());
            return Ok(Step::Next);
        }
        let reason = if user.is_some() { "invalid_password" } else { "unknown_user" };
        login_failed(cx, &login, user.as_ref(), reason, challenge).await
    }
}

/// Starts a session for the identified user. No UI.
pub struct UserLogin;

#[async_trait]
impl StageHandler for UserLogin {
    fn kind(&self) -> &'static str {
        "user_login"
    }

    async fn challenge(&self, cx: &mut StageCx<'_>) -> Result<Step> {
        let Some(user_id) = cx.state.pending_user else {
            return Ok(Step::Deny("No user was authenticated in this flow.".into()));
        };
        let Some(user) = cx.services.store.get_user(user_id).await.map_err(CoreError::from_store)? else {
            return Ok(Step::Deny("No user was authenticated in this flow.".into()));
        };
        if !user.is_active {
            return Ok(Step::Deny("This account is disabled.".into()));
        }
        // A new id at every login: a session fixed by an attacker before login is worthless.
        if let Some(old) = &cx.request.session_cookie {
            cx.services.sessions.revoke_cookie(old).await?;
        }
        let mut amr = cx.state.amr.clone();
        // A logged-in user proving one more factor (step-up) keeps the factors of the session.
        if cx.state.designation != FlowDesignation::Authentication {
            if let Some(current) = cx.request.session.as_ref().filter(|s| s.user.id == user.id) {
                for m in &current.session.amr {
                    if !amr.contains(m) {
                        amr.insert(0, m.clone());
                    }
                }
            }
            if amr.iter().any(|m| m == "pwd") && amr.iter().any(|m| m == "otp") && !amr.iter().any(|m| m == "mfa") {
                amr.push("mfa".into());
            }
        }
        amr.dedup();
        let (cookie, session) = cx.services.sessions.create(&user, amr.clone(), &cx.request.client).await?;
        cx.effects.set_session = Some(cookie);
        cx.effects.logins_ok += 1;
        cx.services.directory.record_login(&user).await?;
        cx.services
            .events
            .record(
                "login",
                Some(&user),
                &cx.request.client,
                json!({ "flow": cx.state.flow_slug, "amr": amr, "session": session.id }),
            )
            .await;
        Ok(Step::Next)
    }

    async fn submit(&self, cx: &mut StageCx<'_>, _answer: &Map<String, Value>) -> Result<Step> {
        self.challenge(cx).await
    }
}

/// Ends the current session. No UI.
pub struct UserLogout;

#[async_trait]
impl StageHandler for UserLogout {
    fn kind(&self) -> &'static str {
        "user_logout"
    }

    async fn challenge(&self, cx: &mut StageCx<'_>) -> Result<Step> {
        if let Some(cookie) = &cx.request.session_cookie {
            if let Some(session) = cx.services.sessions.revoke_cookie(cookie).await? {
                let user = cx.services.store.get_user(session.user_id).await.map_err(CoreError::from_store)?;
                cx.services
                    .events
                    .record("logout", user.as_ref(), &cx.request.client, json!({ "session": session.id }))
                    .await;
                // Apps that got tokens from this session hear of its end (OIDC back-channel logout).
                if let Err(e) = cx.services.oauth.backchannel_logout(session.user_id, &session.id).await {
                    tracing::warn!(error = %e, "back-channel logout could not be sent");
                }
            }
        }
        cx.effects.clear_session = true;
        Ok(Step::Next)
    }

    async fn submit(&self, cx: &mut StageCx<'_>, _answer: &Map<String, Value>) -> Result<Step> {
        self.challenge(cx).await
    }
}

/// Stops the flow.
pub struct Deny;

#[async_trait]
impl StageHandler for Deny {
    fn kind(&self) -> &'static str {
        "deny"
    }

    async fn challenge(&self, cx: &mut StageCx<'_>) -> Result<Step> {
        let message = cx.config.get("message").and_then(Value::as_str).unwrap_or("Access denied.");
        Ok(Step::Deny(message.to_string()))
    }

    async fn submit(&self, cx: &mut StageCx<'_>, _answer: &Map<String, Value>) -> Result<Step> {
        self.challenge(cx).await
    }
}

/// The first-run prompt: creates the first administrator. Only with a valid setup token
/// (from the link printed at start) and only while no administrator exists.
pub struct InitialSetup;

const SETUP_LINK_INVALID: &str =
    "This setup link is invalid or has expired. Run `latchkey setup-link` to get a fresh one.";
const SETUP_DONE: &str = "Setup is already complete. Log in instead.";
pub const MIN_PASSWORD_LENGTH: usize = 8;

impl InitialSetup {
    fn challenge() -> Challenge {
        let field = |name: &str, label: &str, kind: &str, initial: Option<&str>| {
            let mut f = json!({ "name": name, "label": label, "type": kind, "required": true });
            if let Some(v) = initial {
                f["initial_value"] = json!(v);
            }
            f
        };
        Challenge::new("prompt")
            .with(
                "fields",
                vec![
                    field("username", "Username", "username", Some("admin")),
                    field("email", "Email", "email", None),
                    field("password", "Password", "password", None),
                    field("password_repeat", "Password (repeat)", "password", None),
                ],
            )
            .with("title", "Set up the administrator account")
            .with("primary_action", "Create administrator")
    }

    /// The setup token from the link, if it is still good; else why not.
    async fn check(cx: &StageCx<'_>) -> Result<Result<crate::model::Token, &'static str>> {
        if cx.services.directory.admin_exists().await? {
            return Ok(Err(SETUP_DONE));
        }
        let secret = cx.state.query.get("token").map(String::as_str).unwrap_or("");
        match cx.services.tokens.find(TokenKind::Setup, secret).await? {
            Some(token) => Ok(Ok(token)),
            None => Ok(Err(SETUP_LINK_INVALID)),
        }
    }
}

#[async_trait]
impl StageHandler for InitialSetup {
    fn kind(&self) -> &'static str {
        "initial_setup"
    }

    async fn challenge(&self, cx: &mut StageCx<'_>) -> Result<Step> {
        Ok(match Self::check(cx).await? {
            Ok(_) => Step::Show(Self::challenge()),
            Err(reason) => Step::Deny(reason.into()),
        })
    }

    async fn submit(&self, cx: &mut StageCx<'_>, answer: &Map<String, Value>) -> Result<Step> {
        let token = match Self::check(cx).await? {
            Ok(t) => t,
            Err(reason) => return Ok(Step::Deny(reason.into())),
        };
        let base = Self::challenge();
        let mut missing = base.clone();
        for field in ["email", "password", "password_repeat"] {
            if optional_str(answer, field).is_none() {
                missing = missing.error(field, REQUIRED);
            }
        }
        if !missing.errors.is_empty() {
            return Ok(Step::Malformed(missing));
        }
        let username = optional_str(answer, "username").unwrap_or("admin").to_string();
        let email = optional_str(answer, "email").unwrap_or_default().to_string();
        let password = answer.get("password").and_then(Value::as_str).unwrap_or_default();
        let repeat = answer.get("password_repeat").and_then(Value::as_str).unwrap_or_default();
        let mut refused = base.clone();
        if let Err(CoreError::Invalid { message, .. }) = validate_username(&username) {
            refused = refused.error("username", &message);
        }
        if let Err(CoreError::Invalid { message, .. }) = validate_email(&email) {
            refused = refused.error("email", &message);
        }
        if password.chars().count() < MIN_PASSWORD_LENGTH {
            refused = refused.error("password", &format!("Use at least {MIN_PASSWORD_LENGTH} characters."));
        }
        if password != repeat {
            refused = refused.error("password_repeat", "The passwords do not match.");
        }
        if refused.errors.is_empty() && cx.services.directory.find_by_login(&username).await?.is_some() {
            refused = refused.error("username", "This username is already taken.");
        }
        if !refused.errors.is_empty() {
            return Ok(Step::Show(refused));
        }
        // Consumed only now, when the flow completes: showing the page never burns the link.
        if !cx.services.tokens.consume(&token).await? {
            return Ok(Step::Deny(SETUP_LINK_INVALID.into()));
        }
        let user = cx
            .services
            .directory
            .create_user(
                UserInput {
                    username,
                    email: Some(email),
                    password: Some(password.to_string()),
                    groups: vec![ADMINS_GROUP.to_string()],
                    ..Default::default()
                },
                &cx.request.client,
            )
            .await?;
        cx.services.events.record("setup_completed", Some(&user), &cx.request.client, json!({})).await;
        cx.state.pending_user = Some(user.id);
        cx.state.pending_login = Some(user.username);
        cx.state.amr.push("pwd".into());
        Ok(Step::Next)
    }
}
