//! Configuration: built-in defaults < TOML file < environment (DESIGN.md §3).
//!
//! figment merges the layers and deserializes; the environment layer is built
//! here rather than with figment's `Env` provider because it also has to map
//! authentik's variable names, read `*_FILE` secrets and warn about unknown
//! `LATCHKEY_*` variables — and tests must be able to feed it without touching
//! the process environment.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use url::Url;

/// The configuration file when `--config` is not given (a path, not a key,
/// so it is exempt from the unknown-variable warning).
pub const CONFIG_ENV: &str = "LATCHKEY_CONFIG";

/// Configuration file used when `--config` is not given and it exists.
pub const DEFAULT_FILE: &str = "latchkey.toml";

const MASK: &str = "********";
const ENV_PROVIDER: &str = "environment";
const LATCHKEY_PREFIX: &str = "LATCHKEY_";
const AUTHENTIK_PREFIX: &str = "AUTHENTIK_";

/// Every leaf key. Environment names and unknown-key detection derive from
/// this list, so a field added to [`Config`] must be added here too (a test
/// checks that both agree).
const KEYS: &[&str] = &[
    "data_dir",
    "secret_key",
    "external_url",
    "avatars",
    "cookie_domain",
    "database.url",
    "postgresql.host",
    "postgresql.port",
    "postgresql.name",
    "postgresql.user",
    "postgresql.password",
    "listen.http",
    "listen.https",
    "listen.ldap",
    "listen.ldaps",
    "listen.metrics",
    "listen.trusted_proxy_cidrs",
    "email.host",
    "email.port",
    "email.username",
    "email.password",
    "email.use_tls",
    "email.use_ssl",
    "email.timeout",
    "email.from",
    "log.level",
    "log.format",
    "session.idle_timeout",
    "session.lifetime",
    "password.argon2_memory_kib",
    "password.argon2_iterations",
    "password.argon2_parallelism",
    "password.hibp_url",
    "ldap.idle_timeout",
    "ldap.max_connections",
    "ldap.bind_cache_ttl",
];

/// authentik variable (without `AUTHENTIK_`) → our key, for the settings that
/// mean the same thing here.
const AUTHENTIK_ALIASES: &[(&str, &str)] = &[
    ("SECRET_KEY", "secret_key"),
    ("POSTGRESQL__HOST", "postgresql.host"),
    ("POSTGRESQL__PORT", "postgresql.port"),
    ("POSTGRESQL__NAME", "postgresql.name"),
    ("POSTGRESQL__USER", "postgresql.user"),
    ("POSTGRESQL__PASSWORD", "postgresql.password"),
    ("EMAIL__HOST", "email.host"),
    ("EMAIL__PORT", "email.port"),
    ("EMAIL__USERNAME", "email.username"),
    ("EMAIL__PASSWORD", "email.password"),
    ("EMAIL__USE_TLS", "email.use_tls"),
    ("EMAIL__USE_SSL", "email.use_ssl"),
    ("EMAIL__TIMEOUT", "email.timeout"),
    ("EMAIL__FROM", "email.from"),
    ("AVATARS", "avatars"),
    ("LOG_LEVEL", "log.level"),
    ("COOKIE_DOMAIN", "cookie_domain"),
    ("LISTEN__HTTP", "listen.http"),
    ("LISTEN__HTTPS", "listen.https"),
    ("LISTEN__LDAP", "listen.ldap"),
    ("LISTEN__LDAPS", "listen.ldaps"),
    ("LISTEN__METRICS", "listen.metrics"),
    ("LISTEN__TRUSTED_PROXY_CIDRS", "listen.trusted_proxy_cidrs"),
];

/// The effective configuration.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    #[serde(deserialize_with = "de::path")]
    pub data_dir: PathBuf,
    #[serde(deserialize_with = "de::opt_string", skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<String>,
    #[serde(
        deserialize_with = "de::opt_url",
        serialize_with = "ser::opt_url",
        skip_serializing_if = "Option::is_none"
    )]
    pub external_url: Option<Url>,
    pub avatars: Avatars,
    #[serde(deserialize_with = "de::opt_string", skip_serializing_if = "Option::is_none")]
    pub cookie_domain: Option<String>,
    pub database: DatabaseConfig,
    pub postgresql: PostgresqlConfig,
    pub listen: ListenConfig,
    pub email: EmailConfig,
    pub log: LogConfig,
    pub session: SessionConfig,
    pub password: PasswordConfig,
    pub ldap: LdapConfig,
}

/// The LDAP listeners' limits and the bind cache.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct LdapConfig {
    /// A connection silent this long is closed.
    #[serde(deserialize_with = "de::duration", serialize_with = "ser::duration")]
    pub idle_timeout: Duration,
    /// Open LDAP plus LDAPS connections; more are refused with `busy`.
    #[serde(deserialize_with = "de::uint")]
    pub max_connections: u32,
    /// How long a successful bind is remembered (authentik's cached bind mode).
    #[serde(deserialize_with = "de::duration", serialize_with = "ser::duration")]
    pub bind_cache_ttl: Duration,
}

impl Default for LdapConfig {
    fn default() -> Self {
        Self { idle_timeout: Duration::from_secs(300), max_connections: 1000, bind_cache_ttl: Duration::from_secs(300) }
    }
}

#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DatabaseConfig {
    /// `sqlite://…` or `postgres://…`; use [`Config::database_url`] for the
    /// effective value.
    #[serde(deserialize_with = "de::opt_string", skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// authentik-style PostgreSQL settings; they build `database.url` when
/// `host` is set and `database.url` is not.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PostgresqlConfig {
    #[serde(deserialize_with = "de::opt_string", skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(deserialize_with = "de::port")]
    pub port: u16,
    #[serde(deserialize_with = "de::string")]
    pub name: String,
    #[serde(deserialize_with = "de::string")]
    pub user: String,
    #[serde(deserialize_with = "de::opt_string", skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct ListenConfig {
    #[serde(deserialize_with = "de::socket_addr")]
    pub http: SocketAddr,
    #[serde(deserialize_with = "de::socket_addr")]
    pub https: SocketAddr,
    #[serde(deserialize_with = "de::socket_addr")]
    pub ldap: SocketAddr,
    #[serde(deserialize_with = "de::socket_addr")]
    pub ldaps: SocketAddr,
    #[serde(deserialize_with = "de::socket_addr")]
    pub metrics: SocketAddr,
    /// Peers whose `X-Forwarded-*` headers are believed.
    #[serde(deserialize_with = "de::cidrs")]
    pub trusted_proxy_cidrs: Vec<IpNet>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EmailConfig {
    /// No host: mail is logged, not sent.
    #[serde(deserialize_with = "de::opt_string", skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(deserialize_with = "de::port")]
    pub port: u16,
    #[serde(deserialize_with = "de::opt_string", skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(deserialize_with = "de::opt_string", skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// STARTTLS.
    #[serde(deserialize_with = "de::boolean")]
    pub use_tls: bool,
    /// Implicit TLS.
    #[serde(deserialize_with = "de::boolean")]
    pub use_ssl: bool,
    #[serde(deserialize_with = "de::duration", serialize_with = "ser::duration")]
    pub timeout: Duration,
    #[serde(deserialize_with = "de::string")]
    pub from: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// A level (`info`) or an `EnvFilter` directive list (`info,latchkey=debug`).
    #[serde(deserialize_with = "de::log_level")]
    pub level: String,
    pub format: LogFormat,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionConfig {
    #[serde(deserialize_with = "de::duration", serialize_with = "ser::duration")]
    pub idle_timeout: Duration,
    #[serde(deserialize_with = "de::duration", serialize_with = "ser::duration")]
    pub lifetime: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct PasswordConfig {
    #[serde(deserialize_with = "de::uint")]
    pub argon2_memory_kib: u32,
    #[serde(deserialize_with = "de::uint")]
    pub argon2_iterations: u32,
    #[serde(deserialize_with = "de::uint")]
    pub argon2_parallelism: u32,
    /// Have I Been Pwned range API, for password policies with `check_hibp` (off by default;
    /// only the first 5 hex characters of the password's SHA-1 are ever sent).
    #[serde(deserialize_with = "de::string")]
    pub hibp_url: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Avatars {
    None,
    Initials,
    Gravatar,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            secret_key: None,
            external_url: None,
            avatars: Avatars::Initials,
            cookie_domain: None,
            database: DatabaseConfig::default(),
            postgresql: PostgresqlConfig::default(),
            listen: ListenConfig::default(),
            email: EmailConfig::default(),
            log: LogConfig::default(),
            session: SessionConfig::default(),
            password: PasswordConfig::default(),
            ldap: LdapConfig::default(),
        }
    }
}

impl Default for PostgresqlConfig {
    fn default() -> Self {
        Self { host: None, port: 5432, name: "latchkey".into(), user: "latchkey".into(), password: None }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
        Self {
            http: any(9000),
            https: any(9443),
            ldap: any(3389),
            ldaps: any(6636),
            metrics: any(9300),
            // Loopback and private ranges: where a reverse proxy usually sits.
            trusted_proxy_cidrs: [
                "127.0.0.0/8",
                "::1/128",
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "fc00::/7",
            ]
            .iter()
            .filter_map(|net| net.parse().ok())
            .collect(),
        }
    }
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            host: None,
            port: 25,
            username: None,
            password: None,
            use_tls: false,
            use_ssl: false,
            timeout: Duration::from_secs(10),
            from: "latchkey@localhost".into(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into(), format: LogFormat::Text }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self { idle_timeout: Duration::from_secs(24 * 3600), lifetime: Duration::from_secs(14 * 24 * 3600) }
    }
}

impl Default for PasswordConfig {
    fn default() -> Self {
        // OWASP's argon2id baseline (19 MiB, 2 passes, 1 lane).
        Self {
            argon2_memory_kib: 19456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            hibp_url: "https://api.pwnedpasswords.com/range/".into(),
        }
    }
}

impl FromStr for Avatars {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "initials" => Ok(Self::Initials),
            "gravatar" => Ok(Self::Gravatar),
            _ => Err(format!("'{s}' is not one of none, initials, gravatar")),
        }
    }
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(format!("'{s}' is not one of text, json")),
        }
    }
}

impl<'de> Deserialize<'de> for Avatars {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de::scalar(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de::scalar(d)?.parse().map_err(serde::de::Error::custom)
    }
}

// Hand-written so that secrets never reach a log line through `{:?}`.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("data_dir", &self.data_dir)
            .field("secret_key", &self.secret_key.as_ref().map(|_| MASK))
            .field("external_url", &self.external_url.as_ref().map(Url::as_str))
            .field("avatars", &self.avatars)
            .field("cookie_domain", &self.cookie_domain)
            .field("database", &self.database)
            .field("postgresql", &self.postgresql)
            .field("listen", &self.listen)
            .field("email", &self.email)
            .field("log", &self.log)
            .field("session", &self.session)
            .field("password", &self.password)
            .field("ldap", &self.ldap)
            .finish()
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig").field("url", &self.url.as_deref().map(mask_url)).finish()
    }
}

impl fmt::Debug for PostgresqlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresqlConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("name", &self.name)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| MASK))
            .finish()
    }
}

impl fmt::Debug for EmailConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| MASK))
            .field("use_tls", &self.use_tls)
            .field("use_ssl", &self.use_ssl)
            .field("timeout", &self.timeout)
            .field("from", &self.from)
            .finish()
    }
}

impl Config {
    /// The database to open: `database.url`, else one built from
    /// `postgresql.*` when `postgresql.host` is set, else SQLite in `data_dir`.
    pub fn database_url(&self) -> String {
        if let Some(url) = &self.database.url {
            return url.clone();
        }
        if let Some(host) = &self.postgresql.host {
            return match self.postgresql.url(host) {
                Ok(url) => url.to_string(),
                // `load` has rejected such hosts; this only serves a Config
                // built by hand.
                Err(_) => format!("postgres://{host}:{}/{}", self.postgresql.port, self.postgresql.name),
            };
        }
        format!("sqlite://{}", self.data_dir.join("latchkey.db").display())
    }

    /// The effective configuration as TOML with every secret replaced by
    /// `********`, for `latchkey config check`.
    pub fn masked_toml(&self) -> String {
        let mut masked = self.clone();
        let mask = |secret: &mut Option<String>| {
            if secret.is_some() {
                *secret = Some(MASK.to_owned());
            }
        };
        mask(&mut masked.secret_key);
        mask(&mut masked.email.password);
        mask(&mut masked.postgresql.password);
        masked.database.url = Some(mask_url(&self.database_url()));
        toml::to_string(&masked).unwrap_or_else(|error| format!("# cannot render the configuration: {error}\n"))
    }
}

impl PostgresqlConfig {
    fn url(&self, host: &str) -> Result<Url, String> {
        let mut url = Url::parse("postgres://localhost").map_err(|e| e.to_string())?;
        if host.starts_with('/') {
            // A Unix socket directory: libpq and sqlx take it as `host=`.
            url.query_pairs_mut().append_pair("host", host);
        } else {
            let host = match host.parse::<IpAddr>() {
                Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
                _ => host.to_owned(),
            };
            url.set_host(Some(&host)).map_err(|_| format!("'{host}' is not a host name or IP address"))?;
        }
        let invalid = |_| "cannot be put into a URL".to_owned();
        url.set_port(Some(self.port)).map_err(invalid)?;
        url.set_username(&self.user).map_err(invalid)?;
        url.set_password(self.password.as_deref()).map_err(invalid)?;
        url.set_path(&format!("/{}", self.name));
        Ok(url)
    }
}

/// Replaces the password in a database URL (userinfo or `?password=`).
fn mask_url(raw: &str) -> String {
    let Ok(mut url) = Url::parse(raw) else {
        // Unparseable but possibly holding credentials: show nothing of it.
        return if raw.contains('@') { MASK.to_owned() } else { raw.to_owned() };
    };
    let in_query = url.query_pairs().any(|(k, _)| k == "password");
    if url.password().is_none() && !in_query {
        // Untouched, so a SQLite path is shown exactly as configured.
        return raw.to_owned();
    }
    if url.password().is_some() && url.set_password(Some(MASK)).is_err() {
        return MASK.to_owned();
    }
    if in_query {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "password" { MASK.to_owned() } else { v.into_owned() };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// A loaded configuration plus what the caller should log once logging is up.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// The configuration file that was read, if any.
    pub file: Option<PathBuf>,
    /// Log at WARN: unknown variables and keys, values that were adjusted.
    pub warnings: Vec<String>,
    /// Log at INFO: e.g. authentik settings that are accepted and ignored.
    pub notices: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {}: {error}", path.display())]
    ReadFile { path: PathBuf, error: std::io::Error },
    #[error("configuration file {} is not valid TOML: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("cannot read the file named by {var} ({}): {error}", path.display())]
    SecretFile { var: String, path: PathBuf, error: std::io::Error },
    #[error("both {var} and {var}_FILE are set; set only one of them")]
    Ambiguous { var: String },
    #[error("environment variable {0} is not valid UTF-8")]
    NotUnicode(String),
    #[error("invalid value for {key}: {reason}{}", origin.as_ref().map(|o| format!(" (set by {o})")).unwrap_or_default())]
    Invalid {
        key: String,
        reason: String,
        /// The variable or file that supplied the value, when known.
        origin: Option<String>,
    },
}

/// Loads the configuration from `file` (else `$LATCHKEY_CONFIG`, else
/// `./latchkey.toml` if present) and the process environment.
pub fn load(file: Option<&Path>) -> Result<Loaded, ConfigError> {
    let mut env = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let ours = name.starts_with(LATCHKEY_PREFIX) || name.starts_with(AUTHENTIK_PREFIX);
        match value.into_string() {
            Ok(value) => env.push((name.to_owned(), value)),
            Err(_) if ours => return Err(ConfigError::NotUnicode(name.to_owned())),
            Err(_) => {}
        }
    }
    load_from(file, Path::new(DEFAULT_FILE), env)
}

fn load_from(
    file: Option<&Path>,
    default_file: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigError> {
    let mut warnings = Vec::new();
    let mut notices = Vec::new();
    // Empty values count as unset: compose files often write `KEY=` or
    // `${KEY:-}` for "not configured".
    let env: BTreeMap<String, String> = env.into_iter().filter(|(_, v)| !v.is_empty()).collect();

    let path = match (file, env.get(CONFIG_ENV)) {
        (Some(path), _) => Some(path.to_path_buf()),
        (None, Some(path)) => Some(PathBuf::from(path)),
        (None, None) => default_file.is_file().then(|| default_file.to_path_buf()),
    };
    let mut figment = Figment::new();
    if let Some(path) = &path {
        let contents =
            std::fs::read_to_string(path).map_err(|error| ConfigError::ReadFile { path: path.clone(), error })?;
        // Parsed here first for a one-line syntax error and the key check.
        let table: toml::Table = toml::from_str(&contents)
            .map_err(|e| ConfigError::Syntax { path: path.clone(), message: toml_error(&contents, &e) })?;
        unknown_toml_keys(&table, "", path, &mut warnings);
        figment = figment.merge(Toml::string(&contents));
    }
    let env = scan_env(&env, &mut warnings, &mut notices)?;
    figment = figment.merge(env);

    let config: Config = figment.extract().map_err(|e| invalid_from_figment(e, path.as_deref()))?;
    validate(&config, &figment, path.as_deref())?;
    Ok(Loaded { config, file: path, warnings, notices })
}

fn toml_error(contents: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim().replace('\n', "; ");
    match error.span() {
        Some(span) => {
            let before = &contents[..span.start.min(contents.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("{message} at line {line}, column {column}")
        }
        None => message,
    }
}

fn unknown_toml_keys(table: &toml::Table, prefix: &str, path: &Path, warnings: &mut Vec<String>) {
    for (key, value) in table {
        let full = format!("{prefix}{key}");
        if KEYS.contains(&full.as_str()) {
            continue;
        }
        let section = format!("{full}.");
        match value {
            toml::Value::Table(inner) if KEYS.iter().any(|k| k.starts_with(&section)) => {
                unknown_toml_keys(inner, &section, path, warnings);
            }
            _ => warnings.push(format!("unknown key {full} in {} is ignored", path.display())),
        }
    }
}

/// The environment layer: key → (variable that set it, raw value).
struct EnvLayer {
    values: BTreeMap<&'static str, (String, String)>,
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        let names: BTreeMap<String, String> =
            self.values.iter().map(|(key, (var, _))| ((*key).to_owned(), var.clone())).collect();
        // Lets error messages name the variable instead of the key path.
        Metadata::named(ENV_PROVIDER).interpolater(move |_, keys: &[&str]| {
            let key = keys.join(".");
            names.get(&key).cloned().unwrap_or(key)
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut root = Dict::new();
        for (key, (_, value)) in &self.values {
            insert_nested(&mut root, key, Value::from(value.as_str()));
        }
        Ok(Profile::Default.collect(root))
    }
}

fn insert_nested(dict: &mut Dict, key: &str, value: Value) {
    match key.split_once('.') {
        None => {
            dict.insert(key.to_owned(), value);
        }
        Some((section, rest)) => {
            let entry = dict.entry(section.to_owned()).or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert_nested(inner, rest, value);
            }
        }
    }
}

fn env_name(key: &str) -> String {
    format!("{LATCHKEY_PREFIX}{}", key.replace('.', "__").to_ascii_uppercase())
}

fn key_for_env(suffix: &str) -> Option<&'static str> {
    KEYS.iter().find(|key| key.replace('.', "__").eq_ignore_ascii_case(suffix)).copied()
}

fn read_secret_file(var: &str, path: &str) -> Result<String, ConfigError> {
    let mut value = std::fs::read_to_string(path).map_err(|error| ConfigError::SecretFile {
        var: var.to_owned(),
        path: PathBuf::from(path),
        error,
    })?;
    // Files written by editors and `echo` end in a newline that is not part
    // of the secret.
    while value.ends_with('\n') || value.ends_with('\r') {
        value.pop();
    }
    Ok(value)
}

fn scan_env(
    env: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
    notices: &mut Vec<String>,
) -> Result<EnvLayer, ConfigError> {
    let mut values = BTreeMap::new();

    // authentik first so that LATCHKEY_ overwrites it.
    let mut redis = false;
    let mut ignored = Vec::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(AUTHENTIK_PREFIX) else {
            continue;
        };
        if rest.starts_with("REDIS__") {
            redis = true;
            continue;
        }
        let Some(key) = AUTHENTIK_ALIASES.iter().find(|(alias, _)| *alias == rest).map(|(_, key)| *key) else {
            ignored.push(name.clone());
            continue;
        };
        let value = authentik_value(name, value, env)?;
        let Some(value) = adapt_authentik(key, name, value, warnings) else {
            continue;
        };
        values.insert(key, (name.clone(), value));
    }
    if redis {
        notices.push(
            "AUTHENTIK_REDIS__* settings are ignored: Redis is not needed, Latchkey keeps \
             sessions, caches and jobs in its own database and memory"
                .to_owned(),
        );
    }
    if !ignored.is_empty() {
        notices.push(format!("authentik settings without a meaning in Latchkey are ignored: {}", ignored.join(", ")));
    }

    for (name, value) in env {
        let Some(rest) = name.strip_prefix(LATCHKEY_PREFIX) else {
            continue;
        };
        // LATCHKEY_TEST_* belong to the test suites, not to the server.
        if name == CONFIG_ENV || rest.starts_with("TEST_") {
            continue;
        }
        if let Some(key) = key_for_env(rest) {
            if env.contains_key(&format!("{name}_FILE")) {
                return Err(ConfigError::Ambiguous { var: name.clone() });
            }
            values.insert(key, (name.clone(), value.clone()));
        } else if let Some(key) = rest.strip_suffix("_FILE").and_then(key_for_env) {
            values.insert(key, (name.clone(), read_secret_file(name, value)?));
        } else {
            warnings.push(unknown_var_warning(name));
        }
    }
    Ok(EnvLayer { values })
}

fn unknown_var_warning(name: &str) -> String {
    // The usual slip is a single underscore where nesting needs two.
    let suggestion =
        KEYS.iter().map(|key| env_name(key)).find(|known| known.replace("__", "_") == name.replace("__", "_"));
    match suggestion {
        Some(known) => format!("unknown environment variable {name} is ignored; did you mean {known}?"),
        None => format!("unknown environment variable {name} is ignored"),
    }
}

/// authentik reads `file://PATH` and `env://NAME` values; honour them so an
/// authentik env file works unchanged.
fn authentik_value(name: &str, value: &str, env: &BTreeMap<String, String>) -> Result<String, ConfigError> {
    if let Some(path) = value.strip_prefix("file://") {
        return read_secret_file(name, path);
    }
    if let Some(other) = value.strip_prefix("env://") {
        return Ok(env.get(other).cloned().unwrap_or_default());
    }
    Ok(value.to_owned())
}

/// Maps authentik values whose form differs from ours; `None` drops the value.
fn adapt_authentik(key: &str, name: &str, value: String, warnings: &mut Vec<String>) -> Option<String> {
    match key {
        // authentik takes a fallback list ("gravatar,initials") and also
        // attribute paths and URL templates; we keep the first mode we have.
        "avatars" => {
            let chosen =
                value.split(',').find(|mode| mode.parse::<Avatars>().is_ok()).map(|mode| mode.trim().to_owned());
            if chosen.is_none() {
                warnings.push(format!(
                    "{name}='{value}' names no avatar mode Latchkey supports (none, initials, gravatar); using the default"
                ));
            }
            chosen
        }
        // Newer authentik versions accept several listen addresses.
        "listen.http" | "listen.https" | "listen.ldap" | "listen.ldaps" | "listen.metrics" if value.contains(',') => {
            let first = value.split(',').next().unwrap_or_default().trim().to_owned();
            warnings.push(format!(
                "{name} lists several addresses but Latchkey listens on one per protocol; using {first}"
            ));
            Some(first)
        }
        _ => Some(value),
    }
}

fn invalid_from_figment(error: figment::Error, file: Option<&Path>) -> ConfigError {
    use figment::error::{Actual, Kind};

    let key = error.path.join(".");
    let found = |actual: &Actual| match actual {
        Actual::Map => "a table".to_owned(),
        Actual::Seq => "a list".to_owned(),
        Actual::Str(s) => format!("'{s}'"),
        other => other.to_string(),
    };
    let reason = match &error.kind {
        Kind::Message(message) => message.clone(),
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            format!("expected {expected}, found {}", found(actual))
        }
        Kind::UnknownVariant(actual, expected) => {
            format!("'{actual}' is not one of {}", expected.join(", "))
        }
        other => other.to_string(),
    };
    let origin = error.metadata.as_ref().and_then(|metadata| origin_of(metadata, &error.path, file));
    ConfigError::Invalid { key, reason, origin }
}

fn origin_of(metadata: &Metadata, path: &[String], file: Option<&Path>) -> Option<String> {
    if metadata.name == ENV_PROVIDER {
        Some(metadata.interpolate(&Profile::Default, path))
    } else {
        file.map(|f| f.display().to_string())
    }
}

/// Checks that span several keys or that serde cannot express.
fn validate(config: &Config, figment: &Figment, file: Option<&Path>) -> Result<(), ConfigError> {
    let invalid = |key: &str, reason: String| {
        let path: Vec<String> = key.split('.').map(str::to_owned).collect();
        ConfigError::Invalid {
            key: key.to_owned(),
            reason,
            origin: figment.find_metadata(key).and_then(|m| origin_of(m, &path, file)),
        }
    };

    if config.email.use_tls && config.email.use_ssl {
        return Err(invalid(
            "email.use_ssl",
            "email.use_tls (STARTTLS) and email.use_ssl (implicit TLS) cannot both be true".into(),
        ));
    }
    if !config.email.from.contains('@') {
        return Err(invalid("email.from", format!("'{}' is not an email address", config.email.from)));
    }
    if let Some(domain) = &config.cookie_domain {
        if domain.contains(['/', ':', ' ', ';', ',']) {
            return Err(invalid("cookie_domain", format!("'{domain}' is not a domain name such as example.com")));
        }
    }
    if let Some(url) = &config.database.url {
        let supported = ["sqlite:", "postgres://", "postgresql://"];
        if !supported.iter().any(|scheme| url.starts_with(scheme)) {
            return Err(invalid("database.url", format!("'{}' is not a sqlite:// or postgres:// URL", mask_url(url))));
        }
    } else if let Some(host) = &config.postgresql.host {
        if let Err(reason) = config.postgresql.url(host) {
            return Err(invalid("postgresql.host", reason));
        }
    }
    if config.ldap.max_connections < 1 {
        return Err(invalid("ldap.max_connections", "'0' must be at least 1".into()));
    }
    let password = &config.password;
    if password.argon2_iterations < 1 {
        return Err(invalid("password.argon2_iterations", "'0' must be at least 1".into()));
    }
    if !(1..=0xFF_FFFF).contains(&password.argon2_parallelism) {
        return Err(invalid(
            "password.argon2_parallelism",
            format!("'{}' must be between 1 and 16777215", password.argon2_parallelism),
        ));
    }
    // argon2 needs at least 8 KiB per lane.
    let minimum = 8 * password.argon2_parallelism;
    if password.argon2_memory_kib < minimum {
        return Err(invalid(
            "password.argon2_memory_kib",
            format!("'{}' must be at least {minimum} (8 KiB per lane)", password.argon2_memory_kib),
        ));
    }
    Ok(())
}

/// Lenient deserializers: every value may arrive as a string from the
/// environment or as a typed TOML value, and every error names the value.
mod de {
    use super::*;
    use serde::de::{Error, SeqAccess, Visitor};

    pub(super) fn scalar<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }

    struct ScalarVisitor;

    impl<'de> Visitor<'de> for ScalarVisitor {
        type Value = String;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string, number or boolean")
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_string<E: Error>(self, v: String) -> Result<String, E> {
            Ok(v)
        }
        fn visit_char<E: Error>(self, v: char) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_bool<E: Error>(self, v: bool) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i128<E: Error>(self, v: i128) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u128<E: Error>(self, v: u128) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_f64<E: Error>(self, v: f64) -> Result<String, E> {
            Ok(v.to_string())
        }
    }

    struct Scalar(String);

    impl<'de> Deserialize<'de> for Scalar {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            scalar(d).map(Scalar)
        }
    }

    pub(super) fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let value = scalar(d)?;
        if value.trim().is_empty() {
            return Err(D::Error::custom("the value must not be empty"));
        }
        Ok(value)
    }

    pub(super) fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(Some(scalar(d)?).filter(|v| !v.is_empty()))
    }

    pub(super) fn path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        string(d).map(PathBuf::from)
    }

    pub(super) fn opt_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Url>, D::Error> {
        let value = scalar(d)?;
        if value.is_empty() {
            return Ok(None);
        }
        let url = Url::parse(&value).map_err(|e| D::Error::custom(format!("'{value}' is not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(D::Error::custom(format!("'{value}' is not an http:// or https:// URL")));
        }
        Ok(Some(url))
    }

    pub(super) fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let value = scalar(d)?;
        value
            .trim()
            .parse()
            .map_err(|_| D::Error::custom(format!("'{value}' is not a socket address such as 0.0.0.0:9000")))
    }

    pub(super) fn port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
        let value = scalar(d)?;
        match value.trim().parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(D::Error::custom(format!("'{value}' is not a port number (1-65535)"))),
        }
    }

    pub(super) fn uint<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let value = scalar(d)?;
        value
            .trim()
            .parse()
            .map_err(|_| D::Error::custom(format!("'{value}' is not a whole number between 0 and {}", u32::MAX)))
    }

    pub(super) fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        let value = scalar(d)?;
        match value.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err(D::Error::custom(format!("'{value}' is not true or false"))),
        }
    }

    /// Whole seconds or a humantime string ("90s", "24h", "14d").
    pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let value = scalar(d)?;
        let trimmed = value.trim();
        let parsed = match trimmed.parse::<u64>() {
            Ok(seconds) => Some(Duration::from_secs(seconds)),
            Err(_) => humantime::parse_duration(trimmed).ok(),
        };
        match parsed {
            Some(duration) if !duration.is_zero() => Ok(duration),
            Some(_) => Err(D::Error::custom(format!("'{value}' must be longer than zero"))),
            None => Err(D::Error::custom(format!("'{value}' is not a duration such as 90s, 24h or 14d"))),
        }
    }

    pub(super) fn cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        d.deserialize_any(CidrsVisitor)
    }

    struct CidrsVisitor;

    impl<'de> Visitor<'de> for CidrsVisitor {
        type Value = Vec<IpNet>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of IP networks or a comma-separated string")
        }

        fn visit_str<E: Error>(self, v: &str) -> Result<Vec<IpNet>, E> {
            v.split(',').map(str::trim).filter(|item| !item.is_empty()).map(parse_net).collect()
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<IpNet>, A::Error> {
            let mut nets = Vec::new();
            while let Some(Scalar(item)) = seq.next_element()? {
                nets.push(parse_net(item.trim())?);
            }
            Ok(nets)
        }
    }

    /// A bare address means that single host.
    fn parse_net<E: Error>(item: &str) -> Result<IpNet, E> {
        item.parse::<IpNet>()
            .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| E::custom(format!("'{item}' is not an IP network such as 10.0.0.0/8")))
    }

    /// Accepts authentik's `warning` and any `EnvFilter` directive list.
    pub(super) fn log_level<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let value = scalar(d)?;
        let trimmed = value.trim();
        let simple = trimmed.to_ascii_lowercase();
        match simple.as_str() {
            "off" | "error" | "warn" | "info" | "debug" | "trace" => return Ok(simple),
            "warning" => return Ok("warn".into()),
            _ => {}
        }
        // A bare word would otherwise parse as a target name and silently
        // log nothing useful.
        if !trimmed.contains(['=', ',']) {
            return Err(D::Error::custom(format!(
                "'{value}' is not a log level (error, warn, info, debug, trace) or a filter such as info,latchkey=debug"
            )));
        }
        tracing_subscriber::EnvFilter::builder()
            .parse(trimmed)
            .map(|_| trimmed.to_owned())
            .map_err(|e| D::Error::custom(format!("'{value}' is not a valid log filter ({e})")))
    }
}

mod ser {
    use super::*;

    pub(super) fn opt_url<S: Serializer>(url: &Option<Url>, s: S) -> Result<S::Ok, S::Error> {
        match url {
            Some(url) => s.serialize_str(url.as_str()),
            None => s.serialize_none(),
        }
    }

    /// In the largest whole unit ("1d", "90s") so it reads as a person would write it.
    pub(super) fn duration<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
        let secs = duration.as_secs();
        let text = if duration.subsec_nanos() != 0 {
            humantime::format_duration(*duration).to_string()
        } else if secs.is_multiple_of(86400) {
            format!("{}d", secs / 86400)
        } else if secs.is_multiple_of(3600) {
            format!("{}h", secs / 3600)
        } else if secs.is_multiple_of(60) {
            format!("{}m", secs / 60)
        } else {
            format!("{secs}s")
        };
        s.serialize_str(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn nowhere() -> PathBuf {
        PathBuf::from("/nonexistent/latchkey.toml")
    }

    fn load_env(pairs: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        load_from(None, &nowhere(), env(pairs))
    }

    fn write(dir: &tempfile::TempDir, name: &str, contents: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).expect("write test file");
        path
    }

    #[test]
    fn defaults() {
        let loaded = load_env(&[]).expect("load");
        let c = &loaded.config;
        assert!(loaded.file.is_none());
        assert!(loaded.warnings.is_empty() && loaded.notices.is_empty());
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.database_url(), "sqlite://./data/latchkey.db");
        assert_eq!(c.listen.http.to_string(), "0.0.0.0:9000");
        assert_eq!(c.listen.https.to_string(), "0.0.0.0:9443");
        assert_eq!(c.listen.ldap.to_string(), "0.0.0.0:3389");
        assert_eq!(c.listen.ldaps.to_string(), "0.0.0.0:6636");
        assert_eq!(c.listen.metrics.to_string(), "0.0.0.0:9300");
        assert_eq!(c.listen.trusted_proxy_cidrs.len(), 6);
        assert_eq!(c.email.port, 25);
        assert_eq!(c.email.timeout, Duration::from_secs(10));
        assert_eq!(c.email.from, "latchkey@localhost");
        assert_eq!(c.avatars, Avatars::Initials);
        assert_eq!(c.log.level, "info");
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.session.idle_timeout, Duration::from_secs(86400));
        assert_eq!(c.session.lifetime, Duration::from_secs(14 * 86400));
        assert_eq!(c.password.argon2_memory_kib, 19456);
        assert_eq!(c.password.argon2_iterations, 2);
        assert_eq!(c.password.argon2_parallelism, 1);
        assert_eq!(c.postgresql.port, 5432);
    }

    #[test]
    fn precedence_defaults_file_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(
            &dir,
            "c.toml",
            "data_dir = \"/srv/lk\"\n[email]\nhost = \"file.example\"\nport = 587\n[log]\nformat = \"json\"\n",
        );
        let loaded = load_from(Some(&file), &nowhere(), env(&[("LATCHKEY_EMAIL__HOST", "env.example")])).expect("load");
        let c = &loaded.config;
        assert_eq!(loaded.file.as_deref(), Some(file.as_path()));
        assert_eq!(c.email.host.as_deref(), Some("env.example")); // env > file
        assert_eq!(c.email.port, 587); // file > default
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.data_dir, PathBuf::from("/srv/lk"));
        assert_eq!(c.email.from, "latchkey@localhost"); // default
        assert_eq!(c.database_url(), "sqlite:///srv/lk/latchkey.db");
    }

    #[test]
    fn default_file_is_used_when_present() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(&dir, "latchkey.toml", "avatars = \"gravatar\"\n");
        let loaded = load_from(None, &file, env(&[])).expect("load");
        assert_eq!(loaded.config.avatars, Avatars::Gravatar);
        assert_eq!(loaded.file, Some(file));
    }

    #[test]
    fn config_file_from_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let named = write(&dir, "named.toml", "avatars = \"none\"\n");
        let fallback = write(&dir, "latchkey.toml", "avatars = \"gravatar\"\n");
        let var = [("LATCHKEY_CONFIG", named.to_str().expect("utf-8"))];
        let loaded = load_from(None, &fallback, env(&var)).expect("load");
        assert_eq!(loaded.config.avatars, Avatars::None);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        // --config wins over the variable.
        let loaded = load_from(Some(&fallback), &nowhere(), env(&var)).expect("load");
        assert_eq!(loaded.config.avatars, Avatars::Gravatar);
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let err = load_from(Some(Path::new("/nonexistent/x.toml")), &nowhere(), env(&[])).expect_err("must fail");
        assert!(err.to_string().starts_with("cannot read configuration file /nonexistent/x.toml: "));
    }

    #[test]
    fn toml_syntax_error_is_one_line_with_position() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(&dir, "c.toml", "data_dir = \"x\"\navatars = = 3\n");
        let err = load_from(Some(&file), &nowhere(), env(&[])).expect_err("must fail");
        let text = err.to_string();
        assert!(text.contains("is not valid TOML"), "{text}");
        assert!(text.ends_with("at line 2, column 11"), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }

    #[test]
    fn env_nesting_and_types() {
        let loaded = load_env(&[
            ("LATCHKEY_EMAIL__HOST", "smtp.example"),
            ("LATCHKEY_EMAIL__PORT", "465"),
            ("LATCHKEY_EMAIL__USE_SSL", "true"),
            ("LATCHKEY_EMAIL__TIMEOUT", "30"),
            ("LATCHKEY_LISTEN__HTTP", "127.0.0.1:8000"),
            ("LATCHKEY_LISTEN__TRUSTED_PROXY_CIDRS", "10.1.0.0/16, 192.0.2.7"),
            ("LATCHKEY_DATABASE__URL", "postgres://u:p@db/lk"),
            ("LATCHKEY_SESSION__LIFETIME", "7d"),
            ("LATCHKEY_LOG__LEVEL", "info,latchkey=debug"),
            ("LATCHKEY_PASSWORD__ARGON2_MEMORY_KIB", "65536"),
            ("LATCHKEY_EXTERNAL_URL", "https://auth.example.com"),
        ])
        .expect("load");
        let c = &loaded.config;
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert_eq!(c.email.host.as_deref(), Some("smtp.example"));
        assert_eq!(c.email.port, 465);
        assert!(c.email.use_ssl);
        assert_eq!(c.email.timeout, Duration::from_secs(30));
        assert_eq!(c.listen.http.to_string(), "127.0.0.1:8000");
        let cidrs: Vec<String> = c.listen.trusted_proxy_cidrs.iter().map(ToString::to_string).collect();
        assert_eq!(cidrs, ["10.1.0.0/16", "192.0.2.7/32"]);
        assert_eq!(c.database_url(), "postgres://u:p@db/lk");
        assert_eq!(c.session.lifetime, Duration::from_secs(7 * 86400));
        assert_eq!(c.log.level, "info,latchkey=debug");
        assert_eq!(c.password.argon2_memory_kib, 65536);
        assert_eq!(c.external_url.as_ref().map(Url::as_str), Some("https://auth.example.com/"));
    }

    #[test]
    fn empty_env_values_count_as_unset() {
        let loaded = load_env(&[("LATCHKEY_EMAIL__HOST", ""), ("LATCHKEY_EMAIL__PORT", "")]).expect("load");
        assert_eq!(loaded.config.email.host, None);
        assert_eq!(loaded.config.email.port, 25);
    }

    #[test]
    fn file_variants_read_secrets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = write(&dir, "key", "s3cret-key\n");
        let mail = write(&dir, "mail", "mail pass\r\n");
        let pg = write(&dir, "pg", "pg:pass");
        let loaded = load_env(&[
            ("LATCHKEY_SECRET_KEY_FILE", key.to_str().expect("utf-8")),
            ("LATCHKEY_EMAIL__PASSWORD_FILE", mail.to_str().expect("utf-8")),
            ("LATCHKEY_POSTGRESQL__PASSWORD_FILE", pg.to_str().expect("utf-8")),
        ])
        .expect("load");
        let c = &loaded.config;
        assert_eq!(c.secret_key.as_deref(), Some("s3cret-key"));
        assert_eq!(c.email.password.as_deref(), Some("mail pass"));
        assert_eq!(c.postgresql.password.as_deref(), Some("pg:pass"));
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }

    #[test]
    fn file_variant_errors() {
        let err = load_env(&[("LATCHKEY_SECRET_KEY_FILE", "/nonexistent/secret")]).expect_err("must fail");
        assert!(err
            .to_string()
            .starts_with("cannot read the file named by LATCHKEY_SECRET_KEY_FILE (/nonexistent/secret): "));
        let err = load_env(&[("LATCHKEY_SECRET_KEY", "a"), ("LATCHKEY_SECRET_KEY_FILE", "/nonexistent/secret")])
            .expect_err("must fail");
        assert_eq!(
            err.to_string(),
            "both LATCHKEY_SECRET_KEY and LATCHKEY_SECRET_KEY_FILE are set; set only one of them"
        );
    }

    #[test]
    fn authentik_aliases() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pw = write(&dir, "pw", "from-file\n");
        let file_uri = format!("file://{}", pw.display());
        let loaded = load_env(&[
            ("AUTHENTIK_SECRET_KEY", "ak-secret"),
            ("AUTHENTIK_POSTGRESQL__HOST", "db"),
            ("AUTHENTIK_POSTGRESQL__PORT", "5433"),
            ("AUTHENTIK_POSTGRESQL__NAME", "authentik"),
            ("AUTHENTIK_POSTGRESQL__USER", "authentik"),
            ("AUTHENTIK_POSTGRESQL__PASSWORD", &file_uri),
            ("AUTHENTIK_EMAIL__HOST", "smtp.example"),
            ("AUTHENTIK_EMAIL__USE_TLS", "true"),
            ("AUTHENTIK_AVATARS", "gravatar,initials"),
            ("AUTHENTIK_LOG_LEVEL", "warning"),
            ("AUTHENTIK_LISTEN__HTTP", "0.0.0.0:9001"),
            ("AUTHENTIK_LISTEN__METRICS", "0.0.0.0:9301"),
            ("AUTHENTIK_LISTEN__TRUSTED_PROXY_CIDRS", "172.16.0.0/12"),
        ])
        .expect("load");
        let c = &loaded.config;
        assert_eq!(c.secret_key.as_deref(), Some("ak-secret"));
        assert_eq!(c.database_url(), "postgres://authentik:from-file@db:5433/authentik");
        assert_eq!(c.email.host.as_deref(), Some("smtp.example"));
        assert!(c.email.use_tls);
        assert_eq!(c.avatars, Avatars::Gravatar);
        assert_eq!(c.log.level, "warn");
        assert_eq!(c.listen.http.to_string(), "0.0.0.0:9001");
        assert_eq!(c.listen.metrics.to_string(), "0.0.0.0:9301");
        assert_eq!(c.listen.trusted_proxy_cidrs.len(), 1);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }

    #[test]
    fn latchkey_wins_over_authentik() {
        let loaded = load_env(&[
            ("AUTHENTIK_SECRET_KEY", "ak"),
            ("LATCHKEY_SECRET_KEY", "lk"),
            ("AUTHENTIK_LISTEN__HTTP", "0.0.0.0:1"),
            ("LATCHKEY_LISTEN__HTTP", "0.0.0.0:2"),
            ("AUTHENTIK_EMAIL__PORT", "587"),
        ])
        .expect("load");
        assert_eq!(loaded.config.secret_key.as_deref(), Some("lk"));
        assert_eq!(loaded.config.listen.http.port(), 2);
        assert_eq!(loaded.config.email.port, 587);
    }

    #[test]
    fn redis_notice_once_and_other_authentik_ignored() {
        let loaded = load_env(&[
            ("AUTHENTIK_REDIS__HOST", "redis"),
            ("AUTHENTIK_REDIS__PORT", "6379"),
            ("AUTHENTIK_ERROR_REPORTING__ENABLED", "false"),
        ])
        .expect("load");
        let redis: Vec<_> = loaded.notices.iter().filter(|n| n.contains("Redis is not needed")).collect();
        assert_eq!(redis.len(), 1, "{:?}", loaded.notices);
        assert!(loaded.notices.iter().any(|n| n.contains("AUTHENTIK_ERROR_REPORTING__ENABLED")));
        assert!(loaded.warnings.is_empty());
    }

    #[test]
    fn unknown_latchkey_variables_warn() {
        let loaded =
            load_env(&[("LATCHKEY_FROBNICATE", "1"), ("LATCHKEY_EMAIL_HOST", "x"), ("OTHER_VAR", "1")]).expect("load");
        assert_eq!(loaded.warnings.len(), 2, "{:?}", loaded.warnings);
        assert!(loaded.warnings.contains(&"unknown environment variable LATCHKEY_FROBNICATE is ignored".to_owned()));
        assert!(loaded.warnings.contains(
            &"unknown environment variable LATCHKEY_EMAIL_HOST is ignored; did you mean LATCHKEY_EMAIL__HOST?"
                .to_owned()
        ));
    }

    #[test]
    fn unknown_file_keys_warn() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(&dir, "c.toml", "colour = \"red\"\n[email]\nhots = \"x\"\n[listen]\nhttp = \"127.0.0.1:1\"\n");
        let loaded = load_from(Some(&file), &nowhere(), env(&[])).expect("load");
        assert_eq!(loaded.warnings.len(), 2, "{:?}", loaded.warnings);
        assert!(loaded.warnings[0].starts_with("unknown key colour in "));
        assert!(loaded.warnings[1].starts_with("unknown key email.hots in "));
    }

    #[test]
    fn invalid_env_value_names_key_value_and_variable() {
        let err = load_env(&[("LATCHKEY_LISTEN__HTTP", "abc")]).expect_err("must fail");
        assert_eq!(
            err.to_string(),
            "invalid value for listen.http: 'abc' is not a socket address such as 0.0.0.0:9000 (set by LATCHKEY_LISTEN__HTTP)"
        );
        let err = load_env(&[("LATCHKEY_EMAIL__PORT", "seventy")]).expect_err("must fail");
        assert_eq!(
            err.to_string(),
            "invalid value for email.port: 'seventy' is not a port number (1-65535) (set by LATCHKEY_EMAIL__PORT)"
        );
        let err = load_env(&[("AUTHENTIK_EMAIL__USE_TLS", "maybe")]).expect_err("must fail");
        assert_eq!(
            err.to_string(),
            "invalid value for email.use_tls: 'maybe' is not true or false (set by AUTHENTIK_EMAIL__USE_TLS)"
        );
    }

    #[test]
    fn invalid_values_name_key_and_value() {
        let cases = [
            ("LATCHKEY_AVATARS", "robohash", "avatars", "'robohash'"),
            ("LATCHKEY_LOG__FORMAT", "xml", "log.format", "'xml'"),
            ("LATCHKEY_LOG__LEVEL", "loud", "log.level", "'loud'"),
            ("LATCHKEY_SESSION__LIFETIME", "forever", "session.lifetime", "'forever'"),
            ("LATCHKEY_SESSION__IDLE_TIMEOUT", "0", "session.idle_timeout", "'0'"),
            ("LATCHKEY_EXTERNAL_URL", "ftp://x", "external_url", "'ftp://x'"),
            ("LATCHKEY_EXTERNAL_URL", "auth.example", "external_url", "'auth.example'"),
            ("LATCHKEY_LISTEN__TRUSTED_PROXY_CIDRS", "10.0.0.0/8,lan", "listen.trusted_proxy_cidrs", "'lan'"),
            ("LATCHKEY_PASSWORD__ARGON2_ITERATIONS", "-1", "password.argon2_iterations", "'-1'"),
            ("LATCHKEY_PASSWORD__ARGON2_ITERATIONS", "0", "password.argon2_iterations", "'0'"),
            ("LATCHKEY_EMAIL__FROM", "nobody", "email.from", "'nobody'"),
            ("LATCHKEY_COOKIE_DOMAIN", "https://x.example", "cookie_domain", "'https://x.example'"),
        ];
        for (var, value, key, shown) in cases {
            let err = load_env(&[(var, value)]).expect_err(var);
            let text = err.to_string();
            assert!(text.starts_with(&format!("invalid value for {key}: {shown}")), "{text}");
            assert!(text.ends_with(&format!("(set by {var})")), "{text}");
            assert!(!text.contains('\n'));
        }
    }

    #[test]
    fn invalid_file_value_names_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(&dir, "c.toml", "[email]\nport = 70000\n");
        let err = load_from(Some(&file), &nowhere(), env(&[])).expect_err("must fail");
        assert_eq!(
            err.to_string(),
            format!("invalid value for email.port: '70000' is not a port number (1-65535) (set by {})", file.display())
        );
        let file = write(&dir, "d.toml", "email = 5\n");
        let err = load_from(Some(&file), &nowhere(), env(&[])).expect_err("must fail");
        assert!(err.to_string().starts_with("invalid value for email: "), "{err}");
    }

    #[test]
    fn tls_and_ssl_conflict() {
        let err = load_env(&[("LATCHKEY_EMAIL__USE_TLS", "true"), ("LATCHKEY_EMAIL__USE_SSL", "true")])
            .expect_err("must fail");
        assert!(err.to_string().starts_with("invalid value for email.use_ssl: "));
    }

    #[test]
    fn invalid_database_url_is_masked() {
        let err = load_env(&[("LATCHKEY_DATABASE__URL", "mysql://root:hunter2@db/x")]).expect_err("must fail");
        let text = err.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("mysql://root:********@db/x"), "{text}");
    }

    #[test]
    fn toml_typed_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(
            &dir,
            "c.toml",
            "secret_key = 12345\n[email]\nuse_tls = true\ntimeout = \"1m\"\n[listen]\ntrusted_proxy_cidrs = [\"10.0.0.0/8\"]\n[session]\nidle_timeout = 3600\n",
        );
        let c = load_from(Some(&file), &nowhere(), env(&[])).expect("load").config;
        assert_eq!(c.secret_key.as_deref(), Some("12345"));
        assert!(c.email.use_tls);
        assert_eq!(c.email.timeout, Duration::from_secs(60));
        assert_eq!(c.listen.trusted_proxy_cidrs.len(), 1);
        assert_eq!(c.session.idle_timeout, Duration::from_secs(3600));
    }

    #[test]
    fn postgres_url_building() {
        let mut c = Config::default();
        c.postgresql.host = Some("db.internal".into());
        c.postgresql.user = "lk user".into();
        c.postgresql.password = Some("p@ss:w/rd?#".into());
        assert_eq!(c.database_url(), "postgres://lk%20user:p%40ss%3Aw%2Frd%3F%23@db.internal:5432/latchkey");
        c.postgresql.host = Some("::1".into());
        c.postgresql.password = None;
        c.postgresql.user = "u".into();
        assert_eq!(c.database_url(), "postgres://u@[::1]:5432/latchkey");
        c.postgresql.host = Some("/run/postgresql".into());
        assert_eq!(c.database_url(), "postgres://u@localhost:5432/latchkey?host=%2Frun%2Fpostgresql");
        // An explicit URL wins over postgresql.*.
        c.database.url = Some("sqlite:///x.db".into());
        assert_eq!(c.database_url(), "sqlite:///x.db");
        // The built URL parses back to the same credentials.
        c.database.url = None;
        c.postgresql.host = Some("db".into());
        c.postgresql.password = Some("p@ss:w/rd".into());
        let url = Url::parse(&c.database_url()).expect("url");
        assert_eq!(url.password(), Some("p%40ss%3Aw%2Frd"));
    }

    #[test]
    fn masking() {
        let mut c = Config { secret_key: Some("topsecret".into()), ..Config::default() };
        c.email.password = Some("mailsecret".into());
        c.email.host = Some("smtp.example".into());
        c.postgresql.host = Some("db".into());
        c.postgresql.password = Some("pgsecret".into());
        let text = c.masked_toml();
        for secret in ["topsecret", "mailsecret", "pgsecret"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(text.contains("secret_key = \"********\""), "{text}");
        assert!(text.contains("url = \"postgres://latchkey:********@db:5432/latchkey\""), "{text}");
        assert!(text.contains("idle_timeout = \"1d\""), "{text}");
        assert!(text.contains("lifetime = \"14d\""), "{text}");
        let debug = format!("{c:?}");
        for secret in ["topsecret", "mailsecret", "pgsecret"] {
            assert!(!debug.contains(secret), "{debug}");
        }

        c.database.url = Some("postgres://u:dbsecret@h/x?sslmode=require&password=q".into());
        let text = c.masked_toml();
        assert!(!text.contains("dbsecret") && !text.contains("password=q"), "{text}");
        assert_eq!(mask_url("sqlite://./my data/latchkey.db"), "sqlite://./my data/latchkey.db");
        assert!(text.contains("sslmode=require"), "{text}");
    }

    #[test]
    fn masked_toml_round_trips() {
        let mut c = Config {
            external_url: Some(Url::parse("https://auth.example.com").expect("url")),
            secret_key: Some("s".into()),
            ..Config::default()
        };
        c.email.host = Some("smtp.example".into());
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(&dir, "c.toml", &c.masked_toml());
        let loaded = load_from(Some(&file), &nowhere(), env(&[])).expect("reload");
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert_eq!(loaded.config.masked_toml(), c.masked_toml());
    }

    #[test]
    fn key_table_matches_struct() {
        // Every field, with every optional set, shows up as a KEYS entry.
        let mut c = Config {
            secret_key: Some("s".into()),
            external_url: Url::parse("https://x.example").ok(),
            cookie_domain: Some("example.com".into()),
            ..Config::default()
        };
        c.database.url = Some("sqlite://x".into());
        c.postgresql.host = Some("h".into());
        c.postgresql.password = Some("p".into());
        c.email.host = Some("h".into());
        c.email.username = Some("u".into());
        c.email.password = Some("p".into());
        let table: toml::Table = toml::from_str(&c.masked_toml()).expect("toml");
        let mut leaves = BTreeSet::new();
        for (key, value) in &table {
            match value {
                toml::Value::Table(inner) => {
                    for inner_key in inner.keys() {
                        leaves.insert(format!("{key}.{inner_key}"));
                    }
                }
                _ => {
                    leaves.insert(key.clone());
                }
            }
        }
        let keys: BTreeSet<String> = KEYS.iter().map(|k| (*k).to_owned()).collect();
        assert_eq!(leaves, keys);
    }
}
