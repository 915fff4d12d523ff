//! `/if/user/`: the user portal — "My applications" and the user's own settings (profile and
//! password through their flows, MFA devices, sessions, consents, app passwords).

use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, State};
use axum::routing::{get, post};
use axum::Router;
use latchkey_core::app_passwords::NewAppPassword;
use latchkey_core::console;
use latchkey_core::mfa::Mfa;
use latchkey_core::model::User;
use latchkey_core::policy::RequestFacts;

use crate::request::Caller;
use crate::state::AppState;
use crate::ui::{done, fmt_time, parse_id, Ui, UiResult};

pub fn routes() -> Router<AppState> {
    let r = Router::new();
    let r = crate::both(r, "/if/user/", get(applications));
    let r = crate::both(r, "/if/user/settings/", get(settings));
    let r = r.route("/if/user/settings/devices/{id}/delete/", post(remove_device));
    let r = r.route("/if/user/settings/sessions/{id}/revoke/", post(revoke_session));
    let r = r.route("/if/user/settings/sessions/revoke-all/", post(revoke_all));
    let r = r.route("/if/user/settings/consents/{id}/revoke/", post(revoke_consent));
    let r = r.route("/if/user/settings/app-passwords/", post(create_app_password));
    r.route("/if/user/settings/app-passwords/{id}/revoke/", post(revoke_app_password))
}

fn here(uri: &axum::http::Uri) -> String {
    uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/if/user/".into())
}

async fn me(ui: &Ui) -> Result<User, crate::ui::UiError> {
    Ok(ui.core().directory.get_user(ui.me.user.id).await?)
}

fn facts(caller: &Caller) -> RequestFacts {
    RequestFacts {
        client_ip: caller.ip.map(|ip| ip.to_string()),
        user_agent: caller.user_agent.clone(),
        host: caller.host.clone(),
        path: Some(caller.path.clone()),
        method: Some(caller.method.clone()),
    }
}

pub async fn applications(State(state): State<AppState>, caller: Caller, OriginalUri(uri): OriginalUri) -> UiResult {
    let ui = Ui::user(&state, caller, &here(&uri)).await?;
    // The most visited page answers from memory: the cached user, the cached catalog.
    let user = match ui.core().users.user(ui.me.user.id).await? {
        Some(user) => user,
        None => std::sync::Arc::new(me(&ui).await?),
    };
    let groups = console::portal_applications(ui.core(), &user, &facts(&ui.caller)).await?;
    let groups: Vec<_> = groups.into_iter().map(|(name, tiles)| minijinja::context! { name, tiles }).collect();
    ui.page("portal/applications.html", "apps", minijinja::context! { groups, member_of => ui.me.user.groups })
}

pub async fn settings(State(state): State<AppState>, caller: Caller, OriginalUri(uri): OriginalUri) -> UiResult {
    let ui = Ui::user(&state, caller, &here(&uri)).await?;
    let ctx = settings_ctx(&ui).await?;
    ui.page("portal/settings.html", "settings", ctx)
}

async fn settings_ctx(ui: &Ui) -> Result<minijinja::Value, crate::ui::UiError> {
    let core = ui.core();
    let user = me(ui).await?;
    let devices: Vec<_> = core
        .mfa
        .list(user.id)
        .await?
        .into_iter()
        .filter(|d| d.confirmed)
        .map(|d| {
            minijinja::context! {
                id => d.id.to_string(), kind => d.kind.as_str(), name => d.name,
                created => fmt_time(&d.created_at),
                last_used => d.last_used_at.as_ref().map(fmt_time),
                remaining => (d.kind == latchkey_core::model::DeviceKind::Static).then(|| Mfa::remaining_codes(&d)),
            }
        })
        .collect();
    let current = ui.me.session.id.clone();
    let sessions: Vec<_> = core
        .sessions
        .list(Some(user.id))
        .await?
        .into_iter()
        .map(|s| {
            minijinja::context! {
                id => s.id, current => s.id == current, ip => s.client_ip, agent => s.user_agent,
                created => fmt_time(&s.created_at), last_seen => fmt_time(&s.last_seen),
            }
        })
        .collect();
    let mut consents = Vec::new();
    for g in core.store.list_consents(user.id).await.map_err(latchkey_core::CoreError::from_store)? {
        let app = core.store.get_application(g.application_id).await.map_err(latchkey_core::CoreError::from_store)?;
        consents.push(minijinja::context! {
            id => g.id.to_string(),
            application => app.map(|a| a.name).unwrap_or_else(|| "(deleted application)".into()),
            permissions => g.permissions,
            created => fmt_time(&g.created_at),
            expires => g.expires_at.as_ref().map(fmt_time),
        });
    }
    let mut app_passwords = Vec::new();
    for p in core.app_passwords.list(&user).await? {
        app_passwords.push(minijinja::context! {
            id => p.id.to_string(), name => p.name,
            scope => core.app_passwords.scope_slugs(&p).await?,
            created => fmt_time(&p.created_at),
            expires => p.expires_at.as_ref().map(fmt_time),
            last_used => p.last_used_at.as_ref().map(fmt_time),
        });
    }
    Ok(minijinja::context! {
        user => minijinja::context! {
            username => user.username, name => user.name, email => user.email,
            groups => ui.me.user.groups,
            password_changed => user.password_changed_at.as_ref().map(fmt_time),
        },
        profile_flow => ui.settings.default_user_settings_flow,
        devices, sessions, consents, app_passwords,
    })
}

/// Validity choices offered for a new app password.
const APP_PASSWORD_EXPIRY: &[&str] = &["", "30d", "90d", "365d"];

async fn create_app_password(State(state): State<AppState>, caller: Caller, body: Bytes) -> UiResult {
    let ui = Ui::user(&state, caller, SETTINGS).await?;
    let form = ui.form(&body)?;
    let user = me(&ui).await?;
    let core = ui.core();
    let created = async {
        let expires = form.get("expires").trim();
        if !APP_PASSWORD_EXPIRY.contains(&expires) {
            return Err(latchkey_core::CoreError::invalid_field("expires", "Choose one of the offered validities."));
        }
        let slugs: Vec<String> =
            form.get("applications").split([',', ' ']).map(str::to_string).filter(|s| !s.is_empty()).collect();
        let applications = core.app_passwords.applications_by_slug(&slugs).await?;
        let expires_in = latchkey_core::app_passwords::parse_expiry(expires);
        let input = NewAppPassword { name: form.get("name").to_string(), applications, expires_in };
        core.app_passwords.create(&user, input, &ui.client()).await
    }
    .await;
    match created {
        // The secret is shown this once, on a page that is not cached.
        Ok((secret, record)) => ui.page(
            "portal/app_password_created.html",
            "settings",
            minijinja::context! { name => record.name, secret, username => user.username },
        ),
        Err(e) => {
            let ctx = settings_ctx(&ui).await?;
            ui.refused("portal/settings.html", "settings", ctx, &form, e)
        }
    }
}

async fn revoke_app_password(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> UiResult {
    let ui = Ui::user(&state, caller, SETTINGS).await?;
    ui.form(&body)?;
    let id = parse_id(&id, "app password")?;
    let user = me(&ui).await?;
    let revoked = ui.core().app_passwords.revoke_id(&user, id, &ui.client()).await?;
    done(SETTINGS, &format!("Revoked the app password \"{}\".", revoked.name))
}

const SETTINGS: &str = "/if/user/settings/";

async fn remove_device(State(state): State<AppState>, caller: Caller, Path(id): Path<String>, body: Bytes) -> UiResult {
    let ui = Ui::user(&state, caller, SETTINGS).await?;
    ui.form(&body)?;
    let id = parse_id(&id, "device")?;
    let user = me(&ui).await?;
    let device = ui.core().mfa.remove(&user, id, &ui.client()).await?;
    done(SETTINGS, &format!("Removed the device \"{}\".", device.name))
}

async fn revoke_session(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> UiResult {
    let ui = Ui::user(&state, caller, SETTINGS).await?;
    ui.form(&body)?;
    let user = me(&ui).await?;
    console::revoke_session(ui.core(), &user, &id, &ui.client()).await?;
    if id == ui.me.session.id {
        return Ok(crate::ui::login_redirect(&ui.settings, "/if/user/"));
    }
    done(SETTINGS, "The session was ended.")
}

async fn revoke_all(State(state): State<AppState>, caller: Caller, body: Bytes) -> UiResult {
    let ui = Ui::user(&state, caller, SETTINGS).await?;
    ui.form(&body)?;
    let user = me(&ui).await?;
    console::revoke_all_sessions(ui.core(), &user, &ui.client()).await?;
    Ok(axum::response::Redirect::to(&format!("/if/flow/{}/", ui.settings.default_authentication_flow)).into_response())
}

async fn revoke_consent(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> UiResult {
    let ui = Ui::user(&state, caller, SETTINGS).await?;
    ui.form(&body)?;
    let id = parse_id(&id, "consent")?;
    let user = me(&ui).await?;
    console::revoke_consent(ui.core(), &user, id, &ui.client()).await?;
    done(SETTINGS, "The consent was withdrawn; the application will ask again.")
}

use axum::response::IntoResponse;
