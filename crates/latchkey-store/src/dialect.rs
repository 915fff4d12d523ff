//! Everything that differs between SQLite and PostgreSQL, in one place. The rest of the crate
//! writes portable SQL (`$N` placeholders, BIGINT/TEXT columns, `ON CONFLICT`, `RETURNING`).

use std::time::Duration;

/// An embedded schema migration.
pub(crate) struct Migration {
    pub version: i64,
    pub sql: &'static str,
}

const SQLITE_MIGRATIONS: &[Migration] = &[
    Migration { version: 1, sql: include_str!("../migrations/sqlite/0001_init.sql") },
    Migration { version: 2, sql: include_str!("../migrations/sqlite/0002_policies.sql") },
    Migration { version: 3, sql: include_str!("../migrations/sqlite/0003_outbox.sql") },
    Migration { version: 4, sql: include_str!("../migrations/sqlite/0004_invitations.sql") },
    Migration { version: 5, sql: include_str!("../migrations/sqlite/0005_authenticators.sql") },
    Migration { version: 6, sql: include_str!("../migrations/sqlite/0006_app_passwords.sql") },
    Migration { version: 7, sql: include_str!("../migrations/sqlite/0007_token_expiry.sql") },
];

const POSTGRES_MIGRATIONS: &[Migration] = &[
    Migration { version: 1, sql: include_str!("../migrations/postgres/0001_init.sql") },
    Migration { version: 2, sql: include_str!("../migrations/postgres/0002_policies.sql") },
    Migration { version: 3, sql: include_str!("../migrations/postgres/0003_outbox.sql") },
    Migration { version: 4, sql: include_str!("../migrations/postgres/0004_invitations.sql") },
    Migration { version: 5, sql: include_str!("../migrations/postgres/0005_authenticators.sql") },
    Migration { version: 6, sql: include_str!("../migrations/postgres/0006_app_passwords.sql") },
    Migration { version: 7, sql: include_str!("../migrations/postgres/0007_token_expiry.sql") },
];

/// Applied to every pooled SQLite connection. `busy_timeout` first, so the one-time switch to WAL
/// waits for other connections instead of failing. WAL + `synchronous=NORMAL` keeps every committed
/// write across a process crash (only an OS crash or power loss may drop the last commits).
pub(crate) const SQLITE_PRAGMAS: &str = "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; \
     PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    pub fn from_url(url: &str) -> Option<Engine> {
        if url.starts_with("sqlite:") {
            Some(Engine::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Engine::Postgres)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
        }
    }

    /// The URL handed to sqlx: SQLite files are created when missing.
    pub fn connect_url(self, url: &str) -> String {
        match self {
            Engine::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_string(),
        }
    }

    pub fn pool_size(self) -> u32 {
        match self {
            Engine::Sqlite => 8,
            Engine::Postgres => 10,
        }
    }

    pub fn migrations(self) -> &'static [Migration] {
        match self {
            Engine::Sqlite => SQLITE_MIGRATIONS,
            Engine::Postgres => POSTGRES_MIGRATIONS,
        }
    }

    /// Starts a transaction that will write. SQLite takes the write lock up front: a deferred
    /// transaction that first reads and then writes can fail with SQLITE_BUSY without waiting.
    pub fn begin_write(self) -> &'static str {
        match self {
            Engine::Sqlite => "BEGIN IMMEDIATE",
            Engine::Postgres => "BEGIN",
        }
    }

    /// Starts a read-only transaction whose reads all see one snapshot (for backups). In WAL mode a
    /// plain SQLite transaction already reads from one snapshot, taken at its first read.
    /// Row locking for claiming outbox mails: PostgreSQL skips rows another worker holds, so
    /// several instances never take the same mail; SQLite's write lock already serialises.
    pub fn skip_locked(self) -> &'static str {
        match self {
            Engine::Sqlite => "",
            Engine::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    pub fn begin_snapshot(self) -> &'static str {
        match self {
            Engine::Sqlite => "BEGIN",
            Engine::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        }
    }

    /// Counts tables named `$1` in the current schema.
    pub fn table_exists_sql(self) -> &'static str {
        match self {
            Engine::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = $1",
            Engine::Postgres => {
                "SELECT COUNT(*) FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_name = $1"
            }
        }
    }

    /// Serialises concurrent migrators inside their transaction. SQLite needs nothing: its
    /// `BEGIN IMMEDIATE` already excludes other writers.
    pub fn migration_lock_sql(self) -> Option<&'static str> {
        match self {
            Engine::Sqlite => None,
            // Arbitrary application-wide key ("latchkey" in spirit); released at commit.
            Engine::Postgres => Some("SELECT pg_advisory_xact_lock(7235001)"),
        }
    }

    /// `expr` clamped to [`lo`, `hi`] (all SQL expressions): SQLite's scalar `min()`/`max()`,
    /// PostgreSQL's `LEAST`/`GREATEST` (its `min`/`max` are aggregates only).
    pub fn clamp_sql(self, expr: &str, lo: &str, hi: &str) -> String {
        match self {
            Engine::Sqlite => format!("max({lo}, min({hi}, {expr}))"),
            Engine::Postgres => format!("GREATEST({lo}, LEAST({hi}, {expr}))"),
        }
    }

    /// Appended to a SELECT that checks a referenced row exists before a write that depends on it
    /// (policy bindings have no foreign keys): on PostgreSQL the row is locked against a
    /// concurrent delete until commit. SQLite's `BEGIN IMMEDIATE` already excludes other writers.
    pub fn key_share_lock(self) -> &'static str {
        match self {
            Engine::Sqlite => "",
            Engine::Postgres => " FOR KEY SHARE",
        }
    }

    /// Whether a file copy of the database is taken before an existing schema is migrated.
    pub fn copies_before_migrating(self) -> bool {
        self == Engine::Sqlite
    }

    /// How often the change feed polls even without a wake-up signal. PostgreSQL notifications can
    /// be lost while the listener reconnects; SQLite's `data_version` polling does not miss changes,
    /// so its fallback is only a safety net.
    pub fn feed_fallback(self) -> Duration {
        match self {
            Engine::Sqlite => Duration::from_secs(5),
            Engine::Postgres => Duration::from_secs(1),
        }
    }
}

/// The PostgreSQL NOTIFY channel the `changes` trigger signals (see migrations/postgres).
pub(crate) const CHANGES_CHANNEL: &str = "latchkey_changes";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_get_create_mode() {
        assert_eq!(Engine::Sqlite.connect_url("sqlite://a.db"), "sqlite://a.db?mode=rwc");
        assert_eq!(Engine::Sqlite.connect_url("sqlite://a.db?cache=shared"), "sqlite://a.db?cache=shared&mode=rwc");
        assert_eq!(Engine::Sqlite.connect_url("sqlite://a.db?mode=ro"), "sqlite://a.db?mode=ro");
        assert_eq!(Engine::Postgres.connect_url("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn engines_from_urls() {
        assert_eq!(Engine::from_url("sqlite://x"), Some(Engine::Sqlite));
        assert_eq!(Engine::from_url("postgresql://x/y"), Some(Engine::Postgres));
        assert_eq!(Engine::from_url("postgres://x/y"), Some(Engine::Postgres));
        assert_eq!(Engine::from_url("mysql://x/y"), None);
    }

    #[test]
    fn clamps_per_engine() {
        assert_eq!(Engine::Sqlite.clamp_sql("s + $1", "$2", "$3"), "max($2, min($3, s + $1))");
        assert_eq!(Engine::Postgres.clamp_sql("s + $1", "$2", "$3"), "GREATEST($2, LEAST($3, s + $1))");
    }

    #[test]
    fn both_engines_have_the_same_migration_versions() {
        let a: Vec<i64> = Engine::Sqlite.migrations().iter().map(|m| m.version).collect();
        let b: Vec<i64> = Engine::Postgres.migrations().iter().map(|m| m.version).collect();
        assert_eq!(a, b);
        assert!(a.windows(2).all(|w| w[0] < w[1]), "versions ascend");
    }
}
