//! Configurable forms: the `prompt` stage asks for fields, `user_write` turns the answers
//! into a user (created or updated).

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use super::{Challenge, StageCx, StageHandler, Step};
use crate::directory::{validate_email, validate_username, UserInput};
use crate::error::{CoreError, Result};
use crate::model::UserKind;

pub const FIELD_TYPES: &[&str] = &["text", "email", "username", "password", "checkbox", "hidden", "static"];
const REQUIRED: &str = "This field is required.";

/// Where prompt answers are kept in the flow state for later stages.
pub const PROMPT_DATA: &str = "prompt_data";

fn fields(config: &Value) -> Vec<Map<String, Value>> {
    config
        .get("fields")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|f| f.as_object().cloned()).collect())
        .unwrap_or_default()
}

fn str_of<'a>(field: &'a Map<String, Value>, key: &str) -> &'a str {
    field.get(key).and_then(Value::as_str).unwrap_or("")
}

pub struct Prompt;

impl Prompt {
    /// The challenge, with initial values filled from the user the flow is about.
    async fn challenge_for(cx: &StageCx<'_>) -> Result<Challenge> {
        let user = match cx.state.pending_user {
            Some(id) => cx.services.store.get_user(id).await.map_err(CoreError::from_store)?,
            None => None,
        };
        let preset = cx.state.data.get(super::enrollment::PROMPT_INITIAL).and_then(Value::as_object).cloned();
        let mut out = Vec::new();
        for mut f in fields(cx.config) {
            if let Some(v) = preset.as_ref().and_then(|p| p.get(str_of(&f, "name"))) {
                f.insert("initial_value".into(), v.clone());
            }
            if !f.contains_key("initial_value") {
                let from_user = user.as_ref().and_then(|u| match str_of(&f, "name") {
                    "username" => Some(u.username.clone()),
                    "name" => Some(u.name.clone()),
                    "email" => u.email.clone(),
                    _ => None,
                });
                if let Some(v) = from_user {
                    f.insert("initial_value".into(), json!(v));
                }
            }
            f.entry("required").or_insert(json!(false));
            if !f.contains_key("label") {
                let label = json!(str_of(&f, "name"));
                f.insert("label".into(), label);
            }
            out.push(Value::Object(f));
        }
        let mut c = Challenge::new("prompt").with("fields", out);
        for key in ["title", "primary_action"] {
            if let Some(v) = cx.config.get(key) {
                c = c.with(key, v.clone());
            }
        }
        Ok(c)
    }
}

#[async_trait]
impl StageHandler for Prompt {
    fn kind(&self) -> &'static str {
        "prompt"
    }

    fn validate_config(&self, config: &Value) -> Result<()> {
        let Some(list) = config.get("fields").and_then(Value::as_array) else {
            return Err(CoreError::invalid_field("fields", "a prompt stage needs a list of fields"));
        };
        for (i, f) in list.iter().enumerate() {
            let name = f.get("name").and_then(Value::as_str).unwrap_or("");
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
                return Err(CoreError::invalid_field(
                    &format!("fields[{i}].name"),
                    "a field needs a name of letters, digits, _ and .",
                ));
            }
            let kind = f.get("type").and_then(Value::as_str).unwrap_or("");
            if !FIELD_TYPES.contains(&kind) {
                return Err(CoreError::invalid_field(
                    &format!("fields[{i}].type"),
                    format!("unknown field type '{kind}'; use one of {}", FIELD_TYPES.join(", ")),
                ));
            }
        }
        Ok(())
    }

    async fn challenge(&self, cx: &mut StageCx<'_>) -> Result<Step> {
        Ok(Step::Show(Self::challenge_for(cx).await?))
    }

    async fn submit(&self, cx: &mut StageCx<'_>, answer: &Map<String, Value>) -> Result<Step> {
        let challenge = Self::challenge_for(cx).await?;
        let all = fields(cx.config);
        let mut data = Map::new();
        let mut malformed = challenge.clone();
        let mut refused = challenge.clone();
        for f in &all {
            let name = str_of(f, "name");
            let kind = str_of(f, "type");
            let required = f.get("required").and_then(Value::as_bool).unwrap_or(false);
            match kind {
                "static" => continue,
                // Hidden values come from the configuration, never from the client.
                "hidden" => {
                    data.insert(name.into(), f.get("initial_value").cloned().unwrap_or(Value::Null));
                    continue;
                }
                "checkbox" => {
                    let checked = match answer.get(name) {
                        Some(Value::Bool(b)) => *b,
                        Some(Value::String(s)) => matches!(s.as_str(), "true" | "on" | "1" | "yes"),
                        None | Some(Value::Null) => false,
                        Some(_) => {
                            malformed = malformed.error(name, "This field must be true or false.");
                            continue;
                        }
                    };
                    if required && !checked {
                        refused = refused.error(name, REQUIRED);
                    }
                    data.insert(name.into(), json!(checked));
                    continue;
                }
                _ => {}
            }
            let value = match answer.get(name) {
                Some(Value::String(s)) => s.clone(),
                None | Some(Value::Null) => {
                    if required {
                        malformed = malformed.error(name, REQUIRED);
                    }
                    continue;
                }
                Some(_) => {
                    malformed = malformed.error(name, "This field must be a string.");
                    continue;
                }
            };
            let value = if kind == "password" { value } else { value.trim().to_string() };
            if value.is_empty() {
                if required {
                    refused = refused.error(name, REQUIRED);
                }
                continue;
            }
            let check = match kind {
                "email" if !super::enrollment::email_domain_allowed(&cx.state.data, &value) => {
                    Err(CoreError::invalid_field(name, "Sign-ups are not open to addresses at this domain."))
                }
                "email" => match cx.state.data.get(super::enrollment::FIXED_EMAIL).and_then(Value::as_str) {
                    Some(fixed) if !fixed.eq_ignore_ascii_case(&value) => {
                        Err(CoreError::invalid_field(name, format!("This invitation is for {fixed}.")))
                    }
                    _ => validate_email(&value),
                },
                "username" => validate_username(&value),
                _ => Ok(()),
            };
            if let Err(CoreError::Invalid { message, .. }) = check {
                refused = refused.error(name, &message);
            }
            data.insert(name.into(), json!(value));
        }
        if !malformed.errors.is_empty() {
            return Ok(Step::Malformed(malformed));
        }
        // `<name>_repeat` confirms `<name>`.
        for f in &all {
            let name = str_of(f, "name");
            if let Some(original) = name.strip_suffix("_repeat") {
                if data.get(original) != data.get(name) {
                    refused = refused.error(name, "The passwords do not match.");
                }
            }
        }
        if let Some(Value::String(username)) = data.get("username") {
            if let Some(existing) = cx.services.directory.find_by_login(username).await? {
                if Some(existing.id) != cx.state.pending_user && existing.username.eq_ignore_ascii_case(username) {
                    refused = refused.error("username", "This username is already taken.");
                }
            }
        }
        if refused.errors.is_empty() {
            if let Some(password) = all.iter().find(|f| str_of(f, "type") == "password").map(|f| str_of(f, "name")) {
                if let Some(Value::String(candidate)) = data.get(password) {
                    for message in cx.validate_password(candidate).await? {
                        refused = refused.error(password, &message);
                    }
                }
            }
        }
        if !refused.errors.is_empty() {
            return Ok(Step::Show(refused));
        }
        let stored = cx.state.data.entry(PROMPT_DATA).or_insert_with(|| json!({}));
        if let Value::Object(m) = stored {
            m.extend(data);
        }
        Ok(Step::Next)
    }
}

/// Creates or updates the flow's user from the prompt answers.
pub struct UserWrite;

#[async_trait]
impl StageHandler for UserWrite {
    fn kind(&self) -> &'static str {
        "user_write"
    }

    fn validate_config(&self, config: &Value) -> Result<()> {
        let mode = config.get("user_creation_mode").and_then(Value::as_str).unwrap_or("create_when_required");
        if !["create_when_required", "always_create", "never_create"].contains(&mode) {
            return Err(CoreError::invalid_field(
                "user_creation_mode",
                "use create_when_required, always_create or never_create",
            ));
        }
        Ok(())
    }

    async fn challenge(&self, cx: &mut StageCx<'_>) -> Result<Step> {
        let data = cx.state.data.get(PROMPT_DATA).and_then(Value::as_object).cloned().unwrap_or_default();
        let text = |k: &str| data.get(k).and_then(Value::as_str).map(str::to_string).filter(|s| !s.is_empty());
        let mode = cx.config.get("user_creation_mode").and_then(Value::as_str).unwrap_or("create_when_required");
        let dir = &cx.services.directory;
        let client = cx.request.client.clone();
        let existing = match (cx.state.pending_user, mode) {
            (_, "always_create") | (None, _) => None,
            (Some(id), _) => Some(dir.get_user(id).await?),
        };
        let mut attributes = Map::new();
        for (k, v) in &data {
            if let Some(attr) = k.strip_prefix("attributes.") {
                attributes.insert(attr.to_string(), v.clone());
            }
        }
        match existing {
            Some(mut user) => {
                if let Some(u) = text("username") {
                    user.username = u;
                }
                if let Some(n) = text("name") {
                    user.name = n;
                }
                if let Some(e) = text("email") {
                    let changed = user.email.as_deref().map(str::to_lowercase) != Some(e.to_lowercase());
                    let confirm = cx.config.get("confirm_email_change").and_then(Value::as_bool).unwrap_or(false);
                    if changed && confirm {
                        // The new address must prove it reads its mail before it replaces the old one.
                        super::email::request_email_change(cx.services, &user, &e, &cx.request.origin, &client).await?;
                    } else {
                        user.email = Some(e);
                    }
                }
                if let Value::Object(current) = &mut user.attributes {
                    current.extend(attributes);
                }
                dir.update_user(&user, &client).await?;
                if let Some(password) = text("password") {
                    dir.set_password(&user, &password, &client).await?;
                    // Choosing the password counts as knowing it (e.g. in recovery, after the
                    // mailed link); a second factor may still follow.
                    if !cx.state.amr.iter().any(|m| m == "pwd") {
                        cx.state.amr.push("pwd".into());
                    }
                    // Setting a password ends every session; keep the user who changed it logged in.
                    if cx.request.session.as_ref().is_some_and(|s| s.user.id == user.id) {
                        let amr = cx.request.session.as_ref().map(|s| s.session.amr.clone()).unwrap_or_default();
                        let (cookie, _) = cx.services.sessions.create(&user, amr, &client).await?;
                        cx.effects.set_session = Some(cookie);
                    }
                }
            }
            None if mode == "never_create" => {
                return Ok(Step::Deny("No user to update in this flow.".into()));
            }
            None => {
                let Some(username) = text("username") else {
                    return Ok(Step::Deny("The flow did not ask for a username.".into()));
                };
                // The invitation is used up when the account it admits is created (a link
                // opened twice cannot create two accounts).
                let invitation = cx.state.data.get(super::enrollment::INVITATION_ID).cloned();
                if let Some(id) = invitation.and_then(|v| serde_json::from_value::<uuid::Uuid>(v).ok()) {
                    let now = cx.services.clock.now();
                    if !cx.services.store.use_invitation(id, now).await.map_err(CoreError::from_store)? {
                        return Ok(Step::Deny(
                            "This invitation was used up in the meantime. Ask for a new one.".into(),
                        ));
                    }
                }
                let fixed = cx.state.data.get(super::enrollment::FIXED_EMAIL).and_then(Value::as_str).map(String::from);
                let approval =
                    cx.state.data.get(super::enrollment::REQUIRE_APPROVAL).and_then(Value::as_bool).unwrap_or(false);
                let inactive =
                    approval || cx.config.get("create_users_as_inactive").and_then(Value::as_bool).unwrap_or(false);
                let mut groups: Vec<String> = cx
                    .config
                    .get("create_users_group")
                    .and_then(Value::as_str)
                    .map(|g| vec![g.to_string()])
                    .unwrap_or_default();
                if let Some(Value::Array(more)) = cx.state.data.get(super::enrollment::GROUPS) {
                    groups.extend(more.iter().filter_map(Value::as_str).map(String::from));
                }
                let user = dir
                    .create_user(
                        UserInput {
                            username,
                            name: text("name"),
                            email: fixed.or_else(|| text("email")),
                            password: text("password"),
                            groups,
                            kind: Some(UserKind::Internal),
                            is_active: Some(!inactive),
                        },
                        &client,
                    )
                    .await?;
                if !attributes.is_empty() {
                    let mut with_attrs = user.clone();
                    with_attrs.attributes = Value::Object(attributes);
                    dir.update_user(&with_attrs, &client).await?;
                }
                cx.state.pending_login = Some(user.username.clone());
                cx.state.pending_user = Some(user.id);
                if inactive && approval {
                    notify_admins_of_signup(cx, &user).await?;
                    return Ok(Step::Deny(
                        "Thanks for signing up! An administrator will review your account; you can log in once it is approved."
                            .into(),
                    ));
                }
            }
        }
        Ok(Step::Next)
    }

    async fn submit(&self, cx: &mut StageCx<'_>, _answer: &Map<String, Value>) -> Result<Step> {
        self.challenge(cx).await
    }
}

/// Mails every administrator with an address that a sign-up awaits approval.
async fn notify_admins_of_signup(cx: &mut StageCx<'_>, user: &crate::model::User) -> Result<()> {
    let s = cx.services;
    s.events.record("signup_pending_approval", Some(user), &cx.request.client, json!({})).await;
    let admins = s.store.list_users(&crate::model::ListQuery::all()).await.map_err(CoreError::from_store)?.items;
    for admin in admins {
        let Some(address) = admin.email.clone().filter(|_| admin.is_active) else { continue };
        if !s.directory.is_superuser(admin.id).await? {
            continue;
        }
        let message = s.mailer.render(
            "approval",
            "A new account awaits approval",
            &json!({ "user": { "username": user.username, "name": user.name, "email": user.email }, "url": format!("{}/if/admin/", cx.request.origin) }),
        )?;
        s.mailer.queue(&s.mailer.compose(&address, message)).await?;
    }
    Ok(())
}
