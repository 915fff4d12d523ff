//! SQLite and PostgreSQL implementations of Latchkey's store traits.
//!
//! One implementation serves both engines through sqlx's `Any` driver: the SQL is written once with
//! portable types (BIGINT unix milliseconds for times, TEXT for UUIDs and JSON, booleans as BOOLEAN
//! on PostgreSQL and 0/1 on SQLite). What differs between the engines lives in `dialect`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), latchkey_core::StoreError> {
//! let store = latchkey_store::SqlStore::connect("sqlite://data/latchkey.db").await?;
//! store.migrate().await?;
//! # Ok(()) }
//! ```

mod app_passwords;
mod applications;
mod backup;
mod devices;
mod dialect;
mod error;
mod feed;
mod flows;
mod groups;
mod invitations;
mod mail;
mod migrate;
mod policies;
mod records;
mod sessions;
mod sql;
mod throttle;
mod users;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use latchkey_core::model::Change;
use latchkey_core::store::Store;
use latchkey_core::StoreError;
use sqlx::any::AnyPoolOptions;
use sqlx::{Any, AnyConnection, AnyPool, Connection, Transaction};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::dialect::Engine;
use crate::error::db_err;

/// Broadcast buffer for the change feed; a receiver that falls further behind gets `Lagged`
/// and is expected to drop its caches.
const CHANGE_CAPACITY: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A Latchkey store on SQLite or PostgreSQL. Cheap to clone; clones share one pool and one
/// change feed, which stop when the last clone is dropped or [`SqlStore::close`] is called.
#[derive(Clone)]
pub struct SqlStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: AnyPool,
    engine: Engine,
    /// Weak, so subscribers see `Closed` once the feed task (the only strong sender) stops.
    changes: broadcast::WeakSender<Change>,
    feed: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    fn stop_feed(&self) -> Option<JoinHandle<()>> {
        let handle = self.feed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(h) = &handle {
            h.abort();
        }
        handle
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_feed();
    }
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore").field("engine", &self.inner.engine.name()).finish_non_exhaustive()
    }
}

impl SqlStore {
    /// Connects to `sqlite://path/to/latchkey.db` (the file is created if missing) or
    /// `postgres://…` / `postgresql://…`, and starts the change feed. Does not migrate.
    /// Fails with `Unavailable` when the server cannot be reached.
    pub async fn connect(url: &str) -> Result<SqlStore, StoreError> {
        sqlx::any::install_default_drivers();
        let engine = Engine::from_url(url).ok_or_else(|| {
            StoreError::Database("unsupported database URL: expected sqlite://… or postgres://…".to_string())
        })?;
        let url = engine.connect_url(url);
        let mut options =
            AnyPoolOptions::new().max_connections(engine.pool_size()).acquire_timeout(Duration::from_secs(10));
        if engine == Engine::Sqlite {
            options = options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    sqlx::Executor::execute(conn, dialect::SQLITE_PRAGMAS).await?;
                    Ok(())
                })
            });
        }
        // One direct attempt first: the pool retries a refused connection until its acquire
        // timeout, while callers want to hear "unreachable" at once and back off themselves.
        let probe = tokio::time::timeout(CONNECT_TIMEOUT, AnyConnection::connect(&url))
            .await
            .map_err(|_| StoreError::Unavailable("timed out connecting to the database".to_string()))?
            .map_err(db_err)?;
        let _ = probe.close().await;
        let pool = options.connect(&url).await.map_err(db_err)?;
        // Only changes made from now on are delivered.
        let last = feed::current_seq(&pool).await;
        let (sender, _) = broadcast::channel(CHANGE_CAPACITY);
        let changes = sender.downgrade();
        let task = feed::spawn(pool.clone(), engine, url, sender, last);
        Ok(SqlStore { inner: Arc::new(Inner { pool, engine, changes, feed: Mutex::new(Some(task)) }) })
    }

    /// Stops the change feed and closes every connection. Further calls fail with `Unavailable`.
    pub async fn close(&self) {
        if let Some(handle) = self.inner.stop_feed() {
            // Cancelled is the expected outcome.
            let _ = handle.await;
        }
        self.inner.pool.close().await;
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.inner.pool
    }

    pub(crate) fn engine_kind(&self) -> Engine {
        self.inner.engine
    }

    /// A transaction for writes (on SQLite it holds the write lock from the start).
    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Any>, StoreError> {
        self.inner.pool.begin_with(self.inner.engine.begin_write()).await.map_err(db_err)
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(self.pool()).await.map_err(db_err)?;
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        match self.inner.changes.upgrade() {
            Some(sender) => sender.subscribe(),
            None => {
                // The store is closed: hand out a receiver that reports `Closed` at once.
                let (sender, receiver) = broadcast::channel(1);
                drop(sender);
                receiver
            }
        }
    }

    fn engine(&self) -> &'static str {
        self.inner.engine.name()
    }
}
