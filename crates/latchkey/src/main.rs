//! The `latchkey` binary: configuration, command line and wiring of the crates.

mod app;
mod app_password_commands;
mod backchannel;
mod cli;
mod commands;
mod config;
mod doctor;
mod keys_commands;
mod listen;
mod logging;
mod mailer;
mod mfa_commands;
mod serve;
mod tls;

use clap::Parser;
use std::process::ExitCode;
use std::time::Duration;

use cli::{Cli, Command, ConfigCommand};

/// A request allocates and frees many small objects on whichever worker thread runs it; glibc's
/// allocator serialises those threads on its arena locks, mimalloc keeps per-thread heaps.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Hands memory freed since the last call back to the system. mimalloc returns free pages
/// lazily, on later allocations by the same thread; an idle server makes none, so what start-up
/// (migrations, key loading) freed would otherwise stay resident.
pub(crate) fn return_free_memory() {
    // SAFETY: mi_collect only walks mimalloc's own structures; any thread may call it.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// CLI commands wait this long for an unreachable database.
const CLI_DATABASE_PATIENCE: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    // `latchkey user list | head` must end quietly like any Unix tool, not panic on EPIPE.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let loaded = match config::load(cli.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("latchkey: {e}");
            return ExitCode::from(2);
        }
    };
    let config = loaded.config;
    let config_file = loaded.file;
    // Commands print their results on stdout; logs go to stderr and stay quiet unless serving.
    let level = if matches!(cli.command, Command::Serve) { config.log.level.clone() } else { "warn".into() };
    logging::init(&level, config.log.format);
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    for notice in &loaded.notices {
        tracing::info!("{notice}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("latchkey: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config, config_file)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("latchkey: {e:#}");
            // `policy test` tells a broken expression (2) from a command that failed (1).
            if e.downcast_ref::<commands::ExpressionError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(command: Command, config: config::Config, config_file: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    use app::App;
    match command {
        Command::Serve => serve::run(config).await,
        Command::Config(ConfigCommand::Check) => {
            match &config_file {
                Some(file) => println!("# configuration file: {}", file.display()),
                None => println!("# no configuration file; defaults and environment only"),
            }
            print!("{}", config.masked_toml());
            Ok(())
        }
        Command::Healthcheck => commands::healthcheck(&config),
        Command::Restore { file } => {
            // Restore goes into a store that has only its schema: no default objects yet.
            if config.database_url().starts_with("sqlite:") {
                app::prepare_data_dir(&config.data_dir)?;
            }
            let store = app::connect_store(&config, CLI_DATABASE_PATIENCE).await?;
            app::migrate(&store).await?;
            let result = commands::restore(&store, &file).await;
            store.close().await;
            result
        }
        Command::Migrate => {
            if config.database_url().starts_with("sqlite:") {
                app::prepare_data_dir(&config.data_dir)?;
            }
            let store = app::connect_store(&config, CLI_DATABASE_PATIENCE).await?;
            let (from, to) = store.migrate().await.map_err(|e| anyhow::anyhow!("database migration failed: {e}"))?;
            println!("schema version {from} -> {to}");
            store.close().await;
            Ok(())
        }
        other => {
            let app = App::open(config, CLI_DATABASE_PATIENCE).await?;
            let result = match other {
                Command::SetupLink => commands::setup_link(&app).await,
                Command::RecoveryLink { username, expires } => commands::recovery_link(&app, &username, expires).await,
                Command::RecoveryEmail { username } => commands::recovery_email(&app, &username).await,
                Command::User(c) => commands::user(&app, c).await,
                Command::Group(c) => commands::group(&app, c).await,
                Command::Token(c) => commands::token(&app, c).await,
                Command::Session(c) => commands::session(&app, c).await,
                Command::AppPassword(c) => app_password_commands::run(&app, c).await,
                Command::Blueprint(c) => commands::blueprint(&app, c).await,
                Command::Backup { file } => commands::backup(&app, &file).await,
                Command::Throttle(c) => commands::throttle(&app, c).await,
                Command::Policy(c) => commands::policy(&app, c).await,
                Command::Consent(c) => commands::consent(&app, c).await,
                Command::Keys(c) => keys_commands::keys(&app, c).await,
                Command::Email(c) => commands::email(&app, c).await,
                Command::Invitation(c) => commands::invitation(&app, c).await,
                Command::Doctor(cli::DoctorCommand::ForwardAuth { url }) => doctor::forward_auth(&app, &url).await,
                Command::Serve
                | Command::Config(_)
                | Command::Healthcheck
                | Command::Migrate
                | Command::Restore { .. } => Ok(()),
            };
            app.store.close().await;
            result
        }
    }
}
