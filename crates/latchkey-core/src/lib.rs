//! Latchkey's core: the domain model and the services every protocol adapter calls.
//! It knows no web framework, no LDAP codec and no SQL.

pub mod access;
pub mod access_rules;
pub mod app_passwords;
pub mod blueprint;
pub mod catalog;
pub mod clock;
pub mod console;
pub mod directory;
pub mod error;
pub mod events;
pub mod flow;
pub mod groups;
pub mod header_auth;
pub mod keys;
pub mod mail;
pub mod mfa;
pub mod model;
pub mod oauth;
pub mod objects;
pub mod password;
pub mod policy;
pub mod proxy;
pub mod redirect;
pub mod reputation;
pub mod sessions;
pub mod signing;
pub mod store;
pub mod system_settings;
pub mod throttle;
pub mod tokens;
pub mod user_cache;
pub mod version;

pub use error::{CoreError, Result, StoreError};

use std::sync::Arc;
use std::time::Duration;

use access::Access;
use clock::Clock;
use directory::Directory;
use events::Events;
use flow::{FlowEngine, FlowServices};
use groups::GroupIndex;
use keys::Keys;
use mail::Mailer;
use model::Change;
use password::{Argon2Settings, PasswordHasher};
use policy::Policies;
use reputation::ReputationBook;
use sessions::{SessionSettings, Sessions};
use store::Store;
use throttle::{Throttle, ThrottleLimits};
use tokens::Tokens;

/// How long expired tokens stay before housekeeping deletes them.
const EXPIRED_TOKEN_GRACE: chrono::TimeDelta = chrono::TimeDelta::days(1);

/// Tunables of the core services.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub argon2: Argon2Settings,
    /// At most this many password hashes at once.
    pub hash_threads: usize,
    pub sessions: SessionSettings,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            argon2: Argon2Settings::default(),
            hash_threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            sessions: SessionSettings::default(),
        }
    }
}

/// All core services, wired to one store. Adapters hold an `Arc<Core>`.
pub struct Core {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub keys: Keys,
    pub groups: GroupIndex,
    pub directory: Directory,
    pub sessions: Sessions,
    pub events: Events,
    pub tokens: Tokens,
    pub access: Access,
    /// The mail outbox.
    pub mailer: Mailer,
    pub flows: FlowEngine,
    /// Forward auth: proxy providers and their decisions.
    pub proxy: proxy::Proxy,
    /// The token signing key (forward-auth JWTs, OIDC).
    pub signing: signing::Signing,
    /// OAuth 2 / OpenID Connect provider.
    pub oauth: oauth::OAuth,
    /// Users and their policy views by id, in memory (forward auth, userinfo).
    pub users: user_cache::UserCache,
    /// Settings, applications and providers as the interfaces show them, in memory.
    pub catalog: catalog::Catalog,
    /// Second factors: TOTP, recovery codes.
    pub mfa: mfa::Mfa,
    /// Per-user secrets for non-browser clients of forward auth.
    pub app_passwords: app_passwords::AppPasswords,
    /// `Authorization` header credentials (app passwords, access tokens) for forward auth.
    pub header_auth: header_auth::HeaderAuth,
}

impl Core {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        master_secret: &[u8],
        config: CoreConfig,
    ) -> Result<Arc<Core>> {
        let keys = Keys::derive(master_secret);
        let hasher = PasswordHasher::new(config.argon2, config.hash_threads)?;
        let groups = GroupIndex::new(Arc::clone(&store));
        let events = Events::new(Arc::clone(&store), Arc::clone(&clock));
        let sessions =
            Sessions::new(Arc::clone(&store), Arc::clone(&clock), groups.clone(), keys.cookie.clone(), config.sessions);
        let directory = Directory::new(
            Arc::clone(&store),
            Arc::clone(&clock),
            hasher,
            groups.clone(),
            sessions.clone(),
            events.clone(),
        );
        let tokens = Tokens::new(Arc::clone(&store), Arc::clone(&clock), events.clone());
        let reputation = ReputationBook::new(Arc::clone(&store), Arc::clone(&clock));
        let access =
            Access::new(Policies::new(Arc::clone(&store)), groups.clone(), Arc::clone(&clock), reputation.clone());
        let users = user_cache::UserCache::new(Arc::clone(&store), access.clone());
        let catalog = catalog::Catalog::new(Arc::clone(&store));
        let proxy = proxy::Proxy::new(
            Arc::clone(&store),
            Arc::clone(&clock),
            access.clone(),
            keys.flow_state.clone(),
            keys.encryption.clone(),
            users.clone(),
        );
        let signing = signing::Signing::new(Arc::clone(&store), keys.encryption.clone(), Arc::clone(&clock));
        let oauth = oauth::OAuth::new(Arc::clone(&store), Arc::clone(&clock), signing.clone(), users.clone());
        let mailer = Mailer::new(Arc::clone(&store), Arc::clone(&clock));
        let mfa = mfa::Mfa::new(Arc::clone(&store), Arc::clone(&clock), events.clone(), &keys.encryption)?;
        let app_passwords = app_passwords::AppPasswords::new(Arc::clone(&store), Arc::clone(&clock), events.clone());
        let header_auth = header_auth::HeaderAuth::new(
            Arc::clone(&store),
            Arc::clone(&clock),
            app_passwords.clone(),
            oauth.clone(),
            Throttle::new(Arc::clone(&store), Arc::clone(&clock), ThrottleLimits::default()),
            events.clone(),
            groups.clone(),
        );
        let flows = FlowEngine::new(FlowServices {
            store: Arc::clone(&store),
            clock: Arc::clone(&clock),
            directory: directory.clone(),
            sessions: sessions.clone(),
            events: events.clone(),
            tokens: tokens.clone(),
            throttle: Throttle::new(Arc::clone(&store), Arc::clone(&clock), ThrottleLimits::default()),
            reputation,
            access: access.clone(),
            mailer: mailer.clone(),
            mfa: mfa.clone(),
            oauth: oauth.clone(),
        });
        Ok(Arc::new(Core {
            store,
            clock,
            keys,
            groups,
            directory,
            sessions,
            events,
            tokens,
            access,
            mailer,
            flows,
            proxy,
            signing,
            oauth,
            users,
            catalog,
            mfa,
            app_passwords,
            header_auth,
        }))
    }

    /// A configuration object (application, provider, outpost, flow, policy, setting) was
    /// written by this process: drop the caches built from them now. Other processes hear of
    /// it through the store's feed.
    pub fn config_changed(&self) {
        self.access.policies.invalidate();
        self.proxy.invalidate();
        self.oauth.invalidate();
        self.catalog.invalidate();
    }

    /// Creates the default group and flows where missing.
    pub async fn bootstrap(&self) -> Result<()> {
        flow::defaults::ensure_defaults(self.store.as_ref()).await
    }

    /// A fresh first-run link under `base_url`, or `None` once an administrator exists.
    pub async fn setup_link(&self, base_url: &str) -> Result<Option<String>> {
        if self.directory.admin_exists().await? {
            return Ok(None);
        }
        let token = self.tokens.create_setup_token().await?;
        Ok(Some(format!("{}/if/flow/initial-setup/?token={token}", base_url.trim_end_matches('/'))))
    }

    /// Keeps caches in step with changes made by any process sharing the store, and
    /// removes expired sessions and flow states now and then.
    pub fn spawn_background(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let core = Arc::clone(self);
        tokio::spawn(async move {
            let mut changes = core.store.subscribe();
            let mut housekeeping = tokio::time::interval(Duration::from_secs(600));
            loop {
                tokio::select! {
                    change = changes.recv() => match change {
                        Ok(change) => {
                            if change == Change::Config {
                                core.access.policies.invalidate();
                            }
                            core.sessions.apply_change(&change);
                            core.proxy.apply_change(&change);
                            core.oauth.apply_change(&change);
                            core.signing.apply_change(&change);
                            core.users.apply_change(&change);
                            core.catalog.apply_change(&change);
                            core.header_auth.apply_change(&change);
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            core.access.policies.invalidate();
                            core.sessions.clear();
                            core.proxy.invalidate();
                            core.oauth.invalidate();
                            core.signing.invalidate();
                            core.users.invalidate();
                            core.catalog.invalidate();
                            core.header_auth.invalidate();
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    _ = housekeeping.tick() => core.housekeeping().await,
                }
            }
        })
    }

    async fn housekeeping(&self) {
        if let Err(e) = self.sessions.purge_expired().await {
            tracing::warn!(error = %e, "could not purge expired sessions");
        }
        if let Err(e) = self.store.delete_expired_flow_states(self.clock.now()).await {
            tracing::warn!(error = %e, "could not purge expired flow states");
        }
        // Used codes and rotated refresh tokens are kept a day past their expiry: presented
        // again within it, they still reveal a replay (and end the family issued from them).
        match self.store.delete_expired_tokens(self.clock.now() - EXPIRED_TOKEN_GRACE).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(tokens = n, "purged expired tokens"),
            Err(e) => tracing::warn!(error = %e, "could not purge expired tokens"),
        }
    }
}
