//! Latchkey's LDAP server: the directory for applications that only speak LDAP.
//!
//! A thin adapter over `latchkey_core::Core`: binds check passwords through the directory
//! (with the web login's throttling), searches read an in-memory snapshot of the tree that
//! the store's change feed keeps fresh, and repeated binds are answered from a short-lived
//! cache of keyed hashes so argon2 is not paid on every bind.

pub mod dn;
pub mod filter;
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
/// A snapshot older than this is rebuilt even without a change signal: creating a user or a
/// group records no change in the feed, so this bounds how long a new one stays invisible.
const SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(10);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

type HmacSha256 = Hmac<Sha256>;

/// State shared by every LDAP and LDAPS connection: the tree snapshot and the bind cache.
pub struct LdapService {
    core: Arc<Core>,
    shared: Arc<Shared>,
}

struct Shared {
    snapshot: RwLock<Arc<Snapshot>>,
    dirty: AtomicBool,
    rebuild: tokio::sync::Mutex<()>,
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
    /// Creates the service and starts following the store's change feed (needs a runtime).
    pub fn new(core: Arc<Core>) -> Arc<LdapService> {
        // A key of its own for the bind cache, derived from the master secret's encryption key,
        // so cache keys reveal nothing about passwords even in a memory dump of another purpose.
        let cache_key = hmac(core.keys.encryption.bytes(), &[b"latchkey/v1/ldap-bind-cache"]);
        let shared = Arc::new(Shared {
            snapshot: RwLock::new(Arc::new(Snapshot::empty())),
            dirty: AtomicBool::new(true),
            rebuild: tokio::sync::Mutex::new(()),
            bind_cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(BIND_CACHE_TTL)
                .support_invalidation_closures()
                .build(),
            cache_key,
        });
        tokio::spawn(follow_changes(core.store.subscribe(), Arc::downgrade(&shared)));
        Arc::new(LdapService { core, shared })
    }

    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// The current tree, rebuilt first when the feed reported a change or it is too old.
    pub async fn snapshot(&self) -> Result<Arc<Snapshot>, TreeError> {
        let fresh =
            |s: &Arc<Snapshot>| !self.shared.dirty.load(Ordering::Acquire) && s.built.elapsed() < SNAPSHOT_MAX_AGE;
        let current = self.current();
        if fresh(&current) {
            return Ok(current);
        }
        // One rebuild at a time; the others wait for it and use its result.
        let _guard = self.shared.rebuild.lock().await;
        let current = self.current();
        if fresh(&current) {
            return Ok(current);
        }
        // Cleared before reading so a change during the build marks it dirty again.
        self.shared.dirty.store(false, Ordering::Release);
        match Snapshot::build(&self.core).await {
            Ok(s) => {
                let s = Arc::new(s);
                if let Ok(mut slot) = self.shared.snapshot.write() {
                    *slot = Arc::clone(&s);
                }
                Ok(s)
            }
            Err(e) => {
                self.shared.dirty.store(true, Ordering::Release);
                Err(e)
            }
        }
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
        self.shared.bind_cache.get(key)
    }

    fn remember_bind(&self, key: [u8; 32], user: Uuid) {
        self.shared.bind_cache.insert(key, user);
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
            }
            Ok(Change::Groups) | Ok(Change::Config) | Err(RecvError::Lagged(_)) => {
                // Group changes can move a user out of what a cached bind allowed.
                shared.bind_cache.invalidate_all();
                shared.dirty.store(true, Ordering::Release);
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
        let service = Arc::clone(&service);
        let tls = tls.clone();
        connections.spawn(handle(stream, peer, service, tls, implicit_tls));
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
