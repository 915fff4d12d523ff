//! Admin → Directory: users and groups.

use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, RawQuery, State};
use axum::http::StatusCode;
use latchkey_core::directory::UserInput;
use latchkey_core::model::{Group, User};
use latchkey_core::version::{check_version, version_of};
use latchkey_core::CoreError;
use minijinja::context;
use std::collections::HashMap;
use uuid::Uuid;

use super::here;
use crate::request::Caller;
use crate::state::AppState;
use crate::ui::{done, fmt_time, list_query, pager, parse_id, query_map, Form, Ui, UiResult};

const USER_ORDERINGS: &[&str] = &["username", "name", "email", "created_at", "last_login"];

fn user_row(ui: &Ui, u: &User) -> minijinja::Value {
    context! {
        id => u.id.to_string(), username => u.username, name => u.name, email => u.email,
        is_active => u.is_active, kind => u.kind.as_str(),
        last_login => u.last_login.as_ref().map(fmt_time), created => fmt_time(&u.created_at),
        avatar => ui.avatar(&u.name, u.email.as_deref()),
    }
}

pub async fn users(
    State(state): State<AppState>,
    caller: Caller,
    OriginalUri(uri): OriginalUri,
    RawQuery(raw): RawQuery,
) -> UiResult {
    let ui = Ui::admin(&state, caller, &here(&uri)).await?;
    let query = list_query(&query_map(raw.as_deref()), USER_ORDERINGS, 50);
    let page = ui.core().directory.list_users(&query).await?;
    let rows: Vec<_> = page.items.iter().map(|u| user_row(&ui, u)).collect();
    let search: String = query
        .search
        .as_deref()
        .map(|s| url::form_urlencoded::byte_serialize(s.as_bytes()).collect())
        .unwrap_or_default();
    ui.page(
        "admin/users.html",
        "users",
        context! { users => rows, pager => pager(&query, page.total), ordering => query.ordering, search },
    )
}

pub async fn new_user(State(state): State<AppState>, caller: Caller) -> UiResult {
    let ui = Ui::admin(&state, caller, "/if/admin/users/new/").await?;
    ui.page("admin/user_new.html", "users", context! { groups => group_names(&ui).await? })
}

async fn group_names(ui: &Ui) -> Result<Vec<String>, crate::ui::UiError> {
    let mut names: Vec<String> =
        ui.core().store.all_groups().await.map_err(CoreError::from_store)?.into_iter().map(|g| g.name).collect();
    names.sort_by_key(|n| n.to_lowercase());
    Ok(names)
}

pub async fn create_user(State(state): State<AppState>, caller: Caller, body: Bytes) -> UiResult {
    let ui = Ui::admin(&state, caller, "/if/admin/users/new/").await?;
    let form = ui.form(&body)?;
    let input = UserInput {
        username: form.get("username").trim().to_string(),
        name: form.opt("name"),
        email: form.opt("email"),
        password: form.opt("password"),
        groups: form.all("groups"),
        kind: None,
        is_active: Some(true),
    };
    match ui.core().directory.create_user(input, &ui.client()).await {
        Ok(user) => done(&format!("/if/admin/users/{}/", user.id), &format!("Created the user {}.", user.username)),
        Err(e) => {
            let ctx = context! { groups => group_names(&ui).await?, chosen => form.all("groups") };
            ui.refused("admin/user_new.html", "users", ctx, &form, e)
        }
    }
}

async fn load_user(ui: &Ui, id: &str) -> Result<User, crate::ui::UiError> {
    let id = parse_id(id, "user")?;
    Ok(ui.core().directory.get_user(id).await?)
}

/// Everything the user page shows.
async fn user_ctx(ui: &Ui, user: &User) -> Result<minijinja::Value, crate::ui::UiError> {
    let core = ui.core();
    let direct: Vec<Uuid> = core.store.direct_group_ids(user.id).await.map_err(CoreError::from_store)?;
    let all = core.store.all_groups().await.map_err(CoreError::from_store)?;
    let mut member: Vec<String> = all.iter().filter(|g| direct.contains(&g.id)).map(|g| g.name.clone()).collect();
    member.sort_by_key(|n| n.to_lowercase());
    let mut others: Vec<String> = all.iter().filter(|g| !direct.contains(&g.id)).map(|g| g.name.clone()).collect();
    others.sort_by_key(|n| n.to_lowercase());
    let effective: Vec<String> = core.directory.effective_groups(user.id).await?.into_iter().map(|g| g.name).collect();
    let sessions: Vec<_> = core
        .sessions
        .list(Some(user.id))
        .await?
        .into_iter()
        .map(|s| context! { id => s.id, ip => s.client_ip, agent => s.user_agent, created => fmt_time(&s.created_at), last_seen => fmt_time(&s.last_seen) })
        .collect();
    let devices: Vec<_> = core
        .mfa
        .list(user.id)
        .await?
        .into_iter()
        .map(|d| context! { id => d.id.to_string(), kind => d.kind.as_str(), name => d.name, confirmed => d.confirmed, created => fmt_time(&d.created_at), last_used => d.last_used_at.as_ref().map(fmt_time) })
        .collect();
    Ok(context! {
        user => user_row(ui, user),
        version => version_of(user),
        has_password => user.password_hash.is_some(),
        password_changed => user.password_changed_at.as_ref().map(fmt_time),
        member, others, effective, sessions, devices,
        is_superuser => core.directory.is_superuser(user.id).await?,
    })
}

pub async fn user_detail(
    State(state): State<AppState>,
    caller: Caller,
    OriginalUri(uri): OriginalUri,
    Path(id): Path<String>,
) -> UiResult {
    let ui = Ui::admin(&state, caller, &here(&uri)).await?;
    let user = load_user(&ui, &id).await?;
    ui.page("admin/user.html", "users", user_ctx(&ui, &user).await?)
}

/// Shows the user page again with the refusal of one of its forms.
async fn user_refused(ui: &Ui, id: Uuid, form: &Form, e: CoreError) -> UiResult {
    let user = ui.core().directory.get_user(id).await?;
    ui.refused("admin/user.html", "users", user_ctx(ui, &user).await?, form, e)
}

fn user_path(id: Uuid) -> String {
    format!("/if/admin/users/{id}/")
}

pub async fn save_user(State(state): State<AppState>, caller: Caller, Path(id): Path<String>, body: Bytes) -> UiResult {
    let ui = Ui::admin(&state, caller, "/if/admin/users/").await?;
    let form = ui.form(&body)?;
    let current = load_user(&ui, &id).await?;
    let mut next = current.clone();
    next.username = form.get("username").trim().to_string();
    next.name = form.opt("name").unwrap_or_else(|| next.username.clone());
    next.email = form.opt("email");
    let result = async {
        check_version(&current, form.opt("version").as_deref())?;
        ui.core().directory.update_user(&next, &ui.client()).await
    }
    .await;
    match result {
        Ok(()) => done(&user_path(current.id), "Saved."),
        Err(e) => user_refused(&ui, current.id, &form, e).await,
    }
}

pub async fn set_password(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> UiResult {
    let ui = Ui::admin(&state, caller, "/if/admin/users/").await?;
    let form = ui.form(&body)?;
    let user = load_user(&ui, &id).await?;
    let password = form.get("password");
    let result = if password != form.get("password_repeat") {
        Err(CoreError::invalid_field("password_repeat", "The passwords do not match."))
    } else {
        ui.core().directory.set_password(&user, password, &ui.client()).await
    };
    match result {
        Ok(()) => done(&user_path(user.id), "The password was set; the user's sessions were ended."),
        Err(e) => user_refused(&ui, user.id, &form, e).await,
    }
}

pub async fn set_active(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> UiResult {
    let ui = Ui::admin(&state, caller, "/if/admin/users/").await?;
    let form = ui.form(&body)?;
    let user = load_user(&ui, &id).await?;
    let active = form.get("active") == "true";
    match ui.core().directory.set_active(&user.username, active, &ui.client()).await {
        Ok(_) => done(&user_path(user.id), if active { "The account is enabled." } else { "The account is disabled." }),
        Err(e) => user_refused(&ui, user.id, &form, e).await,
    }
}

pub async fn delete_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> UiResult {
    let ui = Ui::admin(&state, caller, "/if/admin/users/").await?;
    let form = ui.form(&body)?;
    let user = load_user(&ui, &id).await?;
    match ui.core().directory.delete_user(&user.username, &ui.client()).await {
        Ok(_) => done("/if/admin/users/", &format!("Deleted the user {}.", user.username)),
        Err(e) => user_refused(&ui, user.id, &form, e).await,
    }
}

pub async fn user_groups(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, op)): Path<(String, String)>,
    body: Bytes,
) -> UiResult {
    let ui = Ui::admin(&state, caller, "/if/admin/users/").await?;
    let form = ui.form(&body)?;
    let user = load_user(&ui, &id).await?;
    let group = form.get("group").trim().to_string();
    let dir = &ui.core().directory;
    let result = match op.as_str() {
        "add" => dir.add_member(&group, &user.username, &ui.client()).await.map(|_| format!("Added to {group}.")),
        "remove" => {
            dir.remove_member(&group, &user.username, &ui.client()).await.map(|_| format!("Removed from {group}."))
        }
        _ => return Err(crate::error::WebError::not_found("There is nothing at this address.").into()),
    };
    match result {
        Ok(msg) => done(&user_path(user.id), &msg),
        Err(e) => user_refused(&ui, user.id, &form, e).await,
    }
}

pub async fn revoke_sessions(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> UiResult {
    let ui = Ui::admin(&state, caller, "/if/admin/users/").await?;
    ui.form(&body)?;
    let user = load_user(&ui, &id).await?;
    let n = latchkey_core::console::revoke_all_sessions(ui.core(), &user, &ui.client()).await?;
    done(&user_path(user.id), &format!("Ended {n} session(s)."))
}

pub async fn remove_device(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, device)): Path<(String, String)>,
    body: Bytes,
) -> UiResult {
    let ui = Ui::admin(&state, caller, "/if/admin/users/").await?;
    ui.form(&body)?;
    let user = load_user(&ui, &id).await?;
    let device = parse_id(&device, "device")?;
    let removed = ui.core().mfa.remove(&user, device, &ui.client()).await?;
    done(&user_path(user.id), &format!("Removed the device \"{}\".", removed.name))
}

pub async fn recovery_link(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> UiResult {
    let ui = Ui::admin(&state, caller, "/if/admin/users/").await?;
    ui.form(&body)?;
    let user = load_user(&ui, &id).await?;
    let token = ui.core().tokens.create_recovery_token(&user, chrono::Duration::hours(1), &ui.client()).await?;
    let link = format!("{}/recovery/use-token/{token}/", ui.caller.origin);
    let ctx = context! { recovery_link => link, ..user_ctx(&ui, &user).await? };
    ui.page_with(StatusCode::OK, "admin/user.html", "users", ctx)
}

// ---------------------------------------------------------------- groups

fn group_tree(groups: &[Group], counts: &HashMap<Uuid, usize>) -> Vec<minijinja::Value> {
    fn children(
        parent: Option<Uuid>,
        groups: &[Group],
        counts: &HashMap<Uuid, usize>,
        depth: usize,
    ) -> Vec<minijinja::Value> {
        let mut level: Vec<&Group> = groups.iter().filter(|g| g.parent_id == parent).collect();
        level.sort_by_key(|g| g.name.to_lowercase());
        level
            .into_iter()
            .map(|g| {
                // Depth is bounded: the directory refuses cycles, and this guards a corrupted tree.
                let kids = if depth < 32 { children(Some(g.id), groups, counts, depth + 1) } else { Vec::new() };
                context! {
                    id => g.id.to_string(), name => g.name, is_superuser => g.is_superuser,
                    members => counts.get(&g.id).copied().unwrap_or(0), children => kids,
                }
            })
            .collect()
    }
    children(None, groups, counts, 0)
}

async fn groups_ctx(ui: &Ui) -> Result<minijinja::Value, crate::ui::UiError> {
    let core = ui.core();
    let all = core.store.all_groups().await.map_err(CoreError::from_store)?;
    let mut counts = HashMap::new();
    for g in &all {
        counts.insert(g.id, core.store.direct_member_ids(g.id).await.map_err(CoreError::from_store)?.len());
    }
    let mut names: Vec<String> = all.iter().map(|g| g.name.clone()).collect();
    names.sort_by_key(|n| n.to_lowercase());
    Ok(context! { tree => group_tree(&all, &counts), names })
}

pub async fn groups(State(state): State<AppState>, caller: Caller, OriginalUri(uri): OriginalUri) -> UiResult {
    let ui = Ui::admin(&state, caller, &here(&uri)).await?;
    ui.page("admin/groups.html", "groups", groups_ctx(&ui).await?)
}

pub async fn create_group(State(state): State<AppState>, caller: Caller, body: Bytes) -> UiResult {
    let ui = Ui::admin(&state, caller, "/if/admin/groups/").await?;
    let form = ui.form(&body)?;
    let name = form.get("name").trim().to_string();
    let parent = form.opt("parent");
    match ui.core().directory.create_group(&name, parent.as_deref(), form.checked("is_superuser"), &ui.client()).await {
        Ok(g) => done(&format!("/if/admin/groups/{}/", g.id), &format!("Created the group {}.", g.name)),
        Err(e) => ui.refused("admin/groups.html", "groups", groups_ctx(&ui).await?, &form, e),
    }
}

async fn load_group(ui: &Ui, id: &str) -> Result<Group, crate::ui::UiError> {
    let id = parse_id(id, "group")?;
    ui.core()
        .store
        .get_group(id)
        .await
        .map_err(CoreError::from_store)?
        .ok_or_else(|| CoreError::NotFound(format!("group {id}")).into())
}

async fn group_ctx(ui: &Ui, group: &Group) -> Result<minijinja::Value, crate::ui::UiError> {
    let core = ui.core();
    let all = core.store.all_groups().await.map_err(CoreError::from_store)?;
    let parent = group.parent_id.and_then(|p| all.iter().find(|g| g.id == p)).map(|g| g.name.clone());
    let mut parents: Vec<String> = all.iter().filter(|g| g.id != group.id).map(|g| g.name.clone()).collect();
    parents.sort_by_key(|n| n.to_lowercase());
    let mut children: Vec<String> =
        all.iter().filter(|g| g.parent_id == Some(group.id)).map(|g| g.name.clone()).collect();
    children.sort();
    let mut members = Vec::new();
    for uid in core.store.direct_member_ids(group.id).await.map_err(CoreError::from_store)? {
        if let Some(u) = core.store.get_user(uid).await.map_err(CoreError::from_store)? {
            members.push(
                context! { id => u.id.to_string(), username => u.username, name => u.name, is_active => u.is_active },
            );
        }
    }
    Ok(context! {
        group => context! { id => group.id.to_string(), name => group.name, is_superuser => group.is_superuser, parent, gid => group.gid_number },
        version => version_of(group), parents, children, members,
    })
}

pub async fn group_detail(
    State(state): State<AppState>,
    caller: Caller,
    OriginalUri(uri): OriginalUri,
    Path(id): Path<String>,
) -> UiResult {
    let ui = Ui::admin(&state, caller, &here(&uri)).await?;
    let group = load_group(&ui, &id).await?;
    ui.page("admin/group.html", "groups", group_ctx(&ui, &group).await?)
}

async fn group_refused(ui: &Ui, id: Uuid, form: &Form, e: CoreError) -> UiResult {
    let group = load_group(ui, &id.to_string()).await?;
    ui.refused("admin/group.html", "groups", group_ctx(ui, &group).await?, form, e)
}

pub async fn save_group(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> UiResult {
    let ui = Ui::admin(&state, caller, "/if/admin/groups/").await?;
    let form = ui.form(&body)?;
    let current = load_group(&ui, &id).await?;
    let result = async {
        check_version(&current, form.opt("version").as_deref())?;
        let mut next = current.clone();
        next.name = form.get("name").trim().to_string();
        next.is_superuser = form.checked("is_superuser");
        next.parent_id = match form.opt("parent") {
            Some(p) => Some(
                ui.core()
                    .directory
                    .require_group(&p)
                    .await
                    .map_err(|_| CoreError::invalid_field("parent", format!("There is no group '{p}'.")))?
                    .id,
            ),
            None => None,
        };
        ui.core().directory.update_group(&next, &ui.client()).await
    }
    .await;
    match result {
        Ok(()) => done(&format!("/if/admin/groups/{}/", current.id), "Saved."),
        Err(e) => group_refused(&ui, current.id, &form, e).await,
    }
}

pub async fn delete_group(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> UiResult {
    let ui = Ui::admin(&state, caller, "/if/admin/groups/").await?;
    let form = ui.form(&body)?;
    let group = load_group(&ui, &id).await?;
    match ui.core().directory.delete_group(&group.name, &ui.client()).await {
        Ok(_) => done("/if/admin/groups/", &format!("Deleted the group {}.", group.name)),
        Err(e) => group_refused(&ui, group.id, &form, e).await,
    }
}

pub async fn group_members(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, op)): Path<(String, String)>,
    body: Bytes,
) -> UiResult {
    let ui = Ui::admin(&state, caller, "/if/admin/groups/").await?;
    let form = ui.form(&body)?;
    let group = load_group(&ui, &id).await?;
    let username = form.get("username").trim().to_string();
    let dir = &ui.core().directory;
    let result = match op.as_str() {
        "add" => dir.add_member(&group.name, &username, &ui.client()).await.map(|_| format!("Added {username}.")),
        "remove" => {
            dir.remove_member(&group.name, &username, &ui.client()).await.map(|_| format!("Removed {username}."))
        }
        _ => return Err(crate::error::WebError::not_found("There is nothing at this address.").into()),
    };
    match result {
        Ok(msg) => done(&format!("/if/admin/groups/{}/", group.id), &msg),
        // An unknown username is a mistake in the form, not a missing page.
        Err(CoreError::NotFound(_)) => {
            group_refused(
                &ui,
                group.id,
                &form,
                CoreError::invalid_field("username", format!("There is no user '{username}'.")),
            )
            .await
        }
        Err(e) => group_refused(&ui, group.id, &form, e).await,
    }
}
