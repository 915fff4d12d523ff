//! Wiring shared by `serve` and the CLI commands: data directory, secret key, store, core.

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use latchkey_core::password::Argon2Settings;
use latchkey_core::sessions::SessionSettings;
use latchkey_core::{clock::SystemClock, Core, CoreConfig, StoreError};
use latchkey_store::SqlStore;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;

/// Creates the data directory if needed and proves it is writable.
pub fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow!("cannot create data directory {}: {e}", dir.display()))?;
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"ok").map_err(|e| anyhow!("data directory {} is not writable: {e}", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// The master secret: from the configuration, else `data_dir/secret_key`, generated (0600) on first start.
pub fn secret_key(config: &Config) -> anyhow::Result<Vec<u8>> {
    if let Some(key) = config.secret_key.as_deref().filter(|k| !k.is_empty()) {
        return Ok(key.as_bytes().to_vec());
    }
    let path = config.data_dir.join("secret_key");
    match std::fs::read_to_string(&path) {
        Ok(key) if !key.trim().is_empty() => return Ok(key.trim().as_bytes().to_vec()),
        Ok(_) => bail!("secret key file {} is empty; delete it to generate a new one", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => bail!("cannot read secret key file {}: {e}", path.display()),
    }
    let mut bytes = [0u8; 48];
    rand::Rng::fill(&mut rand::thread_rng(), &mut bytes[..]);
    let key = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).map_err(|e| anyhow!("cannot create secret key file {}: {e}", path.display()))?;
    file.write_all(key.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|e| anyhow!("cannot write secret key file {}: {e}", path.display()))?;
    tracing::info!(path = %path.display(), "generated a new secret key");
    Ok(key.into_bytes())
}

/// Shows where the database is without its password.
pub fn redacted_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("********"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Connects, retrying with backoff while the database is unreachable (it may still be starting).
pub async fn connect_store(config: &Config, patience: Duration) -> anyhow::Result<SqlStore> {
    let url = config.database_url();
    let started = Instant::now();
    let mut delay = Duration::from_millis(250);
    loop {
        match SqlStore::connect(&url).await {
            Ok(store) => return Ok(store),
            Err(StoreError::Unavailable(reason)) if started.elapsed() + delay < patience => {
                tracing::warn!(database = %redacted_url(&url), %reason, retry_in = ?delay, "database unreachable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                bail!("cannot open the database at {}: {e}", redacted_url(&url))
            }
        }
    }
}

pub async fn migrate(store: &SqlStore) -> anyhow::Result<()> {
    let (from, to) = store.migrate().await.context("database migration failed")?;
    if from != to {
        tracing::info!(from, to, "database schema migrated");
    }
    Ok(())
}

pub fn core_config(config: &Config) -> CoreConfig {
    CoreConfig {
        argon2: Argon2Settings {
            memory_kib: config.password.argon2_memory_kib,
            iterations: config.password.argon2_iterations,
            parallelism: config.password.argon2_parallelism,
        },
        sessions: SessionSettings {
            idle_timeout: chrono::Duration::from_std(config.session.idle_timeout)
                .unwrap_or(chrono::Duration::hours(24)),
            lifetime: chrono::Duration::from_std(config.session.lifetime).unwrap_or(chrono::Duration::days(14)),
        },
        ..CoreConfig::default()
    }
}

/// Everything a command needs: the store (migrated) and the core services on it.
pub struct App {
    pub config: Config,
    pub store: Arc<SqlStore>,
    pub core: Arc<Core>,
}

impl App {
    pub async fn open(config: Config, patience: Duration) -> anyhow::Result<App> {
        // Always needed: it holds the secret key, certificates and template overrides.
        prepare_data_dir(&config.data_dir)?;
        let secret = secret_key(&config)?;
        let store = Arc::new(connect_store(&config, patience).await?);
        migrate(&store).await?;
        let core = Core::new(store.clone(), Arc::new(SystemClock), &secret, core_config(&config))
            .map_err(|e| anyhow!("{e}"))?;
        core.bootstrap().await.map_err(|e| anyhow!("cannot create the default objects: {e}"))?;
        core.access.set_hibp(Arc::new(HttpHibp::new(&config.password.hibp_url)?));
        core.oauth.set_logout_delivery(Arc::new(crate::backchannel::HttpLogoutDelivery::new()?));
        // Mails render from the same overridable templates as pages.
        core.mailer
            .set_templates(Arc::new(latchkey_web::templates::Templates::new(Some(config.data_dir.join("templates")))));
        Ok(App { config, store, core })
    }

    /// The base URL printed in links: `external_url`, else the HTTP listener's address.
    pub fn base_url(&self) -> String {
        if let Some(url) = &self.config.external_url {
            return url.as_str().trim_end_matches('/').to_string();
        }
        let addr = self.config.listen.http;
        let host = if addr.ip().is_unspecified() { "localhost".to_string() } else { addr.ip().to_string() };
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        format!("http://{host}:{}", addr.port())
    }
}

/// The Have I Been Pwned range API over HTTPS (k-anonymity: only a 5-character hash prefix
/// leaves the machine).
pub struct HttpHibp {
    client: reqwest::Client,
    base: String,
}

impl HttpHibp {
    pub fn new(base: &str) -> anyhow::Result<HttpHibp> {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .user_agent("latchkey")
            .build()
            .map_err(|e| anyhow!("cannot build the HTTP client for password breach checks: {e}"))?;
        Ok(HttpHibp { client, base: base.trim_end_matches('/').to_string() })
    }
}

#[async_trait::async_trait]
impl latchkey_core::access::HibpFetch for HttpHibp {
    async fn range(&self, prefix: &str) -> latchkey_core::Result<String> {
        let fail =
            |e: String| latchkey_core::CoreError::invalid(format!("The breach check could not be completed: {e}."));
        let response =
            self.client.get(format!("{}/{prefix}", self.base)).send().await.map_err(|e| fail(e.to_string()))?;
        if !response.status().is_success() {
            return Err(fail(format!("the service answered {}", response.status())));
        }
        response.text().await.map_err(|e| fail(e.to_string()))
    }
}
