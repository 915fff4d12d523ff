//! `/if/admin/`: the admin interface, for superusers. Server-rendered pages; every change goes
//! through a core service, which validates it and records the audit event.

mod catalog;
mod directory;

use axum::body::Bytes;
use axum::extract::{OriginalUri, RawQuery, State};
use axum::routing::{get, post};
use axum::Router;
use latchkey_core::console;
use latchkey_core::model::EventFilter;
use latchkey_core::system_settings::{self, SystemSettings};
use latchkey_core::version::version_of;
use latchkey_core::CoreError;
use minijinja::context;
use std::collections::HashMap;

use crate::request::Caller;
use crate::state::AppState;
use crate::ui::{done, fmt_time, list_query, pager, query_map, Ui, UiError, UiResult};

pub fn routes() -> Router<AppState> {
    use catalog as c;
    use directory as d;
    let r = Router::new();
    let r = crate::both(r, "/if/admin/", get(overview));
    let r = crate::both(r, "/if/admin/users/", get(d::users));
    let r = crate::both(r, "/if/admin/users/new/", get(d::new_user).post(d::create_user));
    let r = crate::both(r, "/if/admin/users/{id}/", get(d::user_detail).post(d::save_user));
    let r = r
        .route("/if/admin/users/{id}/password/", post(d::set_password))
        .route("/if/admin/users/{id}/active/", post(d::set_active))
        .route("/if/admin/users/{id}/delete/", post(d::delete_user))
        .route("/if/admin/users/{id}/groups/{op}/", post(d::user_groups))
        .route("/if/admin/users/{id}/sessions/revoke/", post(d::revoke_sessions))
        .route("/if/admin/users/{id}/devices/{device}/delete/", post(d::remove_device))
        .route("/if/admin/users/{id}/recovery/", post(d::recovery_link));
    let r = crate::both(r, "/if/admin/groups/", get(d::groups).post(d::create_group));
    let r = crate::both(r, "/if/admin/groups/{id}/", get(d::group_detail).post(d::save_group));
    let r = r
        .route("/if/admin/groups/{id}/delete/", post(d::delete_group))
        .route("/if/admin/groups/{id}/members/{op}/", post(d::group_members));
    let r = crate::both(r, "/if/admin/applications/", get(c::applications));
    let r = crate::both(r, "/if/admin/applications/new/", get(c::new_application).post(c::create_application));
    let r = crate::both(r, "/if/admin/applications/{slug}/", get(c::application).post(c::save_application));
    let r = r.route("/if/admin/applications/{slug}/delete/", post(c::delete_application));
    let r = crate::both(r, "/if/admin/providers/", get(c::providers));
    let r = crate::both(r, "/if/admin/providers/new/{kind}/", get(c::new_provider).post(c::create_provider));
    let r = crate::both(r, "/if/admin/providers/{id}/", get(c::provider).post(c::save_provider));
    let r = r.route("/if/admin/providers/{id}/delete/", post(c::delete_provider));
    let r = crate::both(r, "/if/admin/outposts/", get(c::outposts));
    let r = r.route("/if/admin/outposts/{name}/", post(c::save_outpost));
    let r = crate::both(r, "/if/admin/flows/", get(flows));
    let r = crate::both(r, "/if/admin/policies/", get(policies));
    let r = crate::both(r, "/if/admin/events/", get(events));
    let r = crate::both(r, "/if/admin/settings/", get(settings).post(save_settings));
    crate::both(r, "/if/admin/certificates/", get(certificates))
}

fn here(uri: &axum::http::Uri) -> String {
    uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/if/admin/".into())
}

fn store<T>(r: Result<T, latchkey_core::StoreError>) -> Result<T, UiError> {
    r.map_err(|e| CoreError::from_store(e).into())
}

fn event_row(e: &latchkey_core::model::Event) -> minijinja::Value {
    let context = match &e.context {
        serde_json::Value::Object(m) if m.is_empty() => String::new(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    context! {
        at => fmt_time(&e.created_at), action => e.action, username => e.username, ip => e.client_ip,
        context => context.chars().take(300).collect::<String>(),
    }
}

async fn overview(State(state): State<AppState>, caller: Caller, OriginalUri(uri): OriginalUri) -> UiResult {
    let ui = Ui::admin(&state, caller, &here(&uri)).await?;
    let counts = console::overview(ui.core()).await?;
    let ten = latchkey_core::model::ListQuery { page_size: 10, ..Default::default() };
    let recent = store(ui.core().store.list_events(&EventFilter::default(), &ten).await)?;
    let recent: Vec<_> = recent.items.iter().map(event_row).collect();
    ui.page("admin/overview.html", "overview", context! { counts, recent })
}

async fn events(
    State(state): State<AppState>,
    caller: Caller,
    OriginalUri(uri): OriginalUri,
    RawQuery(raw): RawQuery,
) -> UiResult {
    let ui = Ui::admin(&state, caller, &here(&uri)).await?;
    let params = query_map(raw.as_deref());
    let query = list_query(&params, &[], 50);
    let text = |k: &str| params.get(k).map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let filter = EventFilter { action: text("action"), username: text("username"), ..Default::default() };
    let page = store(ui.core().store.list_events(&filter, &query).await)?;
    let rows: Vec<_> = page.items.iter().map(event_row).collect();
    // The pager keeps the filter: it is carried as the search box's siblings.
    let mut extra = String::new();
    for k in ["action", "username"] {
        if let Some(v) = text(k) {
            extra.push_str(&format!("&{k}={}", url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()));
        }
    }
    ui.page(
        "admin/events.html",
        "events",
        context! { events => rows, pager => pager(&query, page.total), extra, action => text("action"), username => text("username") },
    )
}

async fn flows(State(state): State<AppState>, caller: Caller, OriginalUri(uri): OriginalUri) -> UiResult {
    let ui = Ui::admin(&state, caller, &here(&uri)).await?;
    let s = &ui.core().store;
    let mut list = store(s.list_flows().await)?;
    list.sort_by(|a, b| a.slug.cmp(&b.slug));
    let mut rows = Vec::new();
    for f in &list {
        let stages: Vec<_> = store(s.flow_bindings(f.id).await)?
            .into_iter()
            .map(|(b, st)| context! { order => b.order, name => st.name, kind => st.kind })
            .collect();
        rows.push(context! { slug => f.slug, name => f.name, title => f.title, designation => f.designation.as_str(), stages });
    }
    let mut stages: Vec<_> = store(s.list_stages().await)?;
    stages.sort_by(|a, b| a.name.cmp(&b.name));
    let stages: Vec<_> = stages
        .iter()
        .map(|st| context! { name => st.name, kind => st.kind, config => st.config.to_string() })
        .collect();
    ui.page("admin/flows.html", "flows", context! { flows => rows, stages })
}

async fn policies(State(state): State<AppState>, caller: Caller, OriginalUri(uri): OriginalUri) -> UiResult {
    let ui = Ui::admin(&state, caller, &here(&uri)).await?;
    let s = &ui.core().store;
    let mut list = store(s.list_policies().await)?;
    list.sort_by(|a, b| a.name.cmp(&b.name));
    let names: HashMap<_, _> = list.iter().map(|p| (p.id, p.name.clone())).collect();
    let apps: HashMap<_, _> = store(s.list_applications().await)?.into_iter().map(|a| (a.id, a.name)).collect();
    let flows: HashMap<_, _> = store(s.list_flows().await)?.into_iter().map(|f| (f.id, f.slug)).collect();
    let groups: HashMap<_, _> = store(s.all_groups().await)?.into_iter().map(|g| (g.id, g.name)).collect();
    let rows: Vec<_> = list
        .iter()
        .map(|p| context! { name => p.name, kind => p.kind, config => p.config.to_string(), logging => p.execution_logging })
        .collect();
    use latchkey_core::model::{BindingSubject, BindingTarget};
    let bindings: Vec<_> = store(s.list_policy_bindings().await)?
        .iter()
        .map(|b| {
            let target = match b.target {
                BindingTarget::Application(id) => format!("application {}", apps.get(&id).cloned().unwrap_or_default()),
                BindingTarget::Flow(id) => format!("flow {}", flows.get(&id).cloned().unwrap_or_default()),
                other => format!("{} {}", other.kind_str(), other.id()),
            };
            let subject = match b.subject {
                BindingSubject::Policy(id) => format!("policy {}", names.get(&id).cloned().unwrap_or_default()),
                BindingSubject::Group(id) => format!("group {}", groups.get(&id).cloned().unwrap_or_default()),
                other => format!("{} {}", other.kind_str(), other.id()),
            };
            context! { target, subject, order => b.order, negate => b.negate, enabled => b.enabled }
        })
        .collect();
    ui.page("admin/policies.html", "policies", context! { policies => rows, bindings })
}

/// Text settings edited as they are typed.
const SETTINGS_TEXT_FIELDS: &[&str] = &[
    "branding_title",
    "branding_logo",
    "branding_favicon",
    "default_authentication_flow",
    "default_invalidation_flow",
    "default_recovery_flow",
    "default_enrollment_flow",
    "default_user_settings_flow",
];

async fn settings_ctx(ui: &Ui, current: &SystemSettings) -> Result<minijinja::Value, UiError> {
    let mut flows: Vec<String> = store(ui.core().store.list_flows().await)?.into_iter().map(|f| f.slug).collect();
    flows.sort();
    Ok(context! {
        s => current, version => version_of(current), flow_slugs => flows,
        configured_avatars => ui.state.config.avatars,
    })
}

async fn settings(State(state): State<AppState>, caller: Caller, OriginalUri(uri): OriginalUri) -> UiResult {
    let ui = Ui::admin(&state, caller, &here(&uri)).await?;
    let current = ui.settings.clone();
    ui.page("admin/settings.html", "settings", settings_ctx(&ui, &current).await?)
}

async fn save_settings(State(state): State<AppState>, caller: Caller, body: Bytes) -> UiResult {
    let ui = Ui::admin(&state, caller, "/if/admin/settings/").await?;
    let form = ui.form(&body)?;
    // The form's fields are the settings' own names; the core validates and merges them.
    let mut patch = serde_json::Map::new();
    for field in SETTINGS_TEXT_FIELDS {
        patch.insert((*field).into(), form.get(field).trim().into());
    }
    for field in ["default_user_change_name", "default_user_change_email"] {
        patch.insert(field.into(), form.opt(field).is_some().into());
    }
    let avatars = form.get("avatars").trim();
    patch.insert("avatars".into(), if avatars.is_empty() { serde_json::Value::Null } else { avatars.into() });
    let retention = form.get("event_retention_days").trim();
    patch.insert(
        "event_retention_days".into(),
        retention.parse::<u32>().map(Into::into).unwrap_or_else(|_| retention.into()),
    );
    match system_settings::update(ui.core(), patch.into(), form.opt("version").as_deref(), &ui.client()).await {
        Ok(_) => done("/if/admin/settings/", "Settings saved."),
        Err(e) => {
            let current = ui.settings.clone();
            ui.refused("admin/settings.html", "settings", settings_ctx(&ui, &current).await?, &form, e)
        }
    }
}

async fn certificates(State(state): State<AppState>, caller: Caller, OriginalUri(uri): OriginalUri) -> UiResult {
    let ui = Ui::admin(&state, caller, &here(&uri)).await?;
    let signing = ui.core().signing.clone();
    let mut keys = Vec::new();
    for key in [signing.key().await?, signing.rsa_key().await?] {
        keys.push(context! { kid => key.kid, alg => format!("{:?}", key.alg), jwk => key.jwk.to_string() });
    }
    ui.page("admin/certificates.html", "certificates", context! { keys })
}
