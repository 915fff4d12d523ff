//! The administrative commands. Each works on the same store as `serve`, also while it
//! runs: changes reach a running server through the store's change feed.

use anyhow::{anyhow, bail, Context};
use latchkey_core::directory::UserInput;
use latchkey_core::events::ClientInfo;
use latchkey_core::model::{ListQuery, UserKind};
use latchkey_core::CoreError;
use std::io::BufRead;
use std::time::Duration;

use crate::app::App;
use crate::cli::*;

fn core_err(e: CoreError) -> anyhow::Error {
    anyhow!("{e}")
}

/// The first line of standard input, without its line ending.
fn password_from_stdin() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("cannot read the password from standard input")?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        bail!("no password on standard input");
    }
    Ok(password)
}

fn chrono_duration(d: Duration) -> anyhow::Result<chrono::Duration> {
    chrono::Duration::from_std(d).map_err(|_| anyhow!("duration {d:?} is too long"))
}

pub async fn setup_link(app: &App) -> anyhow::Result<()> {
    match app.core.setup_link(&app.base_url()).await.map_err(core_err)? {
        Some(link) => {
            println!("{link}");
            Ok(())
        }
        None => bail!("an administrator already exists; use `latchkey recovery-link USERNAME` to regain access"),
    }
}

pub async fn recovery_link(app: &App, username: &str, expires: Duration) -> anyhow::Result<()> {
    let user = app.core.directory.require_user(username).await.map_err(core_err)?;
    let token = app
        .core
        .tokens
        .create_recovery_token(&user, chrono_duration(expires)?, &ClientInfo::cli())
        .await
        .map_err(core_err)?;
    println!("{}/recovery/use-token/{token}/", app.base_url());
    Ok(())
}

pub async fn recovery_email(app: &App, username: &str) -> anyhow::Result<()> {
    use latchkey_core::flow::email::{mail_flow_link, LinkMail};
    let user = app.core.directory.require_user(username).await.map_err(core_err)?;
    let Some(address) = user.email.clone() else { bail!("{username} has no email address") };
    if !user.is_active {
        bail!("{username} is disabled; enable the account first");
    }
    let base = app.base_url();
    let link = LinkMail {
        flow_slug: "default-recovery-flow",
        origin: &base,
        template: "recovery",
        subject: "Reset your password",
        valid_for: chrono::Duration::minutes(30),
        // An administrator's request is not rate-limited like self-service ones.
        max_per_hour: u64::MAX,
    };
    mail_flow_link(app.core.flows.services(), &user, &link, &ClientInfo::cli()).await.map_err(core_err)?;
    println!("queued a password-reset email to {address}; the running server sends it");
    Ok(())
}

pub async fn user(app: &App, command: UserCommand) -> anyhow::Result<()> {
    let dir = &app.core.directory;
    let cli = ClientInfo::cli();
    match command {
        UserCommand::Create { username, email, name, groups, password_stdin, service_account } => {
            let password = if password_stdin { Some(password_from_stdin()?) } else { None };
            let kind = if service_account { UserKind::ServiceAccount } else { UserKind::Internal };
            let user = dir
                .create_user(
                    UserInput { username, name, email, password, groups, kind: Some(kind), is_active: None },
                    &cli,
                )
                .await
                .map_err(core_err)?;
            println!("created user {} ({})", user.username, user.id);
        }
        UserCommand::List { search } => {
            let page = dir.list_users(&ListQuery { search, ..ListQuery::all() }).await.map_err(core_err)?;
            println!("{:<24} {:<24} {:<32} {:<8} LAST LOGIN", "USERNAME", "NAME", "EMAIL", "ACTIVE");
            for u in page.items {
                println!(
                    "{:<24} {:<24} {:<32} {:<8} {}",
                    u.username,
                    u.name,
                    u.email.as_deref().unwrap_or("-"),
                    if u.is_active { "yes" } else { "no" },
                    u.last_login.map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_else(|| "never".into())
                );
            }
        }
        UserCommand::Show { username } => {
            let u = dir.require_user(&username).await.map_err(core_err)?;
            let groups = dir.effective_groups(u.id).await.map_err(core_err)?;
            println!("id:           {}", u.id);
            println!("username:     {}", u.username);
            println!("name:         {}", u.name);
            println!("email:        {}", u.email.as_deref().unwrap_or("-"));
            println!("active:       {}", if u.is_active { "yes" } else { "no" });
            println!("type:         {}", u.kind.as_str());
            println!("superuser:    {}", if groups.iter().any(|g| g.is_superuser) { "yes" } else { "no" });
            println!("groups:       {}", groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>().join(", "));
            println!("uid number:   {}", u.uid_number);
            println!("created:      {}", u.created_at.to_rfc3339());
            println!("last login:   {}", u.last_login.map(|t| t.to_rfc3339()).unwrap_or_else(|| "never".into()));
            println!("password set: {}", u.password_changed_at.map(|t| t.to_rfc3339()).unwrap_or_else(|| "no".into()));
        }
        UserCommand::SetPassword { username, password_stdin: _ } => {
            let user = dir.require_user(&username).await.map_err(core_err)?;
            let password = password_from_stdin()?;
            dir.set_password(&user, &password, &cli).await.map_err(core_err)?;
            println!("password set for {}; their sessions were ended", user.username);
        }
        UserCommand::Disable { username } => {
            let user = dir.set_active(&username, false, &cli).await.map_err(core_err)?;
            println!("disabled {}; their sessions were ended", user.username);
        }
        UserCommand::Enable { username } => {
            let user = dir.set_active(&username, true, &cli).await.map_err(core_err)?;
            println!("enabled {}", user.username);
        }
        UserCommand::Delete { username } => {
            let user = dir.delete_user(&username, &cli).await.map_err(core_err)?;
            println!("deleted {}", user.username);
        }
        UserCommand::Mfa(command) => crate::mfa_commands::run(app, command).await?,
    }
    Ok(())
}

pub async fn group(app: &App, command: GroupCommand) -> anyhow::Result<()> {
    let dir = &app.core.directory;
    let cli = ClientInfo::cli();
    match command {
        GroupCommand::Create { name, parent, superuser } => {
            let g = dir.create_group(&name, parent.as_deref(), superuser, &cli).await.map_err(core_err)?;
            println!("created group {} ({})", g.name, g.id);
        }
        GroupCommand::List => {
            let groups = dir.list_groups(&ListQuery::all()).await.map_err(core_err)?.items;
            println!("{:<24} {:<24} {:<10} MEMBERS", "NAME", "PARENT", "SUPERUSER");
            for g in &groups {
                let parent = g.parent_id.and_then(|p| groups.iter().find(|x| x.id == p)).map(|p| p.name.as_str());
                let members = dir.member_usernames(g).await.map_err(core_err)?;
                println!(
                    "{:<24} {:<24} {:<10} {}",
                    g.name,
                    parent.unwrap_or("-"),
                    if g.is_superuser { "yes" } else { "no" },
                    members.join(", ")
                );
            }
        }
        GroupCommand::AddMember { group, username } => {
            dir.add_member(&group, &username, &cli).await.map_err(core_err)?;
            println!("added {username} to {group}");
        }
        GroupCommand::RemoveMember { group, username } => {
            dir.remove_member(&group, &username, &cli).await.map_err(core_err)?;
            println!("removed {username} from {group}");
        }
        GroupCommand::Delete { name } => {
            dir.delete_group(&name, &cli).await.map_err(core_err)?;
            println!("deleted group {name}");
        }
    }
    Ok(())
}

pub async fn token(app: &App, command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create(TokenCreate { user, expires, description }) => {
            let user = app.core.directory.require_user(&user).await.map_err(core_err)?;
            let valid_for = expires.map(chrono_duration).transpose()?;
            let (secret, _) = app
                .core
                .tokens
                .create_api_token(&user, valid_for, &description, &ClientInfo::cli())
                .await
                .map_err(core_err)?;
            // Only the token on stdout, so `$(latchkey token create …)` works.
            println!("{secret}");
        }
    }
    Ok(())
}

pub async fn session(app: &App, command: SessionCommand) -> anyhow::Result<()> {
    let core = &app.core;
    match command {
        SessionCommand::List { username } => {
            let user = match &username {
                Some(name) => Some(core.directory.require_user(name).await.map_err(core_err)?),
                None => None,
            };
            let sessions = core.sessions.list(user.as_ref().map(|u| u.id)).await.map_err(core_err)?;
            println!("{:<18} {:<24} {:<17} {:<17} {:<16} AMR", "ID", "USER", "CREATED", "LAST SEEN", "ADDRESS");
            for s in sessions {
                let name = match &user {
                    Some(u) => u.username.clone(),
                    None => core.store.get_user(s.user_id).await.ok().flatten().map(|u| u.username).unwrap_or_default(),
                };
                println!(
                    "{:<18} {:<24} {:<17} {:<17} {:<16} {}",
                    s.id,
                    name,
                    s.created_at.format("%Y-%m-%d %H:%M"),
                    s.last_seen.format("%Y-%m-%d %H:%M"),
                    s.client_ip.as_deref().unwrap_or("-"),
                    s.amr.join(",")
                );
            }
        }
        SessionCommand::Revoke { id, user } => match (id, user) {
            (Some(id), None) => {
                let s = core.sessions.revoke_by_id(&id).await.map_err(core_err)?;
                println!("revoked session {}", s.id);
            }
            (None, Some(username)) => {
                let u = core.directory.require_user(&username).await.map_err(core_err)?;
                let n = core.sessions.revoke_user(u.id).await.map_err(core_err)?;
                println!("revoked {n} session(s) of {}", u.username);
            }
            _ => bail!("give either a session id or --user USERNAME"),
        },
    }
    Ok(())
}

pub async fn throttle(app: &App, command: ThrottleCommand) -> anyhow::Result<()> {
    let throttle = &app.core.flows.services().throttle;
    match command {
        ThrottleCommand::List => {
            println!("{:<40} {:<9} {:<20} BLOCKED UNTIL", "KEY", "FAILURES", "LAST FAILURE");
            for r in throttle.list().await.map_err(core_err)? {
                println!(
                    "{:<40} {:<9} {:<20} {}",
                    r.key,
                    r.failures,
                    r.last_failure.format("%Y-%m-%d %H:%M:%S"),
                    r.blocked_until.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_else(|| "-".into())
                );
            }
        }
        ThrottleCommand::Clear { user, ip } => {
            let key = match (user, ip) {
                (Some(u), None) => latchkey_core::throttle::account_key(&u),
                (None, Some(ip)) => latchkey_core::throttle::address_key(&ip),
                _ => bail!("give either --user USERNAME or --ip ADDRESS"),
            };
            let cleared = throttle.clear(&key).await.map_err(core_err)?;
            app.core
                .events
                .record_raw(
                    "throttle_cleared",
                    None,
                    None,
                    &ClientInfo::cli(),
                    serde_json::json!({ "key": key, "was_blocked": cleared }),
                )
                .await;
            println!("{} {key}", if cleared { "cleared" } else { "nothing to clear for" });
        }
    }
    Ok(())
}

/// A policy expression that does not compile or fails: `policy test` exits 2 for it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ExpressionError(pub String);

pub async fn policy(app: &App, command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Test { expression, user } => {
            let user = app.core.directory.require_user(&user).await.map_err(core_err)?;
            let request =
                app.core.access.request(Some(&user), Default::default(), Default::default()).await.map_err(core_err)?;
            match latchkey_core::policy::test_expression(&expression, &request).await {
                Ok(result) => {
                    println!("{result}");
                    Ok(())
                }
                Err(e) => Err(ExpressionError(e.to_string()).into()),
            }
        }
    }
}

pub async fn consent(app: &App, command: ConsentCommand) -> anyhow::Result<()> {
    let store = &app.core.store;
    match command {
        ConsentCommand::List { username } => {
            let user = app.core.directory.require_user(&username).await.map_err(core_err)?;
            println!("{:<24} {:<40} {:<17} EXPIRES", "APPLICATION", "PERMISSIONS", "GIVEN");
            for g in store.list_consents(user.id).await.map_err(|e| core_err(CoreError::from_store(e)))? {
                let app_slug =
                    store.get_application(g.application_id).await.ok().flatten().map(|a| a.slug).unwrap_or_default();
                println!(
                    "{:<24} {:<40} {:<17} {}",
                    app_slug,
                    g.permissions.join(" "),
                    g.created_at.format("%Y-%m-%d %H:%M"),
                    g.expires_at.map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_else(|| "never".into())
                );
            }
        }
        ConsentCommand::Revoke { user, application } => {
            let u = app.core.directory.require_user(&user).await.map_err(core_err)?;
            let a = store
                .get_application_by_slug(&application)
                .await
                .map_err(|e| core_err(CoreError::from_store(e)))?
                .ok_or_else(|| anyhow!("application '{application}' not found"))?;
            let grants = store.list_consents(u.id).await.map_err(|e| core_err(CoreError::from_store(e)))?;
            let Some(grant) = grants.into_iter().find(|g| g.application_id == a.id) else {
                bail!("{user} has not consented to {application}");
            };
            store.delete_consent(grant.id).await.map_err(|e| core_err(CoreError::from_store(e)))?;
            app.core
                .events
                .record("consent_revoked", Some(&u), &ClientInfo::cli(), serde_json::json!({ "application": a.slug }))
                .await;
            println!("revoked {user}'s consent to {application}");
        }
    }
    Ok(())
}

pub async fn invitation(app: &App, command: InvitationCommand) -> anyhow::Result<()> {
    let core = &app.core;
    match command {
        InvitationCommand::Create { expires, uses, email, groups, flow } => {
            for g in &groups {
                core.directory.require_group(g).await.map_err(core_err)?;
            }
            if core.store.get_flow_by_slug(&flow).await.map_err(|e| core_err(CoreError::from_store(e)))?.is_none() {
                bail!("flow '{flow}' not found");
            }
            let valid_for = expires.map(chrono_duration).transpose()?;
            let request = latchkey_core::tokens::InvitationRequest {
                valid_for,
                max_uses: uses,
                fixed_email: email,
                groups,
                flow_slug: flow.clone(),
            };
            let (secret, _) =
                core.tokens.create_invitation(None, request, &ClientInfo::cli()).await.map_err(core_err)?;
            println!("{}/if/flow/{flow}/?itoken={secret}", app.base_url());
        }
        InvitationCommand::List => {
            println!("{:<38} {:<7} {:<17} {:<30} GROUPS", "ID", "USES", "EXPIRES", "EMAIL");
            for i in core.store.list_invitations().await.map_err(|e| core_err(CoreError::from_store(e)))? {
                println!(
                    "{:<38} {:<7} {:<17} {:<30} {}",
                    i.id,
                    format!("{}/{}", i.uses, i.max_uses),
                    i.expires_at.map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_else(|| "never".into()),
                    i.fixed_email.as_deref().unwrap_or("-"),
                    i.groups.join(", ")
                );
            }
        }
        InvitationCommand::Delete { id } => {
            let id: uuid::Uuid = id.parse().map_err(|_| anyhow!("'{id}' is not an invitation id"))?;
            core.store.delete_invitation(id).await.map_err(|e| core_err(CoreError::from_store(e)))?;
            println!("deleted invitation {id}");
        }
    }
    Ok(())
}

pub async fn email(app: &App, command: EmailCommand) -> anyhow::Result<()> {
    match command {
        EmailCommand::Test { address } => {
            let sender = crate::mailer::Sender::new(&app.config.email)?;
            let message =
                app.core.mailer.render("test", "Latchkey test message", &serde_json::json!({})).map_err(core_err)?;
            let mail = app.core.mailer.compose(&address, message);
            sender.send(&mail).await?;
            match &app.config.email.host {
                Some(host) => println!("sent a test message to {address} through {host}:{}", app.config.email.port),
                None => println!("no email.host configured: the test message to {address} was logged, not sent"),
            }
        }
        EmailCommand::List { limit } => {
            let mails = app.core.store.list_mails(limit).await.map_err(|e| core_err(CoreError::from_store(e)))?;
            println!("{:<17} {:<8} {:<8} {:<32} {:<32} LAST ERROR", "CREATED", "STATUS", "ATTEMPTS", "TO", "SUBJECT");
            for m in mails {
                println!(
                    "{:<17} {:<8} {:<8} {:<32} {:<32} {}",
                    m.created_at.format("%Y-%m-%d %H:%M"),
                    m.status.as_str(),
                    m.attempts,
                    m.to,
                    m.subject,
                    m.last_error.as_deref().unwrap_or("-")
                );
            }
        }
    }
    Ok(())
}

pub async fn backup(app: &App, file: &std::path::Path) -> anyhow::Result<()> {
    // Write next to the target and rename, so a failed backup never leaves a truncated file behind.
    let tmp = file.with_extension("partial");
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&tmp).map_err(|e| anyhow!("cannot create backup file {}: {e}", tmp.display()))?,
    );
    app.store.backup(&mut out).await.map_err(|e| anyhow!("backup failed: {e}"))?;
    let file_handle = out.into_inner().map_err(|e| anyhow!("cannot write backup file {}: {e}", tmp.display()))?;
    file_handle.sync_all().map_err(|e| anyhow!("cannot write backup file {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, file).map_err(|e| anyhow!("cannot move backup into place at {}: {e}", file.display()))?;
    println!("backup written to {}", file.display());
    Ok(())
}

pub async fn restore(store: &latchkey_store::SqlStore, file: &std::path::Path) -> anyhow::Result<()> {
    let mut input = std::io::BufReader::new(
        std::fs::File::open(file).map_err(|e| anyhow!("cannot open backup file {}: {e}", file.display()))?,
    );
    store.restore(&mut input).await.map_err(|e| anyhow!("restore failed: {e}"))?;
    println!("restored {}", file.display());
    Ok(())
}

/// Exit 0 when the local instance answers `/-/health/live/` (for Docker's HEALTHCHECK).
pub fn healthcheck(config: &crate::config::Config) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let addr = config.listen.http;
    let target = if addr.ip().is_unspecified() {
        std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    let mut stream = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(3))
        .map_err(|e| anyhow!("nothing answers on {target}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(b"GET /-/health/live/ HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    if response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200") {
        println!("ok");
        Ok(())
    } else {
        bail!("the instance on {target} is not healthy: {}", response.lines().next().unwrap_or("no answer"))
    }
}

pub async fn blueprint(app: &App, command: BlueprintCommand) -> anyhow::Result<()> {
    match command {
        BlueprintCommand::Apply { file } => {
            let report = apply_blueprint_file(app, &file).await?;
            println!(
                "blueprint {}: {} created, {} updated, {} unchanged",
                file.display(),
                report.created,
                report.updated,
                report.unchanged
            );
            Ok(())
        }
    }
}

async fn apply_blueprint_file(
    app: &App,
    file: &std::path::Path,
) -> anyhow::Result<latchkey_core::blueprint::ApplyReport> {
    let yaml = std::fs::read_to_string(file).map_err(|e| anyhow!("cannot read blueprint {}: {e}", file.display()))?;
    // Errors name the file as the user knows it: its name, not the whole path.
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| file.display().to_string());
    latchkey_core::blueprint::apply(&app.core, &name, &yaml, &ClientInfo::cli()).await.map_err(core_err)
}

/// Applies every `data_dir/blueprints/*.yaml` (and `*.yml`), sorted by file name; the first
/// invalid file stops with its error. A missing directory is not an error.
pub async fn apply_blueprint_dir(app: &App) -> anyhow::Result<()> {
    let dir = app.config.data_dir.join("blueprints");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => bail!("cannot read the blueprint directory {}: {e}", dir.display()),
    };
    let mut files: Vec<std::path::PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    for file in files {
        let report = apply_blueprint_file(app, &file).await?;
        tracing::info!(
            blueprint = %file.display(),
            created = report.created,
            updated = report.updated,
            unchanged = report.unchanged,
            "blueprint applied"
        );
    }
    Ok(())
}
