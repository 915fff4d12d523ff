//! The change feed: writes record a row in `changes` in their own transaction; one background task
//! per store notices new rows and broadcasts them, so every process sharing the database (this one
//! included) can invalidate its caches.
//!
//! Wake-ups come from `PRAGMA data_version` polling (SQLite) or LISTEN/NOTIFY (PostgreSQL, signalled
//! by a trigger on `changes`); a slower fallback poll covers lost signals. Rows are read by sequence
//! number, so a missed wake-up only delays a change, never loses it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use latchkey_core::model::Change;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Connection, Row};
use tokio::sync::{broadcast, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use crate::dialect::{Engine, CHANGES_CHANNEL};
use crate::error::db_err;
use crate::sql::{now_ms, StoreResult};

/// Changes older than this are deleted; a process that falls further behind has bigger problems.
const RETENTION_MS: i64 = 60 * 60 * 1000;
const PRUNE_EVERY: Duration = Duration::from_secs(600);
const DATA_VERSION_POLL: Duration = Duration::from_millis(200);
const LISTENER_RETRY: Duration = Duration::from_secs(5);
const PAGE: i64 = 1000;
/// How long a skipped sequence number is awaited (see [`Cursor`]).
const GAP_WAIT: Duration = Duration::from_secs(10);
const MAX_GAPS: usize = 1024;
/// Report a failing feed only when it keeps failing (e.g. not before the first migration).
const WARN_AFTER: Duration = Duration::from_secs(30);

fn encode(change: &Change) -> (&'static str, Option<String>) {
    match change {
        Change::Session(key_hash) => ("session", Some(key_hash.clone())),
        Change::User(id) => ("user", Some(id.to_string())),
        Change::Groups => ("groups", None),
        Change::Config => ("config", None),
    }
}

fn decode(kind: &str, key: Option<String>) -> Option<Change> {
    match (kind, key) {
        ("session", Some(k)) => Some(Change::Session(k)),
        ("user", Some(k)) => Uuid::parse_str(&k).ok().map(Change::User),
        ("groups", _) => Some(Change::Groups),
        ("config", _) => Some(Change::Config),
        _ => None,
    }
}

/// Records `change` on `conn`, which must be inside the writing transaction.
pub(crate) async fn record(conn: &mut AnyConnection, change: &Change) -> StoreResult<()> {
    let (kind, key) = encode(change);
    sqlx::query("INSERT INTO changes (created_at, kind, key) VALUES ($1, $2, $3)")
        .bind(now_ms())
        .bind(kind)
        .bind(key)
        .execute(conn)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// The newest sequence number, or 0 when there is none (or no schema yet).
pub(crate) async fn current_seq(pool: &AnyPool) -> i64 {
    match sqlx::query("SELECT COALESCE(MAX(seq), 0) AS seq FROM changes").fetch_one(pool).await {
        Ok(row) => row.try_get::<i64, _>("seq").unwrap_or(0),
        Err(_) => 0,
    }
}

/// Which sequence numbers have been delivered. PostgreSQL allocates a sequence number when the
/// row is inserted but the row becomes visible at commit, so a lower number can appear after a
/// higher one. Numbers skipped over are remembered as gaps for a while and re-read, until they
/// show up or are given up (a rolled-back transaction leaves a gap forever).
#[derive(Debug)]
pub(crate) struct Cursor {
    last: i64,
    gaps: BTreeMap<i64, Instant>,
}

impl Cursor {
    pub fn new(last: i64) -> Cursor {
        Cursor { last, gaps: BTreeMap::new() }
    }

    /// Rows above this may still be undelivered.
    pub fn floor(&self) -> i64 {
        match self.gaps.keys().next() {
            Some(&g) => (g - 1).min(self.last),
            None => self.last,
        }
    }

    /// Whether `seq` is new (to be delivered).
    pub fn accept(&mut self, seq: i64, now: Instant) -> bool {
        if seq > self.last {
            let from = (self.last + 1).max(seq.saturating_sub(MAX_GAPS as i64));
            for s in from..seq {
                self.gaps.insert(s, now);
            }
            while self.gaps.len() > MAX_GAPS {
                self.gaps.pop_first();
            }
            self.last = seq;
            true
        } else {
            self.gaps.remove(&seq).is_some()
        }
    }

    pub fn expire(&mut self, now: Instant) {
        self.gaps.retain(|_, seen| now.duration_since(*seen) < GAP_WAIT);
    }
}

/// Aborts a task when dropped, so helper tasks end with the feed task that owns them.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the feed task. It ends when aborted (see `SqlStore::close` and drop).
pub(crate) fn spawn(
    pool: AnyPool,
    engine: Engine,
    url: String,
    sender: broadcast::Sender<Change>,
    last: i64,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let wake = Arc::new(Notify::new());
        let _waker = AbortOnDrop(match engine {
            Engine::Sqlite => tokio::spawn(sqlite_waker(url, Arc::clone(&wake))),
            Engine::Postgres => tokio::spawn(postgres_waker(url, Arc::clone(&wake))),
        });
        run(pool, engine.feed_fallback(), sender, Cursor::new(last), wake).await;
    })
}

async fn run(
    pool: AnyPool,
    fallback: Duration,
    sender: broadcast::Sender<Change>,
    mut cursor: Cursor,
    wake: Arc<Notify>,
) {
    let mut failing_since: Option<Instant> = None;
    let mut warned = false;
    let mut next_prune = Instant::now() + Duration::from_secs(60);
    loop {
        match poll(&pool, &mut cursor, &sender).await {
            Ok(()) => {
                if warned {
                    tracing::info!("change feed recovered");
                }
                failing_since = None;
                warned = false;
            }
            Err(e) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if !warned && since.elapsed() >= WARN_AFTER {
                    tracing::warn!(error = %e, "change feed cannot read changes; caches may serve stale data");
                    warned = true;
                } else {
                    tracing::debug!(error = %e, "change feed poll failed");
                }
            }
        }
        if Instant::now() >= next_prune {
            next_prune = Instant::now() + PRUNE_EVERY;
            if let Err(e) = sqlx::query("DELETE FROM changes WHERE created_at < $1")
                .bind(now_ms() - RETENTION_MS)
                .execute(&pool)
                .await
            {
                tracing::debug!(error = %e, "could not prune old changes");
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(fallback) => {}
        }
    }
}

async fn poll(pool: &AnyPool, cursor: &mut Cursor, sender: &broadcast::Sender<Change>) -> Result<(), sqlx::Error> {
    let mut after = cursor.floor();
    loop {
        let rows: Vec<AnyRow> = sqlx::query("SELECT seq, kind, key FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(after)
            .bind(PAGE)
            .fetch_all(pool)
            .await?;
        let now = Instant::now();
        for row in &rows {
            let seq: i64 = row.try_get("seq")?;
            after = seq;
            if !cursor.accept(seq, now) {
                continue;
            }
            let kind: String = row.try_get("kind")?;
            let key: Option<String> = row.try_get("key")?;
            match decode(&kind, key) {
                Some(change) => {
                    // No receivers is fine: nobody caches anything yet.
                    let _ = sender.send(change);
                }
                None => tracing::debug!(kind, "ignoring change of unknown kind"),
            }
        }
        cursor.expire(now);
        if (rows.len() as i64) < PAGE {
            return Ok(());
        }
    }
}

/// Wakes the feed when another connection committed: `PRAGMA data_version` changes on this
/// dedicated connection whenever any other connection (in any process) commits to the file.
async fn sqlite_waker(url: String, wake: Arc<Notify>) {
    let mut conn: Option<AnyConnection> = None;
    let mut version: Option<i64> = None;
    loop {
        tokio::time::sleep(DATA_VERSION_POLL).await;
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match AnyConnection::connect(&url).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    tracing::debug!(error = %e, "change feed cannot open its SQLite connection");
                    continue;
                }
            },
        };
        let read = sqlx::query("PRAGMA data_version").fetch_one(&mut *c).await.and_then(|r| r.try_get::<i64, _>(0));
        match read {
            Ok(v) if version == Some(v) => {}
            Ok(v) => {
                // Also on the first read: a commit may have landed before this connection existed.
                version = Some(v);
                wake.notify_one();
            }
            Err(e) => {
                tracing::debug!(error = %e, "change feed cannot read data_version");
                conn = None;
                version = None;
            }
        }
    }
}

/// Wakes the feed on `NOTIFY latchkey_changes`, reconnecting the listener when it fails.
async fn postgres_waker(url: String, wake: Arc<Notify>) {
    let mut warned = false;
    loop {
        match listen(&url).await {
            Ok(mut listener) => {
                warned = false;
                // Anything committed while no listener was connected is picked up by this poll.
                wake.notify_one();
                loop {
                    match listener.try_recv().await {
                        // `None`: the connection was lost and re-established; signals may be lost.
                        Ok(_) => wake.notify_one(),
                        Err(e) => {
                            tracing::warn!(error = %e, "change feed listener failed; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(e) if !warned => {
                tracing::warn!(error = %e, "change feed cannot LISTEN; polling until it can");
                warned = true;
            }
            Err(e) => tracing::debug!(error = %e, "change feed still cannot LISTEN"),
        }
        tokio::time::sleep(LISTENER_RETRY).await;
    }
}

async fn listen(url: &str) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect(url).await?;
    listener.listen(CHANGES_CHANNEL).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip_through_their_encoding() {
        let id = Uuid::now_v7();
        for c in [Change::Session("abc".into()), Change::User(id), Change::Groups, Change::Config] {
            let (kind, key) = encode(&c);
            assert_eq!(decode(kind, key), Some(c));
        }
        assert_eq!(decode("future_kind", None), None);
        assert_eq!(decode("user", Some("not-a-uuid".into())), None);
    }

    #[test]
    fn cursor_delivers_in_order_once() {
        let now = Instant::now();
        let mut c = Cursor::new(5);
        assert!(!c.accept(5, now));
        assert!(c.accept(6, now));
        assert!(c.accept(7, now));
        assert!(!c.accept(7, now));
        assert_eq!(c.floor(), 7);
    }

    #[test]
    fn cursor_waits_for_late_commits_then_gives_up() {
        let now = Instant::now();
        let mut c = Cursor::new(10);
        // 12 committed before 11.
        assert!(c.accept(12, now));
        assert_eq!(c.floor(), 10, "11 is re-read");
        assert!(!c.accept(12, now));
        assert!(c.accept(11, now));
        assert!(!c.accept(11, now));
        assert_eq!(c.floor(), 12);
        // 14 with 13 never arriving (rolled back): given up after GAP_WAIT.
        assert!(c.accept(14, now));
        assert_eq!(c.floor(), 12);
        c.expire(now + GAP_WAIT);
        assert_eq!(c.floor(), 14);
        assert!(!c.accept(13, now), "given-up numbers are not delivered late");
    }

    #[test]
    fn cursor_bounds_its_gaps() {
        let now = Instant::now();
        let mut c = Cursor::new(0);
        assert!(c.accept(1_000_000, now));
        assert_eq!(c.gaps.len(), MAX_GAPS);
        assert_eq!(c.floor(), 1_000_000 - MAX_GAPS as i64 - 1);
    }
}
