//! Latchkey's LDAP server: the directory for applications that only speak LDAP.
//!
//! A thin adapter over `latchkey_core::Core`: binds check passwords through the directory
//! (with the web login's throttling), searches read an in-memory snapshot of the tree that
//! the store's change feed keeps fresh, and repeated binds are answered from a short-lived
//! cache of keyed hashes so argon2 is not paid on every bind.

pub mod dn;
pub mod filter;
pub mod schema;
pub mod tree;

mod conn;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use hmac::{Hmac, Mac};
use latchkey_core::model::Change;
use latchkey_core::Core;
use sha2::Sha256;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use uuid::Uuid;

use crate::tree::{Snapshot, TreeError};

/// How long a successful bind is remembered (authentik's cached bind mode).
pub const BIND_CACHE_TTL: Duration = Duration::from_secs(300);
/// A snapshot older than this is rebuilt in the background even without a change signal, in
/// case a change escaped the feed (a lagged receiver is handled, but this bounds the damage).
const SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(300);
/// A request that finds the snapshot stale waits for the rebuild only when rebuilds are this
/// quick (small directories get read-your-writes); large ones keep answering from the
/// previous snapshot while the next one is built in the background.
const WAIT_FOR_REBUILD_UNDER: Duration = Duration::from_millis(300);
/// Changes arriving together are folded into one rebuild.
const REBUILD_DEBOUNCE: Duration = Duration::from_millis(20);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

type HmacSha256 = Hmac<Sha256>;

/// Listener settings from the configuration (`ldap.*` keys).
#[derive(Debug, Clone)]
pub struct LdapSettings {
    /// How long a successful bind is remembered; zero turns the bind cache off.
    pub bind_cache_ttl: Duration,
    /// A connection that sends nothing for this long is closed; zero never closes one.
    pub idle_timeout: Duration,
    /// Open LDAP and LDAPS connections allowed together; more are refused at accept.
    pub max_connections: usize,
}

impl Default for LdapSettings {
    fn default() -> Self {
        LdapSettings { bind_cache_ttl: BIND_CACHE_TTL, idle_timeout: Duration::from_secs(300), max_connections: 1000 }
    }
}

/// State shared by every LDAP and LDAPS connection: the tree snapshot and the bind cache.
pub struct LdapService {
    core: Arc<Core>,
    shared: Arc<Shared>,
    settings: LdapSettings,
    connections: Arc<tokio::sync::Semaphore>,
}

struct Shared {
    snapshot: RwLock<Arc<Snapshot>>,
    /// Set until the first snapshot is built: requests must wait for that one.
    empty: AtomicBool,
    dirty: AtomicBool,
    rebuild: tokio::sync::Mutex<()>,
    /// How long the last rebuild took, in microseconds.
    last_build_micros: std::sync::atomic::AtomicU64,
    /// Wakes the background rebuilder.
    refresh: tokio::sync::Notify,
    bind_cache: moka::sync::Cache<[u8; 32], Uuid>,
    cache_key: [u8; 32],
}

impl Shared {
    fn invalidate_user(&self, id: Uuid) {
        // Only fails when closures are not enabled on the cache, which they are.
        let _ = self.bind_cache.invalidate_entries_if(move |_, v| *v == id);
    }
}

impl LdapService {
    /// Creates the service with default settings (needs a runtime).
    pub fn new(core: Arc<Core>) -> Arc<LdapService> {
        Self::with_settings(core, LdapSettings::default())
    }

    /// Creates the service and starts following the store's change feed (needs a runtime).
    pub fn with_settings(core: Arc<Core>, settings: LdapSettings) -> Arc<LdapService> {
        // A key of its own for the bind cache, derived from the master secret's encryption key,
        // so cache keys reveal nothing about passwords even in a memory dump of another purpose.
        let cache_key = hmac(core.keys.encryption.bytes(), &[b"latchkey/v1/ldap-bind-cache"]);
        let shared = Arc::new(Shared {
            snapshot: RwLock::new(Arc::new(Snapshot::empty())),
            empty: AtomicBool::new(true),
            dirty: AtomicBool::new(true),
            rebuild: tokio::sync::Mutex::new(()),
            last_build_micros: std::sync::atomic::AtomicU64::new(0),
            refresh: tokio::sync::Notify::new(),
            bind_cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                // moka refuses a zero TTL; a nanosecond is as good as off.
                .time_to_live(settings.bind_cache_ttl.max(Duration::from_nanos(1)))
                .support_invalidation_closures()
                .build(),
            cache_key,
        });
        tokio::spawn(follow_changes(core.store.subscribe(), Arc::downgrade(&shared)));
        tokio::spawn(keep_fresh(Arc::clone(&core), Arc::downgrade(&shared)));
        let connections = Arc::new(tokio::sync::Semaphore::new(settings.max_connections.max(1)));
        Arc::new(LdapService { core, shared, settings, connections })
    }

    pub fn settings(&self) -> &LdapSettings {
        &self.settings
    }

    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// The current tree. A stale one (the feed reported a change) is rebuilt first when
    /// rebuilds are quick; otherwise the background rebuilder is woken and the previous tree
    /// answers until the new one is ready.
    pub async fn snapshot(&self) -> Result<Arc<Snapshot>, TreeError> {
        let current = self.current();
        if !self.shared.dirty.load(Ordering::Acquire) && !self.shared.empty.load(Ordering::Acquire) {
            return Ok(current);
        }
        let quick = self.shared.last_build_micros.load(Ordering::Relaxed) < micros(WAIT_FOR_REBUILD_UNDER);
        if !self.shared.empty.load(Ordering::Acquire) && !quick {
            self.shared.refresh.notify_one();
            return Ok(current);
        }
        rebuild(&self.core, &self.shared).await
    }

    fn current(&self) -> Arc<Snapshot> {
        match self.shared.snapshot.read() {
            Ok(s) => Arc::clone(&s),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The bind-cache key of (canonical DN, password).
    fn cache_key(&self, ndn: &str, password: &str) -> [u8; 32] {
        hmac(&self.shared.cache_key, &[ndn.as_bytes(), &[0], password.as_bytes()])
    }

    fn cached_bind(&self, key: &[u8; 32]) -> Option<Uuid> {
        if self.settings.bind_cache_ttl.is_zero() {
            return None;
        }
        self.shared.bind_cache.get(key)
    }

    fn remember_bind(&self, key: [u8; 32], user: Uuid) {
        if !self.settings.bind_cache_ttl.is_zero() {
            self.shared.bind_cache.insert(key, user);
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Rebuilds the snapshot unless another caller just did; one rebuild runs at a time and the
/// callers waiting for it use its result.
async fn rebuild(core: &Core, shared: &Shared) -> Result<Arc<Snapshot>, TreeError> {
    let current = || match shared.snapshot.read() {
        Ok(s) => Arc::clone(&s),
        Err(poisoned) => Arc::clone(&poisoned.into_inner()),
    };
    let _guard = shared.rebuild.lock().await;
    if !shared.dirty.load(Ordering::Acquire) && !shared.empty.load(Ordering::Acquire) {
        return Ok(current());
    }
    // Cleared before reading so a change during the build marks it dirty again.
    shared.dirty.store(false, Ordering::Release);
    let started = std::time::Instant::now();
    match Snapshot::build(core).await {
        Ok(s) => {
            let s = Arc::new(s);
            if let Ok(mut slot) = shared.snapshot.write() {
                *slot = Arc::clone(&s);
            }
            shared.empty.store(false, Ordering::Release);
            let took = started.elapsed();
            shared.last_build_micros.store(micros(took), Ordering::Relaxed);
            tracing::debug!(entries = s.entries.len(), took_ms = took.as_millis() as u64, "LDAP snapshot built");
            Ok(s)
        }
        Err(e) => {
            shared.dirty.store(true, Ordering::Release);
            Err(e)
        }
    }
}

/// Rebuilds the snapshot off the request path: soon after a change, and periodically.
async fn keep_fresh(core: Arc<Core>, shared: Weak<Shared>) {
    loop {
        let Some(strong) = shared.upgrade() else { return };
        let woken = tokio::time::timeout(SNAPSHOT_MAX_AGE, strong.refresh.notified()).await.is_ok();
        if woken {
            tokio::time::sleep(REBUILD_DEBOUNCE).await;
        } else {
            strong.dirty.store(true, Ordering::Release);
        }
        if strong.dirty.load(Ordering::Acquire) {
            if let Err(error) = rebuild(&core, &strong).await {
                tracing::warn!(%error, "cannot rebuild the LDAP snapshot");
            }
        }
    }
}

/// HMAC-SHA256 with a 32-byte key. HMAC zero-pads keys to the block size, so padding here
/// gives the same MAC without the fallible variable-length constructor.
fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    let mut mac = <HmacSha256 as hmac::digest::KeyInit>::new(&block.into());
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

async fn follow_changes(mut changes: tokio::sync::broadcast::Receiver<Change>, shared: Weak<Shared>) {
    loop {
        let change = changes.recv().await;
        let Some(shared) = shared.upgrade() else { return };
        match change {
            Ok(Change::Session(_)) => {}
            Ok(Change::User(id)) => {
                shared.invalidate_user(id);
                shared.dirty.store(true, Ordering::Release);
                shared.refresh.notify_one();
            }
            Ok(Change::Groups) | Ok(Change::Config) | Err(RecvError::Lagged(_)) => {
                // Group and policy changes can take away what a cached bind allowed.
                shared.bind_cache.invalidate_all();
                shared.dirty.store(true, Ordering::Release);
                shared.refresh.notify_one();
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Serves LDAP on `listener` until `shutdown` completes; StartTLS uses `starttls` when given.
pub async fn serve_ldap(
    listener: TcpListener,
    service: Arc<LdapService>,
    starttls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    serve(listener, service, starttls.map(TlsAcceptor::from), false, shutdown).await
}

/// Serves LDAPS (TLS from the first byte) on `listener` until `shutdown` completes.
pub async fn serve_ldaps(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    service: Arc<LdapService>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    serve(listener, service, Some(TlsAcceptor::from(tls)), true, shutdown).await
}

async fn serve(
    listener: TcpListener,
    service: Arc<LdapService>,
    tls: Option<TlsAcceptor>,
    implicit_tls: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let local = listener.local_addr().ok();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(?local, %error, "cannot accept an LDAP connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Without it every answer waits on Nagle + delayed ACK (~40 ms per search).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
        }
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let Ok(permit) = Arc::clone(&service.connections).try_acquire_owned() else {
            tracing::warn!(%peer, limit = service.settings.max_connections, "too many LDAP connections; refusing one");
            if !implicit_tls {
                // Tell the client why (RFC 4511 notice of disconnection) rather than just hanging up.
                connections.spawn(conn::refuse_busy(stream));
            }
            continue;
        };
        let service = Arc::clone(&service);
        let tls = tls.clone();
        connections.spawn(async move {
            handle(stream, peer, service, tls, implicit_tls).await;
            drop(permit);
        });
    }
    // LDAP clients reconnect; in-flight operations are short, so ending them is fine.
    connections.shutdown().await;
}

async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    service: Arc<LdapService>,
    tls: Option<TlsAcceptor>,
    implicit_tls: bool,
) {
    let mut conn = conn::Conn::new(service, peer);
    let result = if implicit_tls {
        let Some(acceptor) = tls else { return };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(mut s)) => conn.run(&mut s, true).await.map(|_| ()),
            Ok(Err(e)) => Err(e),
            Err(_) => return,
        }
    } else {
        let mut stream = stream;
        match conn.run(&mut stream, false).await {
            Ok(conn::Exit::StartTls) => match tls {
                Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(mut s)) => conn.run(&mut s, true).await.map(|_| ()),
                    Ok(Err(e)) => Err(e),
                    Err(_) => return,
                },
                None => Ok(()),
            },
            Ok(conn::Exit::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "LDAP connection ended");
    }
}
