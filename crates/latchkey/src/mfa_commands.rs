//! `latchkey user mfa …`: list and remove a user's authenticator devices.

use anyhow::Context;
use latchkey_core::events::ClientInfo;
use latchkey_core::mfa::Mfa;
use latchkey_core::model::DeviceKind;
use uuid::Uuid;

use crate::app::App;
use crate::cli::UserMfaCommand;

pub async fn run(app: &App, command: UserMfaCommand) -> anyhow::Result<()> {
    let core = &app.core;
    match command {
        UserMfaCommand::List { username } => {
            let user = core.directory.require_user(&username).await.map_err(anyhow::Error::new)?;
            let devices = core.mfa.list(user.id).await.map_err(anyhow::Error::new)?;
            println!("{:<36} {:<8} {:<24} {:<10} {:<17} LAST USED", "ID", "TYPE", "NAME", "CONFIRMED", "CREATED");
            for d in devices {
                let name = if d.kind == DeviceKind::Static {
                    format!("{} ({} left)", d.name, Mfa::remaining_codes(&d))
                } else {
                    d.name.clone()
                };
                println!(
                    "{:<36} {:<8} {:<24} {:<10} {:<17} {}",
                    d.id,
                    d.kind.as_str(),
                    name,
                    if d.confirmed { "yes" } else { "no" },
                    d.created_at.format("%Y-%m-%d %H:%M"),
                    d.last_used_at.map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_else(|| "never".into())
                );
            }
        }
        UserMfaCommand::Remove { username, device_id } => {
            let user = core.directory.require_user(&username).await.map_err(anyhow::Error::new)?;
            let id: Uuid = device_id.parse().with_context(|| format!("'{device_id}' is not a device id"))?;
            let device = core.mfa.remove(&user, id, &ClientInfo::cli()).await.map_err(anyhow::Error::new)?;
            println!("removed {} device '{}' ({}) of {}", device.kind.as_str(), device.name, device.id, user.username);
        }
    }
    Ok(())
}
