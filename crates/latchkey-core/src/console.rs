//! What the admin interface and the user portal need beyond the directory: interface
//! settings (avatars, branding, default flows), writes of applications, providers and
//! outposts through the blueprint validator (one set of rules for files, forms and API),
//! deletions with their audit events, and the overview's counts.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::error::{CoreError, FieldErrors, Result};
use crate::events::ClientInfo;
use crate::keys::random_secret;
use crate::model::{Application, Outpost, Provider, User};
use crate::policy::RequestFacts;
use crate::version::check_version;
use crate::Core;
use std::collections::BTreeMap;

/// The launch URL that hides an application from the portal (authentik's convention).
pub const HIDDEN_LAUNCH_URL: &str = "blank://blank";

fn store_err(e: crate::StoreError) -> CoreError {
    CoreError::from_store(e)
}

/// What to show for a person's picture.
#[derive(Debug, Clone, Serialize)]
pub struct Avatar {
    /// `none`, `initials` or `gravatar`.
    pub kind: &'static str,
    pub initials: String,
    pub url: Option<String>,
}

/// The avatar of someone under `mode`. Gravatar is asked only when chosen and an email is known.
pub fn avatar(mode: &str, name: &str, email: Option<&str>) -> Avatar {
    let initials: String = name.split_whitespace().filter_map(|w| w.chars().next()).take(2).collect::<String>();
    let initials = if initials.is_empty() { "?".into() } else { initials.to_uppercase() };
    match (mode, email.filter(|e| !e.trim().is_empty())) {
        ("none", _) => Avatar { kind: "none", initials, url: None },
        ("gravatar", Some(email)) => {
            // Gravatar accepts SHA-256 of the trimmed, lower-cased address.
            let hash = hex::encode(Sha256::digest(email.trim().to_lowercase().as_bytes()));
            Avatar {
                kind: "gravatar",
                initials,
                url: Some(format!("https://www.gravatar.com/avatar/{hash}?s=80&d=mp")),
            }
        }
        _ => Avatar { kind: "initials", initials, url: None },
    }
}

// ---------------------------------------------------------------- catalog writes

/// Applies one blueprint entry; field errors come back keyed by the entry's field name.
async fn apply_entry(core: &Core, section: &str, entry: Value, client: &ClientInfo) -> Result<()> {
    let doc = json!({ section: [entry] });
    let yaml = serde_yaml::to_string(&doc).map_err(|e| CoreError::Internal(e.to_string()))?;
    match crate::blueprint::apply(core, "form", &yaml, client).await {
        Ok(_) => Ok(()),
        Err(CoreError::Invalid { message, fields }) => {
            let mut simple = FieldErrors::new();
            for (path, messages) in fields {
                let field = field_of(&path);
                let cleaned: Vec<String> = messages.iter().map(|m| clean_message(m, &path)).collect();
                simple.entry(field).or_default().extend(cleaned);
            }
            Err(CoreError::Invalid { message: clean_message(&message, ""), fields: simple })
        }
        Err(e) => Err(e),
    }
}

/// `applications[0] (Grafana).launch_url` → `launch_url`; `providers[0] (x).redirect_uris[1]` → `redirect_uris`.
fn field_of(path: &str) -> String {
    let after_entry = match path.find(").") {
        Some(i) => &path[i + 2..],
        None => match path.find("].") {
            Some(i) => &path[i + 2..],
            None => "",
        },
    };
    let field: String = after_entry.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    if field.is_empty() {
        "non_field_errors".into()
    } else {
        field
    }
}

/// Drops the `blueprint form: <path>: ` prefix: on a form, the field says where.
fn clean_message(message: &str, path: &str) -> String {
    let m = message.strip_prefix("blueprint form: ").unwrap_or(message);
    let m = if !path.is_empty() { m.strip_prefix(path).and_then(|r| r.strip_prefix(": ")).unwrap_or(m) } else { m };
    let mut chars = m.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect::<String>(),
        None => String::new(),
    }
}

fn one_field(field: &str, message: String) -> CoreError {
    CoreError::invalid_field(field, message)
}

/// An application as a form gives it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ApplicationInput {
    pub name: String,
    pub slug: String,
    pub provider: Option<String>,
    pub launch_url: Option<String>,
    pub icon: Option<String>,
    pub description: String,
    pub group: Option<String>,
    pub policy_engine_mode: String,
    pub open_in_new_tab: bool,
    /// Groups allowed to use it (group bindings); empty: everyone logged in.
    pub allowed_groups: Vec<String>,
}

fn application_entry(input: &ApplicationInput) -> Value {
    let blank = |v: &Option<String>| v.as_ref().map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    json!({
        "name": input.name.trim(),
        "slug": input.slug.trim(),
        "provider": blank(&input.provider),
        "launch_url": blank(&input.launch_url),
        "icon": blank(&input.icon),
        "description": input.description.trim(),
        "group": blank(&input.group),
        "policy_engine_mode": if input.policy_engine_mode == "all" { "all" } else { "any" },
        "open_in_new_tab": input.open_in_new_tab,
        "allowed_groups": input.allowed_groups,
    })
}

pub async fn get_application(core: &Core, slug: &str) -> Result<Application> {
    core.store
        .get_application_by_slug(slug)
        .await
        .map_err(store_err)?
        .ok_or_else(|| CoreError::NotFound(format!("application '{slug}'")))
}

pub async fn create_application(core: &Core, input: &ApplicationInput, client: &ClientInfo) -> Result<Application> {
    if input.name.trim().is_empty() {
        return Err(one_field("name", "A name is required.".into()));
    }
    if core.store.get_application_by_slug(input.slug.trim()).await.map_err(store_err)?.is_some() {
        return Err(CoreError::Conflict(format!(
            "An application with the slug '{}' already exists.",
            input.slug.trim()
        )));
    }
    apply_entry(core, "applications", application_entry(input), client).await?;
    let app = get_application(core, input.slug.trim()).await?;
    core.events.record_raw("application_created", None, None, client, json!({ "application": app.slug })).await;
    Ok(app)
}

/// Saves an existing application (its slug stays); refused when it changed since `expected_version`.
pub async fn update_application(
    core: &Core,
    slug: &str,
    input: &ApplicationInput,
    expected_version: Option<&str>,
    client: &ClientInfo,
) -> Result<Application> {
    let current = get_application(core, slug).await?;
    check_version(&current, expected_version)?;
    if input.name.trim().is_empty() {
        return Err(one_field("name", "A name is required.".into()));
    }
    let mut input = input.clone();
    input.slug = slug.to_string();
    apply_entry(core, "applications", application_entry(&input), client).await?;
    core.events.record_raw("application_changed", None, None, client, json!({ "application": slug })).await;
    get_application(core, slug).await
}

pub async fn delete_application(core: &Core, slug: &str, client: &ClientInfo) -> Result<()> {
    let app = get_application(core, slug).await?;
    core.store.delete_application(app.id).await.map_err(store_err)?;
    core.config_changed();
    core.events.record_raw("application_deleted", None, None, client, json!({ "application": app.slug })).await;
    Ok(())
}

/// Names of the groups bound to an application (its `allowed_groups`).
pub async fn application_groups(core: &Core, app: &Application) -> Result<Vec<String>> {
    use crate::model::{BindingSubject, BindingTarget};
    let mut names = Vec::new();
    for b in core.store.policy_bindings(BindingTarget::Application(app.id)).await.map_err(store_err)? {
        if let BindingSubject::Group(id) = b.subject {
            if let Some(g) = core.store.get_group(id).await.map_err(store_err)? {
                names.push(g.name);
            }
        }
    }
    Ok(names)
}

/// A provider as a form gives it; fields not of its kind are ignored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProviderInput {
    pub name: String,
    /// `proxy`, `oauth2` or `ldap`.
    pub kind: String,
    pub authorization_flow: String,
    pub mode: String,
    pub external_host: String,
    pub internal_host: String,
    pub cookie_domain: String,
    pub skip_path_regex: String,
    pub client_type: String,
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uris: Vec<String>,
    pub base_dn: String,
    pub bind_flow: String,
    pub search_group: String,
    pub mfa_support: bool,
}

/// The provider fields the admin form edits: one it leaves blank is cleared, every other one
/// is kept when the form is saved.
const PROVIDER_FORM_FIELDS: &[&str] = &[
    "name",
    "type",
    "authorization_flow",
    "mode",
    "external_host",
    "internal_host",
    "cookie_domain",
    "skip_path_regex",
    "client_type",
    "client_id",
    "client_secret",
    "redirect_uris",
    "base_dn",
    "bind_flow",
    "search_group",
    "mfa_support",
];

fn provider_entry(input: &ProviderInput) -> Result<Value> {
    let mut e = Map::new();
    let mut put = |k: &str, v: &str| {
        if !v.trim().is_empty() {
            e.insert(k.into(), json!(v.trim()));
        }
    };
    put("name", &input.name);
    put("authorization_flow", &input.authorization_flow);
    match input.kind.as_str() {
        "proxy" => {
            put("mode", &input.mode);
            put("external_host", &input.external_host);
            put("internal_host", &input.internal_host);
            put("cookie_domain", &input.cookie_domain);
            put("skip_path_regex", &input.skip_path_regex);
        }
        "oauth2" => {
            put("client_type", &input.client_type);
            put("client_id", &input.client_id);
            put("client_secret", &input.client_secret);
            let uris: Vec<&str> = input.redirect_uris.iter().map(|u| u.trim()).filter(|u| !u.is_empty()).collect();
            e.insert("redirect_uris".into(), json!(uris));
        }
        "ldap" => {
            put("base_dn", &input.base_dn);
            put("bind_flow", &input.bind_flow);
            put("search_group", &input.search_group);
            e.insert("mfa_support".into(), json!(input.mfa_support));
        }
        other => return Err(one_field("kind", format!("'{other}' is not a provider type (proxy, oauth2, ldap)."))),
    }
    e.insert("type".into(), json!(input.kind));
    Ok(Value::Object(e))
}

pub async fn get_provider(core: &Core, id: uuid::Uuid) -> Result<Provider> {
    core.store.get_provider(id).await.map_err(store_err)?.ok_or_else(|| CoreError::NotFound(format!("provider {id}")))
}

/// Creates a provider; an OAuth2 provider without a client id (or, when confidential, a
/// secret) gets generated ones. Returns the provider as stored.
pub async fn create_provider(core: &Core, input: &ProviderInput, client: &ClientInfo) -> Result<Provider> {
    let name = input.name.trim();
    if name.is_empty() {
        return Err(one_field("name", "A name is required.".into()));
    }
    if core.store.get_provider_by_name(name).await.map_err(store_err)?.is_some() {
        return Err(CoreError::Conflict(format!("A provider named '{name}' already exists.")));
    }
    let mut input = input.clone();
    if input.kind == "oauth2" {
        if input.client_id.trim().is_empty() {
            input.client_id = random_secret(20);
        }
        if input.client_type != "public" && input.client_secret.trim().is_empty() {
            input.client_secret = random_secret(48);
        }
    }
    apply_entry(core, "providers", provider_entry(&input)?, client).await?;
    let provider = core
        .store
        .get_provider_by_name(name)
        .await
        .map_err(store_err)?
        .ok_or_else(|| CoreError::Internal("the provider vanished after saving".into()))?;
    core.events.record_raw("provider_created", None, None, client, json!({ "provider": provider.name })).await;
    Ok(provider)
}

/// Saves an existing provider (name and type stay). A blank client secret keeps the current one.
pub async fn update_provider(
    core: &Core,
    id: uuid::Uuid,
    input: &ProviderInput,
    expected_version: Option<&str>,
    client: &ClientInfo,
) -> Result<Provider> {
    let current = get_provider(core, id).await?;
    check_version(&current, expected_version)?;
    let mut input = input.clone();
    input.name = current.name.clone();
    input.kind = current.kind.clone();
    let kept = |k: &str| current.config.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    if input.kind == "oauth2" {
        if input.client_secret.trim().is_empty() {
            input.client_secret = kept("client_secret");
        }
        if input.client_id.trim().is_empty() {
            input.client_id = kept("client_id");
        }
    }
    let mut entry = provider_entry(&input)?;
    // Settings the form does not show (claims, signing, access rules, keys… set through the
    // API or a blueprint) stay as they are: the provider as the API shows it supplies them.
    let shown = crate::objects::get(core, crate::objects::ObjectKind::Provider, id).await?;
    if let (Some(shown), Some(e)) = (shown.as_object(), entry.as_object_mut()) {
        for field in crate::objects::ObjectKind::Provider.entry_fields() {
            if PROVIDER_FORM_FIELDS.contains(field) || e.contains_key(*field) {
                continue;
            }
            if let Some(v) = shown.get(*field).filter(|v| !v.is_null()) {
                e.insert(field.to_string(), v.clone());
            }
        }
    }
    apply_entry(core, "providers", entry, client).await?;
    core.events.record_raw("provider_changed", None, None, client, json!({ "provider": current.name })).await;
    get_provider(core, id).await
}

pub async fn delete_provider(core: &Core, id: uuid::Uuid, client: &ClientInfo) -> Result<()> {
    let provider = get_provider(core, id).await?;
    core.store.delete_provider(id).await.map_err(store_err)?;
    core.config_changed();
    core.events.record_raw("provider_deleted", None, None, client, json!({ "provider": provider.name })).await;
    Ok(())
}

pub async fn get_outpost(core: &Core, name: &str) -> Result<Outpost> {
    core.store
        .get_outpost_by_name(name)
        .await
        .map_err(store_err)?
        .ok_or_else(|| CoreError::NotFound(format!("outpost '{name}'")))
}

/// Sets which providers an outpost serves (by provider name).
pub async fn set_outpost_providers(
    core: &Core,
    name: &str,
    providers: &[String],
    expected_version: Option<&str>,
    client: &ClientInfo,
) -> Result<Outpost> {
    let current = get_outpost(core, name).await?;
    check_version(&current, expected_version)?;
    apply_entry(core, "outposts", json!({ "name": name, "type": current.kind, "providers": providers }), client)
        .await?;
    core.events
        .record_raw("outpost_changed", None, None, client, json!({ "outpost": name, "providers": providers }))
        .await;
    get_outpost(core, name).await
}

/// Counts for the overview page.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub users: u64,
    pub groups: usize,
    pub applications: usize,
    pub providers: usize,
    pub flows: usize,
    pub policies: usize,
    pub store_ok: bool,
    pub engine: &'static str,
}

pub async fn overview(core: &Core) -> Result<Overview> {
    let s = &core.store;
    Ok(Overview {
        users: s.count_users().await.map_err(store_err)?,
        groups: s.all_groups().await.map_err(store_err)?.len(),
        applications: s.list_applications().await.map_err(store_err)?.len(),
        providers: s.list_providers().await.map_err(store_err)?.len(),
        flows: s.list_flows().await.map_err(store_err)?.len(),
        policies: s.list_policies().await.map_err(store_err)?.len(),
        store_ok: s.ping().await.is_ok(),
        engine: s.engine(),
    })
}

// ---------------------------------------------------------------- portal

/// One application tile in the portal.
#[derive(Debug, Clone, Serialize)]
pub struct Tile {
    pub name: String,
    pub slug: String,
    pub launch_url: Option<String>,
    pub icon: Option<String>,
    pub description: String,
    pub open_in_new_tab: bool,
}

/// Application groups (by name, ungrouped last) with the tiles `user` may use, by the same
/// [`Access::application`](crate::access::Access::application) check as forward auth and OIDC.
/// Applications launched at `blank://blank` are hidden.
pub async fn portal_applications(
    core: &Core,
    user: &User,
    facts: &RequestFacts,
) -> Result<Vec<(Option<String>, Vec<Tile>)>> {
    let catalog = core.catalog.snapshot().await?;
    let mut apps = catalog.applications.clone();
    apps.sort_by_key(|a| a.name.to_lowercase());
    let providers = &catalog.providers;
    let mut groups: BTreeMap<(bool, String), (Option<String>, Vec<Tile>)> = BTreeMap::new();
    for app in apps {
        if app.launch_url.as_deref() == Some(HIDDEN_LAUNCH_URL) {
            continue;
        }
        if !core.access.application(&app, user, facts.clone()).await?.passing {
            continue;
        }
        // Without a launch URL, a proxy provider's external host is where the app lives.
        let launch_url = app.launch_url.clone().or_else(|| {
            let p = providers.get(&app.provider_id?)?;
            p.config.get("external_host").and_then(Value::as_str).map(String::from)
        });
        let key = (app.group.is_none(), app.group.clone().unwrap_or_default().to_lowercase());
        groups.entry(key).or_insert_with(|| (app.group.clone(), Vec::new())).1.push(Tile {
            name: app.name,
            slug: app.slug,
            launch_url,
            icon: app.icon,
            description: app.description,
            open_in_new_tab: app.open_in_new_tab,
        });
    }
    Ok(groups.into_values().collect())
}

/// Ends one of `user`'s sessions by its public id; another user's session is "not found".
pub async fn revoke_session(core: &Core, user: &User, session_id: &str, client: &ClientInfo) -> Result<()> {
    let sessions = core.sessions.list(Some(user.id)).await?;
    let session = sessions
        .iter()
        .find(|s| s.id == session_id)
        .ok_or_else(|| CoreError::NotFound(format!("session '{session_id}'")))?;
    core.sessions.revoke(&session.key_hash).await?;
    core.events.record("session_revoked", Some(user), client, json!({ "session": session.id })).await;
    Ok(())
}

/// Ends every session of `user`; returns how many.
pub async fn revoke_all_sessions(core: &Core, user: &User, client: &ClientInfo) -> Result<u64> {
    let n = core.sessions.revoke_user(user.id).await?;
    core.events.record("sessions_revoked", Some(user), client, json!({ "count": n })).await;
    Ok(n)
}

/// Withdraws one of `user`'s consents.
pub async fn revoke_consent(core: &Core, user: &User, consent_id: uuid::Uuid, client: &ClientInfo) -> Result<()> {
    let grants = core.store.list_consents(user.id).await.map_err(store_err)?;
    let grant = grants
        .iter()
        .find(|g| g.id == consent_id)
        .ok_or_else(|| CoreError::NotFound(format!("consent {consent_id}")))?;
    core.store.delete_consent(grant.id).await.map_err(store_err)?;
    core.events.record("consent_revoked", Some(user), client, json!({ "application_id": grant.application_id })).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blueprint_paths_become_field_names() {
        assert_eq!(field_of("applications[0] (Grafana).launch_url"), "launch_url");
        assert_eq!(field_of("providers[0] (x).redirect_uris[1]"), "redirect_uris");
        assert_eq!(field_of("applications[0]"), "non_field_errors");
        assert_eq!(
            clean_message(
                "blueprint form: applications[0] (A).launch_url: 'x' is not an absolute URL",
                "applications[0] (A).launch_url"
            ),
            "'x' is not an absolute URL"
        );
    }

    #[test]
    fn avatars_follow_the_mode() {
        assert_eq!(avatar("initials", "Alice Example", Some("a@example.test")).initials, "AE");
        assert!(avatar("initials", "Alice", Some("a@example.test")).url.is_none());
        let g = avatar("gravatar", "Alice", Some(" A@Example.test "));
        assert_eq!(g.kind, "gravatar");
        assert!(g.url.unwrap().contains(&hex::encode(Sha256::digest(b"a@example.test"))));
        assert_eq!(avatar("gravatar", "Alice", None).kind, "initials");
        assert_eq!(avatar("none", "", None).kind, "none");
    }
}
