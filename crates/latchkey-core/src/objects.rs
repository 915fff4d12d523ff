//! Administration of the configuration objects — applications, providers, outposts, flows,
//! stages, policies and policy bindings — one object at a time, as the REST API and the admin
//! interface edit them.
//!
//! Every create and update goes through the blueprint writer with a one-entry blueprint, so
//! an object made here passes exactly the validation a blueprint file's would (references,
//! provider fields by type, unique client ids…). Objects are shown in the blueprint entry's
//! shape plus `id` and `created_at`, so what a client reads it can send back.

use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use std::cmp::Ordering;
use uuid::Uuid;

use crate::blueprint::{self, Blueprint};
use crate::error::{CoreError, FieldErrors, Result};
use crate::events::ClientInfo;
use crate::keys::random_secret;
use crate::model::*;
use crate::version::check_version;
use crate::Core;

/// The name blueprint errors carry for objects edited through the API.
const SOURCE: &str = "api";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Application,
    Provider,
    Outpost,
    Flow,
    Stage,
    Policy,
    Binding,
}

impl ObjectKind {
    /// The blueprint section (and API collection) name.
    pub fn section(self) -> &'static str {
        match self {
            ObjectKind::Application => "applications",
            ObjectKind::Provider => "providers",
            ObjectKind::Outpost => "outposts",
            ObjectKind::Flow => "flows",
            ObjectKind::Stage => "stages",
            ObjectKind::Policy => "policies",
            ObjectKind::Binding => "bindings",
        }
    }

    /// The singular noun, for messages and audit events.
    pub fn noun(self) -> &'static str {
        match self {
            ObjectKind::Application => "application",
            ObjectKind::Provider => "provider",
            ObjectKind::Outpost => "outpost",
            ObjectKind::Flow => "flow",
            ObjectKind::Stage => "stage",
            ObjectKind::Policy => "policy",
            ObjectKind::Binding => "binding",
        }
    }

    /// The field objects are matched by (unique, fixed once created); bindings have none.
    pub fn key_field(self) -> Option<&'static str> {
        match self {
            ObjectKind::Application | ObjectKind::Flow => Some("slug"),
            ObjectKind::Binding => None,
            _ => Some("name"),
        }
    }

    /// Fields `?search=` looks in.
    pub fn search_fields(self) -> &'static [&'static str] {
        match self {
            ObjectKind::Application => &["name", "slug", "description", "group"],
            ObjectKind::Provider => &["name", "type", "client_id"],
            ObjectKind::Outpost | ObjectKind::Stage | ObjectKind::Policy => &["name", "kind", "type"],
            ObjectKind::Flow => &["slug", "name", "title", "designation"],
            ObjectKind::Binding => &["policy", "user", "group"],
        }
    }

    /// Fields `?ordering=` accepts; the first is the default.
    pub fn ordering_fields(self) -> &'static [&'static str] {
        match self {
            ObjectKind::Application => &["name", "slug", "group", "created_at"],
            ObjectKind::Provider => &["name", "type", "created_at"],
            ObjectKind::Outpost => &["name", "type", "created_at"],
            ObjectKind::Flow => &["slug", "name", "designation", "created_at"],
            ObjectKind::Stage => &["name", "kind", "created_at"],
            ObjectKind::Policy => &["name", "kind", "created_at"],
            ObjectKind::Binding => &["order", "created_at"],
        }
    }

    /// Fields a client may send; the rest of a view (`id`, `created_at`…) is read-only.
    pub(crate) fn entry_fields(self) -> &'static [&'static str] {
        match self {
            ObjectKind::Application => &[
                "name",
                "slug",
                "provider",
                "launch_url",
                "icon",
                "description",
                "group",
                "policy_engine_mode",
                "open_in_new_tab",
                "allowed_groups",
            ],
            ObjectKind::Provider => &[
                "name",
                "type",
                "authorization_flow",
                "mode",
                "external_host",
                "cookie_domain",
                "internal_host",
                "skip_path_regex",
                "access_token_validity",
                "client_type",
                "client_id",
                "client_secret",
                "redirect_uris",
                "signing_alg",
                "sub_mode",
                "scopes",
                "refresh_token_validity",
                "claims",
                "backchannel_logout_uri",
                "jwks",
                "token_endpoint_auth_method",
                "access_rules",
                "jwt_federation_providers",
                "intercept_header_auth",
                "base_dn",
                "bind_flow",
                "search_group",
                "mfa_support",
                "anonymous_search",
            ],
            ObjectKind::Outpost => &["name", "type", "providers"],
            ObjectKind::Flow => &[
                "slug",
                "name",
                "title",
                "designation",
                "authentication",
                "denied_action",
                "policy_engine_mode",
                "stages",
            ],
            ObjectKind::Stage => &["name", "kind", "config"],
            ObjectKind::Policy => &["name", "kind", "config", "execution_logging"],
            ObjectKind::Binding => {
                &["target", "policy", "user", "group", "order", "negate", "enabled", "timeout_ms", "failure_result"]
            }
        }
    }

    /// View fields that an update leaves alone unless the client sends them: re-applying them
    /// as shown would normalise settings the view does not show.
    fn kept_unless_sent(self) -> &'static [&'static str] {
        match self {
            ObjectKind::Application => &["allowed_groups"],
            _ => &[],
        }
    }
}

fn store_err(e: crate::StoreError) -> CoreError {
    CoreError::from_store(e)
}

fn not_found(kind: ObjectKind, id: Uuid) -> CoreError {
    CoreError::NotFound(format!("{} {id}", kind.noun()))
}

fn ts(t: chrono::DateTime<chrono::Utc>) -> Value {
    json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Names and slugs of everything a view refers to by id.
struct Names {
    flows: Vec<Flow>,
    providers: Vec<Provider>,
    groups: Vec<Group>,
    stages: Vec<Stage>,
    policies: Vec<Policy>,
    applications: Vec<Application>,
}

impl Names {
    async fn load(core: &Core) -> Result<Names> {
        let s = &core.store;
        Ok(Names {
            flows: s.list_flows().await.map_err(store_err)?,
            providers: s.list_providers().await.map_err(store_err)?,
            groups: s.all_groups().await.map_err(store_err)?,
            stages: s.list_stages().await.map_err(store_err)?,
            policies: s.list_policies().await.map_err(store_err)?,
            applications: s.list_applications().await.map_err(store_err)?,
        })
    }
    fn flow_slug(&self, id: Uuid) -> Option<&str> {
        self.flows.iter().find(|f| f.id == id).map(|f| f.slug.as_str())
    }
    fn provider_name(&self, id: Uuid) -> Option<&str> {
        self.providers.iter().find(|p| p.id == id).map(|p| p.name.as_str())
    }
    fn group_name(&self, id: Uuid) -> Option<&str> {
        self.groups.iter().find(|g| g.id == id).map(|g| g.name.as_str())
    }
}

fn application_view(a: &Application, names: &Names, bindings: &[PolicyBinding]) -> Value {
    let allowed: Vec<&str> = bindings
        .iter()
        .filter(|b| b.target == BindingTarget::Application(a.id))
        .filter_map(|b| match b.subject {
            BindingSubject::Group(g) => names.group_name(g),
            _ => None,
        })
        .collect();
    json!({
        "id": a.id,
        "name": a.name,
        "slug": a.slug,
        "provider": a.provider_id.and_then(|p| names.provider_name(p)),
        "provider_id": a.provider_id,
        "launch_url": a.launch_url,
        "icon": a.icon,
        "description": a.description,
        "group": a.group,
        "policy_engine_mode": a.policy_engine_mode,
        "open_in_new_tab": a.open_in_new_tab,
        "allowed_groups": allowed,
        "created_at": ts(a.created_at),
    })
}

fn provider_view(p: &Provider, names: &Names) -> Value {
    let mut v = Map::new();
    v.insert("id".into(), json!(p.id));
    v.insert("name".into(), json!(p.name));
    v.insert("type".into(), json!(p.kind));
    v.insert("authorization_flow".into(), json!(p.authorization_flow_id.and_then(|f| names.flow_slug(f))));
    if let Some(config) = p.config.as_object() {
        for (k, val) in config {
            match k.as_str() {
                "bind_flow_id" => {
                    let slug = val.as_str().and_then(|s| s.parse().ok()).and_then(|id| names.flow_slug(id));
                    v.insert("bind_flow".into(), json!(slug));
                }
                "search_group_id" => {}
                _ => {
                    v.insert(k.clone(), val.clone());
                }
            }
        }
    }
    let app = names.applications.iter().find(|a| a.provider_id == Some(p.id)).map(|a| a.slug.as_str());
    v.insert("assigned_application".into(), json!(app));
    v.insert("created_at".into(), ts(p.created_at));
    Value::Object(v)
}

fn outpost_view(o: &Outpost, names: &Names) -> Value {
    let providers: Vec<&str> = o.provider_ids.iter().filter_map(|id| names.provider_name(*id)).collect();
    json!({
        "id": o.id,
        "name": o.name,
        "type": o.kind,
        "providers": providers,
        "provider_ids": o.provider_ids,
        "config": o.config,
        "created_at": ts(o.created_at),
    })
}

async fn flow_view(core: &Core, f: &Flow) -> Result<Value> {
    let bindings = core.store.flow_bindings(f.id).await.map_err(store_err)?;
    let stages: Vec<Value> = bindings
        .iter()
        .map(|(b, s)| match b.settings.as_object().filter(|m| !m.is_empty()) {
            None => json!(s.name),
            Some(settings) => {
                let mut entry = settings.clone();
                entry.insert("stage".into(), json!(s.name));
                Value::Object(entry)
            }
        })
        .collect();
    let setting = |k: &str| f.settings.get(k).cloned().unwrap_or(Value::Null);
    Ok(json!({
        "id": f.id,
        "slug": f.slug,
        "name": f.name,
        "title": f.title,
        "designation": f.designation,
        "authentication": setting("authentication"),
        "denied_action": setting("denied_action"),
        "policy_engine_mode": setting("policy_engine_mode"),
        "stages": stages,
        "created_at": ts(f.created_at),
    }))
}

fn stage_view(s: &Stage) -> Value {
    json!({ "id": s.id, "name": s.name, "kind": s.kind, "config": s.config, "created_at": ts(s.created_at) })
}

fn policy_view(p: &Policy) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "kind": p.kind,
        "config": p.config,
        "execution_logging": p.execution_logging,
        "created_at": ts(p.created_at),
    })
}

async fn binding_view(core: &Core, b: &PolicyBinding, names: &Names) -> Result<Value> {
    let target = match b.target {
        BindingTarget::Flow(id) => json!({ "flow": names.flow_slug(id) }),
        BindingTarget::Application(id) => {
            json!({ "application": names.applications.iter().find(|a| a.id == id).map(|a| &a.slug) })
        }
        BindingTarget::StageBinding(id) => {
            let mut found = json!({ "stage_binding": null });
            for f in &names.flows {
                let bindings = core.store.flow_bindings(f.id).await.map_err(store_err)?;
                if let Some((_, stage)) = bindings.iter().find(|(sb, _)| sb.id == id) {
                    found = json!({ "stage_binding": { "flow": f.slug, "stage": stage.name } });
                    break;
                }
            }
            found
        }
    };
    let mut v = json!({
        "id": b.id,
        "target": target,
        "order": b.order,
        "negate": b.negate,
        "enabled": b.enabled,
        "timeout_ms": b.timeout_ms,
        "failure_result": b.failure_result,
        "created_at": ts(b.created_at),
    });
    let subject = match b.subject {
        BindingSubject::Policy(id) => ("policy", json!(names.policies.iter().find(|p| p.id == id).map(|p| &p.name))),
        BindingSubject::Group(id) => ("group", json!(names.group_name(id))),
        BindingSubject::User(id) => {
            ("user", json!(core.store.get_user(id).await.map_err(store_err)?.map(|u| u.username)))
        }
    };
    v[subject.0] = subject.1;
    Ok(v)
}

/// Every object of a kind, as views.
async fn all_views(core: &Core, kind: ObjectKind) -> Result<Vec<Value>> {
    let names = Names::load(core).await?;
    let s = &core.store;
    Ok(match kind {
        ObjectKind::Application => {
            let bindings = s.list_policy_bindings().await.map_err(store_err)?;
            names.applications.iter().map(|a| application_view(a, &names, &bindings)).collect()
        }
        ObjectKind::Provider => names.providers.iter().map(|p| provider_view(p, &names)).collect(),
        ObjectKind::Outpost => {
            s.list_outposts().await.map_err(store_err)?.iter().map(|o| outpost_view(o, &names)).collect()
        }
        ObjectKind::Flow => {
            let mut out = Vec::new();
            for f in &names.flows {
                out.push(flow_view(core, f).await?);
            }
            out
        }
        ObjectKind::Stage => names.stages.iter().map(stage_view).collect(),
        ObjectKind::Policy => names.policies.iter().map(policy_view).collect(),
        ObjectKind::Binding => {
            let mut out = Vec::new();
            for b in s.list_policy_bindings().await.map_err(store_err)? {
                out.push(binding_view(core, &b, &names).await?);
            }
            out
        }
    })
}

/// One object's view; `NotFound` for an unknown id.
pub async fn get(core: &Core, kind: ObjectKind, id: Uuid) -> Result<Value> {
    let s = &core.store;
    let names = Names::load(core).await?;
    let found = match kind {
        ObjectKind::Application => match names.applications.iter().find(|a| a.id == id) {
            Some(a) => {
                let bindings = s.policy_bindings(BindingTarget::Application(a.id)).await.map_err(store_err)?;
                Some(application_view(a, &names, &bindings))
            }
            None => None,
        },
        ObjectKind::Provider => names.providers.iter().find(|p| p.id == id).map(|p| provider_view(p, &names)),
        ObjectKind::Outpost => {
            s.list_outposts().await.map_err(store_err)?.iter().find(|o| o.id == id).map(|o| outpost_view(o, &names))
        }
        ObjectKind::Flow => match names.flows.iter().find(|f| f.id == id) {
            Some(f) => Some(flow_view(core, f).await?),
            None => None,
        },
        ObjectKind::Stage => names.stages.iter().find(|x| x.id == id).map(stage_view),
        ObjectKind::Policy => names.policies.iter().find(|x| x.id == id).map(policy_view),
        ObjectKind::Binding => match s.list_policy_bindings().await.map_err(store_err)?.iter().find(|b| b.id == id) {
            Some(b) => Some(binding_view(core, b, &names).await?),
            None => None,
        },
    };
    found.ok_or_else(|| not_found(kind, id))
}

/// A page of a kind's objects, searched and ordered in memory (configuration objects number
/// in the tens, not thousands).
pub async fn list(core: &Core, kind: ObjectKind, query: &ListQuery) -> Result<Page<Value>> {
    let items = all_views(core, kind).await?;
    Ok(page_values(items, query, kind.search_fields(), kind.ordering_fields()[0]))
}

fn compare(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Greater,
        (_, Value::Null) => Ordering::Less,
        (Value::Number(x), Value::Number(y)) => {
            x.as_f64().unwrap_or(0.0).partial_cmp(&y.as_f64().unwrap_or(0.0)).unwrap_or(Ordering::Equal)
        }
        (Value::String(x), Value::String(y)) => x.to_lowercase().cmp(&y.to_lowercase()),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        _ => a.to_string().cmp(&b.to_string()),
    }
}

/// Searches, orders and pages views in memory: `search` is a case-insensitive substring of
/// any of `search_fields`; `ordering` a field name, `-field` descending.
pub fn page_values(items: Vec<Value>, query: &ListQuery, search_fields: &[&str], default_order: &str) -> Page<Value> {
    let term = query.search.as_deref().map(str::trim).filter(|t| !t.is_empty()).map(str::to_lowercase);
    let mut items: Vec<Value> = items
        .into_iter()
        .filter(|v| match &term {
            None => true,
            Some(t) => search_fields
                .iter()
                .any(|f| v.get(*f).and_then(Value::as_str).is_some_and(|s| s.to_lowercase().contains(t.as_str()))),
        })
        .collect();
    let ordering = query.ordering.as_deref().map(str::trim).filter(|o| !o.is_empty()).unwrap_or(default_order);
    let (desc, field) = match ordering.strip_prefix('-') {
        Some(f) => (true, f),
        None => (false, ordering),
    };
    items.sort_by(|a, b| {
        let o = compare(a.get(field).unwrap_or(&Value::Null), b.get(field).unwrap_or(&Value::Null));
        let o = if desc { o.reverse() } else { o };
        o.then_with(|| compare(a.get("id").unwrap_or(&Value::Null), b.get("id").unwrap_or(&Value::Null)))
    });
    let total = items.len() as u64;
    let offset = usize::try_from(query.offset()).unwrap_or(usize::MAX);
    let items = items.into_iter().skip(offset).take(query.page_size as usize).collect();
    Page { items, total }
}

/// Blueprint errors name the file and the entry (`blueprint api: providers[0] (X).field: …`);
/// an API client wants the field and the message.
fn relabel(e: CoreError, kind: ObjectKind, key: &str) -> CoreError {
    let CoreError::Invalid { message, fields } = e else { return e };
    let label =
        if key.is_empty() { format!("{}[0]", kind.section()) } else { format!("{}[0] ({key})", kind.section()) };
    let mut out = FieldErrors::new();
    let mut first = None;
    for (path, messages) in fields {
        let field = path
            .strip_prefix(&label)
            .map(|rest| rest.trim_start_matches('.'))
            .filter(|f| !f.is_empty())
            .unwrap_or("non_field_errors")
            .to_string();
        let prefix = format!("blueprint {SOURCE}: {path}: ");
        let cleaned: Vec<String> = messages.iter().map(|m| m.strip_prefix(&prefix).unwrap_or(m).to_string()).collect();
        if first.is_none() {
            first = cleaned.first().map(|m| format!("{field}: {m}"));
        }
        out.insert(field, cleaned);
    }
    CoreError::Invalid { message: first.unwrap_or(message), fields: out }
}

/// A deserialization error as a field error: the path serde reports, or for a missing or
/// unknown field (reported at the object itself) the field it names.
pub fn serde_field_error(path: &str, message: &str) -> CoreError {
    let named = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next())
        .map(|name| {
            // serde_path_to_error puts an unknown field in the path already, a missing one not.
            if path.is_empty() || path == "." {
                name.to_string()
            } else if path == name || path.ends_with(&format!(".{name}")) {
                path.to_string()
            } else {
                format!("{path}.{name}")
            }
        });
    let field = match named {
        Some(f) => f,
        None if path.is_empty() || path == "." => "non_field_errors".to_string(),
        None => path.to_string(),
    };
    CoreError::Invalid {
        message: format!("{field}: {message}"),
        fields: [(field, vec![message.to_string()])].into_iter().collect(),
    }
}

/// Reads a JSON body into a blueprint entry; type errors name the field.
fn entry<T: DeserializeOwned>(body: &Value) -> Result<T> {
    serde_path_to_error::deserialize::<_, T>(body.clone())
        .map_err(|e| serde_field_error(&e.path().to_string(), &e.inner().to_string()))
}

fn one(kind: ObjectKind, body: &Value) -> Result<Blueprint> {
    let mut bp = Blueprint::default();
    match kind {
        ObjectKind::Application => bp.applications.push(entry(body)?),
        ObjectKind::Provider => bp.providers.push(entry(body)?),
        ObjectKind::Outpost => bp.outposts.push(entry(body)?),
        ObjectKind::Flow => bp.flows.push(entry(body)?),
        ObjectKind::Stage => bp.stages.push(entry(body)?),
        ObjectKind::Policy => bp.policies.push(entry(body)?),
        ObjectKind::Binding => bp.bindings.push(entry(body)?),
    }
    Ok(bp)
}

/// The name blueprint errors label an entry with (`applications[0] (<name>)`).
fn label_of(kind: ObjectKind, body: &Value) -> String {
    let field = match kind {
        ObjectKind::Application => "name",
        _ => kind.key_field().unwrap_or(""),
    };
    body.get(field).and_then(Value::as_str).unwrap_or("").to_string()
}

fn key_of(kind: ObjectKind, body: &Value) -> String {
    kind.key_field().and_then(|k| body.get(k)).and_then(Value::as_str).unwrap_or("").to_string()
}

/// The stored object with this key, as a view.
async fn find_by_key(core: &Core, kind: ObjectKind, key: &str) -> Result<Option<Value>> {
    let field = kind.key_field().unwrap_or("id");
    Ok(all_views(core, kind).await?.into_iter().find(|v| v.get(field).and_then(Value::as_str) == Some(key)))
}

/// An OAuth2 provider created without credentials gets generated ones (as authentik does).
fn generate_credentials(body: &mut Value) {
    let Some(map) = body.as_object_mut() else { return };
    if map.get("type").and_then(Value::as_str) != Some("oauth2") {
        return;
    }
    let blank = |v: Option<&Value>| v.is_none_or(|v| v.is_null() || v.as_str().is_some_and(|s| s.trim().is_empty()));
    if blank(map.get("client_id")) {
        map.insert("client_id".into(), json!(random_secret(30)));
    }
    let public = map.get("client_type").and_then(Value::as_str) == Some("public");
    // A client that authenticates with its key gets no secret it would never use.
    let keyed = map.get("jwks").is_some_and(|j| !j.is_null())
        && map.get("token_endpoint_auth_method").and_then(Value::as_str).is_none_or(|m| m == "private_key_jwt");
    if !public && !keyed && blank(map.get("client_secret")) {
        map.insert("client_secret".into(), json!(random_secret(48)));
    }
}

fn drop_nulls_of_required(kind: ObjectKind, body: &mut Value) {
    // Blueprint entries tell "left out" from null only where null means something; elsewhere
    // a null sent by a client (a form's empty field) means "not given".
    if let (ObjectKind::Provider, Some(map)) = (kind, body.as_object_mut()) {
        map.retain(|_, v| !v.is_null());
    }
}

/// Other processes hear of a change through the store's feed; this one applies it now, so a
/// client that just created a provider can use it with its next request.
fn refresh_caches(core: &Core) {
    core.config_changed();
}

async fn audit(core: &Core, action: &str, kind: ObjectKind, view: &Value, client: &ClientInfo) {
    refresh_caches(core);
    let name = kind.key_field().and_then(|k| view.get(k)).cloned().unwrap_or(Value::Null);
    let mut context = json!({ "model": kind.noun(), "id": view.get("id"), "name": name });
    if kind == ObjectKind::Application {
        // So the event log's application filter finds changes to the application itself.
        context["application"] = name;
    }
    core.events.record_raw(action, None, None, client, context).await;
}

fn without_nulls(v: Option<&Value>) -> Value {
    match v {
        Some(Value::Object(m)) => {
            Value::Object(m.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect())
        }
        Some(other) => other.clone(),
        None => Value::Null,
    }
}

/// Whether a stored binding's view has the target and subject a client's body names.
fn same_binding(view: &Value, body: &Value) -> bool {
    let same_subject = ["policy", "user", "group"].iter().all(|k| {
        let wanted = body.get(*k).filter(|v| !v.is_null());
        let have = view.get(*k).filter(|v| !v.is_null());
        match (wanted, have) {
            (Some(Value::String(w)), Some(Value::String(h))) => w.eq_ignore_ascii_case(h),
            (None, None) => true,
            _ => false,
        }
    });
    same_subject && without_nulls(view.get("target")) == without_nulls(body.get("target"))
}

/// Creates an object from a client's JSON; `Conflict` when its name or slug is taken.
pub async fn create(core: &Core, kind: ObjectKind, mut body: Value, client: &ClientInfo) -> Result<Value> {
    if !body.is_object() {
        return Err(CoreError::invalid("The body must be a JSON object."));
    }
    if kind == ObjectKind::Provider {
        generate_credentials(&mut body);
    }
    drop_nulls_of_required(kind, &mut body);
    let bp = one(kind, &body)?;
    let key = key_of(kind, &body);
    if kind == ObjectKind::Binding {
        // The writer matches bindings by target and subject: an equal pair is a duplicate.
        let before = all_views(core, kind).await?;
        if before.iter().any(|v| same_binding(v, &body)) {
            return Err(CoreError::Conflict("A binding of this subject to this target exists already.".into()));
        }
        blueprint::apply_parsed(core, SOURCE, &bp, client, false).await.map_err(|e| relabel(e, kind, ""))?;
        let after = all_views(core, kind).await?;
        let created = after
            .into_iter()
            .find(|v| !before.iter().any(|b| b.get("id") == v.get("id")))
            .ok_or_else(|| CoreError::Conflict("A binding of this subject to this target exists already.".into()))?;
        audit(core, "model_created", kind, &created, client).await;
        return Ok(created);
    }
    if find_by_key(core, kind, &key).await?.is_some() {
        let field = kind.key_field().unwrap_or("name");
        return Err(CoreError::Conflict(format!("A {} with {field} '{key}' exists already.", kind.noun())));
    }
    let label = label_of(kind, &body);
    blueprint::apply_parsed(core, SOURCE, &bp, client, false).await.map_err(|e| relabel(e, kind, &label))?;
    let view = find_by_key(core, kind, &key)
        .await?
        .ok_or_else(|| CoreError::Internal(format!("{} '{key}' vanished after it was written", kind.noun())))?;
    audit(core, "model_created", kind, &view, client).await;
    Ok(view)
}

/// Applies a partial update: fields sent replace the shown ones, others stay. `expected` is
/// the version the client edited (stale → `Conflict`). The name or slug is fixed.
pub async fn update(
    core: &Core,
    kind: ObjectKind,
    id: Uuid,
    patch: Value,
    expected: Option<&str>,
    client: &ClientInfo,
) -> Result<Value> {
    let Value::Object(patch) = patch else {
        return Err(CoreError::invalid("The body must be a JSON object."));
    };
    let current = get(core, kind, id).await?;
    check_version(&current, expected)?;
    let allowed = kind.entry_fields();
    let mut fields = FieldErrors::new();
    for k in patch.keys() {
        if !allowed.contains(&k.as_str()) && !matches!(k.as_str(), "id" | "version" | "created_at") {
            fields.insert(k.clone(), vec![format!("not a field of a {}", kind.noun())]);
        }
    }
    let key_field = kind.key_field();
    let fixed: &[&str] = match kind {
        ObjectKind::Binding => &["target", "policy", "user", "group"],
        _ => key_field.as_slice(),
    };
    for f in fixed {
        if patch.get(*f).is_some_and(|v| Some(v) != current.get(*f)) {
            fields.insert(
                f.to_string(),
                vec![format!("cannot be changed; create a new {} and delete this one", kind.noun())],
            );
        }
    }
    if let Some((field, messages)) = fields.iter().next() {
        return Err(CoreError::Invalid { message: format!("{field}: {}", messages[0]), fields });
    }
    let type_changed = patch.get("type").is_some_and(|t| Some(t) != current.get("type"));
    let mut merged = Map::new();
    for f in allowed {
        if kind.kept_unless_sent().contains(f) {
            continue;
        }
        // A provider's type settings belong to its type; changing the type starts them afresh.
        if type_changed && !matches!(*f, "name" | "type" | "authorization_flow") {
            continue;
        }
        if let Some(v) = current.get(*f) {
            merged.insert(f.to_string(), v.clone());
        }
    }
    for (k, v) in patch {
        if allowed.contains(&k.as_str()) {
            merged.insert(k, v);
        }
    }
    // Binding subjects are one of three keys: keep only the one in use.
    if kind == ObjectKind::Binding {
        merged.retain(|k, v| !(matches!(k.as_str(), "policy" | "user" | "group") && v.is_null()));
    }
    let mut body = Value::Object(merged);
    drop_nulls_of_required(kind, &mut body);
    let label = label_of(kind, &body);
    let bp = one(kind, &body)?;
    blueprint::apply_parsed(core, SOURCE, &bp, client, false).await.map_err(|e| relabel(e, kind, &label))?;
    let view = get(core, kind, id).await?;
    audit(core, "model_updated", kind, &view, client).await;
    Ok(view)
}

/// Deletes an object; `NotFound` for an unknown id.
pub async fn delete(core: &Core, kind: ObjectKind, id: Uuid, client: &ClientInfo) -> Result<()> {
    let view = get(core, kind, id).await?;
    let s = &core.store;
    match kind {
        ObjectKind::Application => s.delete_application(id).await,
        ObjectKind::Provider => s.delete_provider(id).await,
        ObjectKind::Outpost => s.delete_outpost(id).await,
        ObjectKind::Flow => s.delete_flow(id).await,
        ObjectKind::Stage => s.delete_stage(id).await,
        ObjectKind::Policy => s.delete_policy(id).await,
        ObjectKind::Binding => s.delete_policy_binding(id).await,
    }
    .map_err(store_err)?;
    audit(core, "model_deleted", kind, &view, client).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_memory_pages_search_and_order() {
        let items: Vec<Value> = (0..25).map(|i| json!({ "id": i, "name": format!("app-{i:02}") })).collect();
        let q = ListQuery { search: Some("APP-1".into()), ordering: Some("-name".into()), page: 1, page_size: 5 };
        let page = page_values(items.clone(), &q, &["name"], "name");
        assert_eq!(page.total, 10);
        assert_eq!(page.items[0]["name"], "app-19");
        let q = ListQuery { search: None, ordering: None, page: 3, page_size: 10 };
        let page = page_values(items, &q, &["name"], "name");
        assert_eq!(page.total, 25);
        assert_eq!(page.items.len(), 5);
        assert_eq!(page.items[0]["name"], "app-20");
    }

    #[test]
    fn serde_errors_name_the_field() {
        let e: Result<crate::blueprint::StageEntry> = entry(&json!({"name": "x", "kind": "deny", "bogus": 1}));
        let Err(CoreError::Invalid { fields, .. }) = e else { panic!() };
        assert!(fields.contains_key("bogus"), "{fields:?}");
        let e: Result<crate::blueprint::StageEntry> = entry(&json!({"name": "x"}));
        let Err(CoreError::Invalid { fields, .. }) = e else { panic!() };
        assert!(fields.contains_key("kind"), "{fields:?}");
    }

    #[test]
    fn blueprint_errors_are_relabelled_to_fields() {
        let mut fields = FieldErrors::new();
        fields.insert(
            "providers[0] (Grafana).client_secret".into(),
            vec!["blueprint api: providers[0] (Grafana).client_secret: a confidential client needs a client_secret"
                .into()],
        );
        let e = CoreError::Invalid { message: "x".into(), fields };
        let CoreError::Invalid { message, fields } = relabel(e, ObjectKind::Provider, "Grafana") else { panic!() };
        assert_eq!(fields["client_secret"], vec!["a confidential client needs a client_secret".to_string()]);
        assert!(message.starts_with("client_secret: "));
    }
}
