//! Embedded schema migrations, tracked in `schema_version`.

use latchkey_core::StoreError;
use sqlx::Row;

use crate::error::db_err;
use crate::sql::{now_ms, RowExt};
use crate::SqlStore;

const CREATE_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_version \
     (version BIGINT PRIMARY KEY NOT NULL, applied_at BIGINT NOT NULL)";

impl SqlStore {
    /// The newest schema version this build knows.
    pub fn latest_schema_version() -> i64 {
        // Both engines carry the same versions (checked by a unit test in `dialect`).
        crate::dialect::Engine::Sqlite.migrations().iter().map(|m| m.version).max().unwrap_or(0)
    }

    /// The schema version of the database; 0 when it has never been migrated.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let exists = sqlx::query(self.engine_kind().table_exists_sql())
            .bind("schema_version")
            .fetch_one(self.pool())
            .await
            .map_err(db_err)?
            .try_get::<i64, _>(0)
            .map_err(db_err)?;
        if exists == 0 {
            return Ok(0);
        }
        sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_version")
            .fetch_one(self.pool())
            .await
            .map_err(db_err)?
            .int("v")
    }

    /// Applies pending migrations, each in its own transaction; returns (from, to) versions.
    /// Before an existing SQLite database is migrated, a consistent copy is written next to it
    /// (`<db>.backup-v<old>-<unix seconds>`). Safe to run from several processes at once.
    pub async fn migrate(&self) -> Result<(i64, i64), StoreError> {
        let engine = self.engine_kind();
        let latest = Self::latest_schema_version();
        let from = self.schema_version().await?;
        if from > latest {
            return Err(StoreError::Conflict(format!(
                "the database has schema version {from}, newer than this Latchkey supports ({latest}); \
                 upgrade Latchkey"
            )));
        }
        if from == latest {
            return Ok((from, from));
        }
        if from > 0 && engine.copies_before_migrating() {
            let copy = self.sqlite_copy(&format!("backup-v{from}-{}", now_ms() / 1000)).await?;
            tracing::info!(copy = %copy, "copied the database before migrating it");
        }
        for m in engine.migrations().iter().filter(|m| m.version > from) {
            let mut tx = self.begin_write().await?;
            if let Some(lock) = engine.migration_lock_sql() {
                sqlx::query(lock).execute(&mut *tx).await.map_err(db_err)?;
            }
            sqlx::query(CREATE_VERSION_TABLE).execute(&mut *tx).await.map_err(db_err)?;
            // Re-read under the lock: another process may have migrated meanwhile.
            let current = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_version")
                .fetch_one(&mut *tx)
                .await
                .map_err(db_err)?
                .int("v")?;
            if current >= m.version {
                tx.commit().await.map_err(db_err)?;
                continue;
            }
            sqlx::raw_sql(m.sql)
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::Database(format!("migration {} failed: {e}", m.version)))?;
            sqlx::query("INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)")
                .bind(m.version)
                .bind(now_ms())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
        }
        Ok((from, self.schema_version().await?))
    }

    /// Writes a consistent copy of the SQLite database to `<db file>.<suffix>`; returns its path.
    pub(crate) async fn sqlite_copy(&self, suffix: &str) -> Result<String, StoreError> {
        let rows = sqlx::query("PRAGMA database_list").fetch_all(self.pool()).await.map_err(db_err)?;
        let mut file = None;
        for row in &rows {
            if row.text("name")? == "main" {
                file = row.opt_text("file")?;
            }
        }
        let file = file
            .filter(|f| !f.is_empty())
            .ok_or_else(|| StoreError::Database("the SQLite database has no file to copy".to_string()))?;
        let copy = format!("{file}.{suffix}");
        // VACUUM INTO takes its target as an expression, so it can be bound (no quoting issues).
        sqlx::query("VACUUM INTO $1")
            .bind(&copy)
            .execute(self.pool())
            .await
            .map_err(|e| StoreError::Database(format!("could not copy the database to {copy}: {e}")))?;
        Ok(copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_core::model::{NewUser, UserKind};
    use latchkey_core::store::UserStore;

    #[tokio::test]
    async fn sqlite_connections_are_configured_for_durability() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqlStore::connect(&format!("sqlite://{}", dir.path().join("p.db").display())).await.unwrap();
        let mut conn = store.pool().acquire().await.unwrap();
        let journal: String = sqlx::query("PRAGMA journal_mode").fetch_one(&mut *conn).await.unwrap().get(0);
        let sync: i64 = sqlx::query("PRAGMA synchronous").fetch_one(&mut *conn).await.unwrap().get(0);
        let fk: i64 = sqlx::query("PRAGMA foreign_keys").fetch_one(&mut *conn).await.unwrap().get(0);
        let busy: i64 = sqlx::query("PRAGMA busy_timeout").fetch_one(&mut *conn).await.unwrap().get(0);
        assert_eq!((journal.as_str(), sync, fk, busy), ("wal", 1, 1, 5000));
        drop(conn);
        store.close().await;
    }

    #[tokio::test]
    async fn sqlite_copy_is_a_consistent_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("l.db");
        let store = SqlStore::connect(&format!("sqlite://{}", db.display())).await.unwrap();
        store.migrate().await.unwrap();
        let user = NewUser {
            id: uuid::Uuid::now_v7(),
            username: "copied".into(),
            name: "Copied".into(),
            email: None,
            is_active: true,
            kind: UserKind::Internal,
            attributes: serde_json::json!({}),
            password_hash: None,
            password_changed_at: None,
            created_at: chrono::Utc::now(),
        };
        store.create_user(user).await.unwrap();
        let copy = store.sqlite_copy("backup-v1-123").await.unwrap();
        assert_eq!(copy, format!("{}.backup-v1-123", db.canonicalize().unwrap().display()));
        store.close().await;

        let copied = SqlStore::connect(&format!("sqlite://{copy}")).await.unwrap();
        assert_eq!(copied.schema_version().await.unwrap(), SqlStore::latest_schema_version());
        assert!(copied.get_user_by_username("copied").await.unwrap().is_some());
        copied.close().await;
    }
}
