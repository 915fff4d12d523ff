//! `latchkey app-password create/list/revoke`.

use anyhow::anyhow;
use latchkey_core::app_passwords::NewAppPassword;
use latchkey_core::events::ClientInfo;

use crate::app::App;
use crate::cli::AppPasswordCommand;

pub async fn run(app: &App, command: AppPasswordCommand) -> anyhow::Result<()> {
    let core = &app.core;
    let err = |e: latchkey_core::CoreError| anyhow!("{e}");
    match command {
        AppPasswordCommand::Create { username, name, applications, expires } => {
            let user = core.directory.require_user(&username).await.map_err(err)?;
            let apps = core.app_passwords.applications_by_slug(&applications).await.map_err(err)?;
            let expires_in = expires
                .map(|d| chrono::Duration::from_std(d).map_err(|_| anyhow!("the expiry {d:?} is too long")))
                .transpose()?;
            let input = NewAppPassword { name, applications: apps, expires_in };
            let (secret, _) = core.app_passwords.create(&user, input, &ClientInfo::cli()).await.map_err(err)?;
            // Only the secret on stdout, so `$(latchkey app-password create …)` works.
            println!("{secret}");
        }
        AppPasswordCommand::List { username } => {
            let user = core.directory.require_user(&username).await.map_err(err)?;
            println!("{:<24} {:<17} {:<17} {:<17} APPLICATIONS", "NAME", "CREATED", "EXPIRES", "LAST USED");
            let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_else(|| "-".into())
            };
            for p in core.app_passwords.list(&user).await.map_err(err)? {
                let scope = core.app_passwords.scope_slugs(&p).await.map_err(err)?;
                let scope = scope.map_or_else(|| "all".to_string(), |slugs| slugs.join(","));
                println!(
                    "{:<24} {:<17} {:<17} {:<17} {}",
                    p.name,
                    time(Some(p.created_at)),
                    time(p.expires_at),
                    time(p.last_used_at),
                    scope
                );
            }
        }
        AppPasswordCommand::Revoke { username, name } => {
            let user = core.directory.require_user(&username).await.map_err(err)?;
            core.app_passwords.revoke(&user, &name, &ClientInfo::cli()).await.map_err(err)?;
            println!("revoked app password '{name}' of {}", user.username);
        }
    }
    Ok(())
}
