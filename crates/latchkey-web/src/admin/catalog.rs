//! Admin → Applications: applications, providers and outposts. Saves go through the core's
//! console functions, which validate with the blueprint rules.

use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, State};
use axum::http::StatusCode;
use latchkey_core::console::{self, ApplicationInput, ProviderInput};
use latchkey_core::model::{Application, Provider};
use latchkey_core::version::version_of;
use latchkey_core::CoreError;
use minijinja::context;
use serde_json::Value;
use std::collections::HashMap;

use super::here;
use crate::request::Caller;
use crate::state::AppState;
use crate::ui::{done, parse_id, Form, Ui, UiError, UiResult};

fn store<T>(r: Result<T, latchkey_core::StoreError>) -> Result<T, UiError> {
    r.map_err(|e| CoreError::from_store(e).into())
}

async fn choices(ui: &Ui) -> Result<minijinja::Value, UiError> {
    let s = &ui.core().store;
    let mut providers: Vec<String> = store(s.list_providers().await)?.into_iter().map(|p| p.name).collect();
    providers.sort_by_key(|n| n.to_lowercase());
    let mut groups: Vec<String> = store(s.all_groups().await)?.into_iter().map(|g| g.name).collect();
    groups.sort_by_key(|n| n.to_lowercase());
    let mut flows: Vec<String> = store(s.list_flows().await)?.into_iter().map(|f| f.slug).collect();
    flows.sort();
    Ok(context! { provider_names => providers, group_names => groups, flow_slugs => flows })
}

// ---------------------------------------------------------------- applications

pub async fn applications(State(state): State<AppState>, caller: Caller, OriginalUri(uri): OriginalUri) -> UiResult {
    let ui = Ui::admin(&state, caller, &here(&uri)).await?;
    let s = &ui.core().store;
    let providers: HashMap<_, _> = store(s.list_providers().await)?.into_iter().map(|p| (p.id, p.name)).collect();
    let mut apps = store(s.list_applications().await)?;
    apps.sort_by_key(|a| a.name.to_lowercase());
    let rows: Vec<_> = apps
        .iter()
        .map(|a| {
            context! {
                name => a.name, slug => a.slug, launch_url => a.launch_url, group => a.group,
                provider => a.provider_id.and_then(|id| providers.get(&id).cloned()),
            }
        })
        .collect();
    ui.page("admin/applications.html", "applications", context! { apps => rows, ..choices(&ui).await? })
}

fn app_input(form: &Form) -> ApplicationInput {
    ApplicationInput {
        name: form.get("name").to_string(),
        slug: form.get("slug").to_string(),
        provider: form.opt("provider"),
        launch_url: form.opt("launch_url"),
        icon: form.opt("icon"),
        description: form.get("description").to_string(),
        group: form.opt("group"),
        policy_engine_mode: form.get("policy_engine_mode").to_string(),
        open_in_new_tab: form.checked("open_in_new_tab"),
        allowed_groups: form.all("allowed_groups"),
    }
}

pub async fn new_application(State(state): State<AppState>, caller: Caller) -> UiResult {
    let ui = Ui::admin(&state, caller, "/if/admin/applications/new/").await?;
    ui.page("admin/application.html", "applications", context! { new => true, ..choices(&ui).await? })
}

pub async fn create_application(State(state): State<AppState>, caller: Caller, body: Bytes) -> UiResult {
    let ui = Ui::admin(&state, caller, "/if/admin/applications/new/").await?;
    let form = ui.form(&body)?;
    match console::create_application(ui.core(), &app_input(&form), &ui.client()).await {
        Ok(app) => {
            done(&format!("/if/admin/applications/{}/", app.slug), &format!("Created the application {}.", app.name))
        }
        Err(e) => {
            let ctx = context! { new => true, chosen => form.all("allowed_groups"), ..choices(&ui).await? };
            ui.refused("admin/application.html", "applications", ctx, &form, e)
        }
    }
}

async fn app_ctx(ui: &Ui, app: &Application) -> Result<minijinja::Value, UiError> {
    let core = ui.core();
    let provider = match app.provider_id {
        Some(id) => store(core.store.get_provider(id).await)?.map(|p| p.name),
        None => None,
    };
    let allowed = console::application_groups(core, app).await?;
    let mut bindings = Vec::new();
    for b in store(core.store.policy_bindings(latchkey_core::model::BindingTarget::Application(app.id)).await)? {
        let subject = match b.subject {
            latchkey_core::model::BindingSubject::Policy(id) => {
                format!("policy {}", store(core.store.get_policy(id).await)?.map(|p| p.name).unwrap_or_default())
            }
            latchkey_core::model::BindingSubject::Group(id) => {
                format!("group {}", store(core.store.get_group(id).await)?.map(|g| g.name).unwrap_or_default())
            }
            latchkey_core::model::BindingSubject::User(id) => {
                format!("user {}", store(core.store.get_user(id).await)?.map(|u| u.username).unwrap_or_default())
            }
        };
        bindings.push(context! { subject, order => b.order, negate => b.negate, enabled => b.enabled });
    }
    Ok(context! {
        app => context! {
            name => app.name, slug => app.slug, provider, launch_url => app.launch_url, icon => app.icon,
            description => app.description, group => app.group, policy_engine_mode => app.policy_engine_mode,
            open_in_new_tab => app.open_in_new_tab,
        },
        chosen => allowed, bindings, version => version_of(app),
        ..choices(ui).await?
    })
}

pub async fn application(
    State(state): State<AppState>,
    caller: Caller,
    OriginalUri(uri): OriginalUri,
    Path(slug): Path<String>,
) -> UiResult {
    let ui = Ui::admin(&state, caller, &here(&uri)).await?;
    let app = console::get_application(ui.core(), &slug).await?;
    ui.page("admin/application.html", "applications", app_ctx(&ui, &app).await?)
}

pub async fn save_application(
    State(state): State<AppState>,
    caller: Caller,
    Path(slug): Path<String>,
    body: Bytes,
) -> UiResult {
    let ui = Ui::admin(&state, caller, "/if/admin/applications/").await?;
    let form = ui.form(&body)?;
    let app = console::get_application(ui.core(), &slug).await?;
    match console::update_application(ui.core(), &slug, &app_input(&form), form.opt("version").as_deref(), &ui.client())
        .await
    {
        Ok(app) => done(&format!("/if/admin/applications/{}/", app.slug), "Saved."),
        Err(e) => {
            let ctx = context! { chosen => form.all("allowed_groups"), ..app_ctx(&ui, &app).await? };
            ui.refused("admin/application.html", "applications", ctx, &form, e)
        }
    }
}

pub async fn delete_application(
    State(state): State<AppState>,
    caller: Caller,
    Path(slug): Path<String>,
    body: Bytes,
) -> UiResult {
    let ui = Ui::admin(&state, caller, "/if/admin/applications/").await?;
    ui.form(&body)?;
    console::delete_application(ui.core(), &slug, &ui.client()).await?;
    done("/if/admin/applications/", &format!("Deleted the application {slug}."))
}

// ---------------------------------------------------------------- providers

fn provider_row(p: &Provider, apps: &HashMap<uuid::Uuid, String>) -> minijinja::Value {
    let cfg = |k: &str| p.config.get(k).and_then(Value::as_str).map(String::from);
    context! {
        id => p.id.to_string(), name => p.name, kind => p.kind,
        application => apps.get(&p.id),
        summary => match p.kind.as_str() {
            "proxy" => cfg("external_host"),
            "oauth2" => cfg("client_id").map(|c| format!("client id {c}")),
            "ldap" => cfg("base_dn"),
            _ => None,
        },
    }
}

pub async fn providers(State(state): State<AppState>, caller: Caller, OriginalUri(uri): OriginalUri) -> UiResult {
    let ui = Ui::admin(&state, caller, &here(&uri)).await?;
    let s = &ui.core().store;
    let apps: HashMap<_, _> =
        store(s.list_applications().await)?.into_iter().filter_map(|a| Some((a.provider_id?, a.name))).collect();
    let mut list = store(s.list_providers().await)?;
    list.sort_by_key(|p| p.name.to_lowercase());
    let rows: Vec<_> = list.iter().map(|p| provider_row(p, &apps)).collect();
    ui.page("admin/providers.html", "providers", context! { providers => rows })
}

fn provider_input(form: &Form, kind: &str) -> ProviderInput {
    ProviderInput {
        name: form.get("name").to_string(),
        kind: kind.to_string(),
        authorization_flow: form.get("authorization_flow").to_string(),
        mode: form.get("mode").to_string(),
        external_host: form.get("external_host").to_string(),
        internal_host: form.get("internal_host").to_string(),
        cookie_domain: form.get("cookie_domain").to_string(),
        skip_path_regex: form.get("skip_path_regex").to_string(),
        client_type: form.get("client_type").to_string(),
        client_id: form.get("client_id").to_string(),
        client_secret: form.get("client_secret").to_string(),
        redirect_uris: form
            .get("redirect_uris")
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
        base_dn: form.get("base_dn").to_string(),
        bind_flow: form.get("bind_flow").to_string(),
        search_group: form.get("search_group").to_string(),
        mfa_support: form.checked("mfa_support"),
    }
}

fn provider_kind(kind: &str) -> Result<&'static str, UiError> {
    match kind {
        "proxy" => Ok("proxy"),
        "oauth2" => Ok("oauth2"),
        "ldap" => Ok("ldap"),
        _ => Err(crate::error::WebError::not_found(format!("There is no provider type '{kind}'.")).into()),
    }
}

pub async fn new_provider(State(state): State<AppState>, caller: Caller, Path(kind): Path<String>) -> UiResult {
    let ui = Ui::admin(&state, caller, "/if/admin/providers/").await?;
    let kind = provider_kind(&kind)?;
    ui.page("admin/provider.html", "providers", context! { new => true, kind, ..choices(&ui).await? })
}

pub async fn create_provider(
    State(state): State<AppState>,
    caller: Caller,
    Path(kind): Path<String>,
    body: Bytes,
) -> UiResult {
    let ui = Ui::admin(&state, caller, "/if/admin/providers/").await?;
    let kind = provider_kind(&kind)?;
    let form = ui.form(&body)?;
    match console::create_provider(ui.core(), &provider_input(&form, kind), &ui.client()).await {
        // The generated secret is shown once, on this answer, rather than carried in a redirect.
        Ok(p) => {
            let ctx = context! { created => true, ..provider_ctx(&ui, &p).await? };
            ui.page_with(StatusCode::CREATED, "admin/provider.html", "providers", ctx)
        }
        Err(e) => {
            let ctx = context! { new => true, kind, ..choices(&ui).await? };
            ui.refused("admin/provider.html", "providers", ctx, &form, e)
        }
    }
}

async fn provider_ctx(ui: &Ui, p: &Provider) -> Result<minijinja::Value, UiError> {
    let core = ui.core();
    let flow = match p.authorization_flow_id {
        Some(id) => store(core.store.list_flows().await)?.into_iter().find(|f| f.id == id).map(|f| f.slug),
        None => None,
    };
    let bind_flow =
        match p.config.get("bind_flow_id").and_then(Value::as_str).and_then(|s| s.parse::<uuid::Uuid>().ok()) {
            Some(id) => store(core.store.list_flows().await)?.into_iter().find(|f| f.id == id).map(|f| f.slug),
            None => None,
        };
    let mut config = p.config.clone();
    if let Some(obj) = config.as_object_mut() {
        obj.insert("authorization_flow".into(), serde_json::json!(flow));
        obj.insert("bind_flow".into(), serde_json::json!(bind_flow));
        let uris = obj
            .get("redirect_uris")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n"));
        obj.insert("redirect_uris_text".into(), serde_json::json!(uris.unwrap_or_default()));
    }
    let issuer = match core.store.list_applications().await {
        Ok(apps) => apps
            .into_iter()
            .find(|a| a.provider_id == Some(p.id))
            .map(|a| format!("{}/application/o/{}/", ui.caller.origin, a.slug)),
        Err(_) => None,
    };
    Ok(context! {
        provider => context! { id => p.id.to_string(), name => p.name, kind => p.kind, config => config },
        kind => p.kind, issuer, version => version_of(p),
        ..choices(ui).await?
    })
}

pub async fn provider(
    State(state): State<AppState>,
    caller: Caller,
    OriginalUri(uri): OriginalUri,
    Path(id): Path<String>,
) -> UiResult {
    let ui = Ui::admin(&state, caller, &here(&uri)).await?;
    let p = console::get_provider(ui.core(), parse_id(&id, "provider")?).await?;
    ui.page("admin/provider.html", "providers", provider_ctx(&ui, &p).await?)
}

pub async fn save_provider(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> UiResult {
    let ui = Ui::admin(&state, caller, "/if/admin/providers/").await?;
    let form = ui.form(&body)?;
    let current = console::get_provider(ui.core(), parse_id(&id, "provider")?).await?;
    let input = provider_input(&form, &current.kind);
    match console::update_provider(ui.core(), current.id, &input, form.opt("version").as_deref(), &ui.client()).await {
        Ok(p) => done(&format!("/if/admin/providers/{}/", p.id), "Saved."),
        Err(e) => {
            let ctx = provider_ctx(&ui, &current).await?;
            ui.refused("admin/provider.html", "providers", ctx, &form, e)
        }
    }
}

pub async fn delete_provider(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> UiResult {
    let ui = Ui::admin(&state, caller, "/if/admin/providers/").await?;
    ui.form(&body)?;
    let id = parse_id(&id, "provider")?;
    console::delete_provider(ui.core(), id, &ui.client()).await?;
    done("/if/admin/providers/", "Deleted the provider.")
}

// ---------------------------------------------------------------- outposts

async fn outposts_ctx(ui: &Ui) -> Result<minijinja::Value, UiError> {
    let s = &ui.core().store;
    let providers = store(s.list_providers().await)?;
    let names: HashMap<_, _> = providers.iter().map(|p| (p.id, p.name.clone())).collect();
    let servable: Vec<_> =
        providers.iter().filter(|p| p.kind != "oauth2").map(|p| context! { name => p.name, kind => p.kind }).collect();
    let rows: Vec<_> = store(s.list_outposts().await)?
        .iter()
        .map(|o| {
            let served: Vec<String> = o.provider_ids.iter().filter_map(|id| names.get(id).cloned()).collect();
            context! { name => o.name, kind => o.kind, served, version => version_of(o) }
        })
        .collect();
    Ok(context! { outposts => rows, servable })
}

pub async fn outposts(State(state): State<AppState>, caller: Caller, OriginalUri(uri): OriginalUri) -> UiResult {
    let ui = Ui::admin(&state, caller, &here(&uri)).await?;
    ui.page("admin/outposts.html", "outposts", outposts_ctx(&ui).await?)
}

pub async fn save_outpost(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> UiResult {
    let ui = Ui::admin(&state, caller, "/if/admin/outposts/").await?;
    let form = ui.form(&body)?;
    let providers = form.all("providers");
    match console::set_outpost_providers(ui.core(), &name, &providers, form.opt("version").as_deref(), &ui.client())
        .await
    {
        Ok(_) => {
            done("/if/admin/outposts/", &format!("The outpost {name} now serves {} provider(s).", providers.len()))
        }
        Err(e) => ui.refused("admin/outposts.html", "outposts", outposts_ctx(&ui).await?, &form, e),
    }
}
